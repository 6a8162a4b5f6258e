"""Arms side by side: several models judged by one GUE config on the same rows and seeds, each
against a control (normally the same architecture from random init), with paired 95% intervals.

    megadna gue --gue_dir GUE --models runs/a,runs/b --init_random_control --mode probe --output_dir cmp/

How the interval is made (per dataset and train size): the difference is arm MCC minus control MCC,
averaged over the fine-tuning seeds (the same seeds for both: paired over seeds). Its uncertainty from
the finite test set is a bootstrap over test rows: each replicate draws the test rows with
replacement, the SAME rows for arm and control, recomputes every seed's MCC on them and averages the
differences; the 2.5th and 97.5th percentiles of 2,000 replicates are the interval. The mean over
datasets resamples each dataset independently within a replicate. The interval covers test-set noise
and the seeds run; it does not cover pre-training seeds (run two pre-trainings as two arms for that).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from megadna.errors import InputError
from megadna.eval.config import GUEConfig
from megadna.jsonfile import read_json, write_json, write_text

N_BOOTSTRAP = 2000
CONTROL = "random_init"


def arm_names(models: list[str]) -> list[str]:
    """A short, unique name per model path (its folder name; a suffix where two collide)."""
    names = []
    for m in models:
        base = Path(m).resolve().name or "model"
        name, i = base, 2
        while name in names or name == CONTROL:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


def run_arms(cfg: GUEConfig, models: list[str], random_control: bool) -> dict:
    """Run the GUE config for every model (and a random-init control shaped like the first) into
    output_dir/arms/<arm>/, then compare. Finished units are skipped on a re-run, as in run_gue."""
    from megadna.eval.gue import run_gue

    if not models:
        raise InputError("--models: give at least one model path")
    out = Path(cfg.output_dir)
    arms = dict(zip(arm_names(models), models))
    dirs = {}
    for name, model in arms.items():
        dirs[name] = out / "arms" / name
        run_gue(dataclasses.replace(cfg, model=model, init="pretrained", tokenizer="", output_dir=str(dirs[name])))
    if random_control:
        dirs[CONTROL] = out / "arms" / CONTROL
        run_gue(dataclasses.replace(cfg, model=models[0], init="random", tokenizer="", output_dir=str(dirs[CONTROL])))
    control = CONTROL if random_control else next(iter(dirs))
    return compare(dirs, control, out)


def _read_arm(arm_dir: Path) -> dict:
    """{(dataset, train_size): {seed: (index, labels, predictions, record)}} of one arm's finished units."""
    units = {}
    for marker in sorted((arm_dir / "runs").glob("*.json")):
        rec = read_json(marker, "GUE run record")
        if rec.get("problem", "classification") != "classification":
            raise InputError(f"{marker}: a {rec['problem']} dataset; the paired comparison of arms (MCC intervals) is "
                             "implemented for classification datasets only")
        table = _read_predictions(arm_dir / "predictions" / f"{marker.stem}.csv")
        units.setdefault((rec["dataset"], rec.get("train_size", 0)), {})[rec["seed"]] = (*table, rec)
    if not units:
        raise InputError(f"{arm_dir}: no finished GUE runs (runs/*.json) to compare")
    return units


def _read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InputError(f"{path}: no predictions")
    return tuple(np.array([int(r[c]) for r in rows], dtype=np.int64) for c in ("index", "label", "prediction"))


def mcc_matrix(labels: np.ndarray, preds: np.ndarray, k: int) -> np.ndarray:
    """Matthews correlation x 100 of each row of preds [R, n] against labels [R, n] (multi-class form)."""
    r = labels.shape[0]
    flat = (np.arange(r)[:, None] * k * k + labels * k + preds).ravel()
    cm = np.bincount(flat, minlength=r * k * k).reshape(r, k, k).astype(np.float64)
    t, p, c, s = cm.sum(2), cm.sum(1), np.trace(cm, axis1=1, axis2=2), cm.sum((1, 2))
    num = c * s - (t * p).sum(1)
    den = np.sqrt((s**2 - (p * p).sum(1)) * (s**2 - (t * t).sum(1)))
    return 100.0 * np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def paired_differences(arm: dict, control: dict, draws: np.ndarray) -> np.ndarray:
    """Per bootstrap replicate (rows of `draws`, test-row indices), the mean over seeds of arm MCC minus
    control MCC on those rows. Arm and control must cover the same seeds and test rows."""
    if sorted(arm) != sorted(control):
        raise InputError(f"arms ran different seeds ({sorted(arm)} vs {sorted(control)}): compare like with like")
    diffs = []
    for seed in sorted(arm):
        (ia, la, pa, _), (ic, lc, pc, _) = arm[seed], control[seed]
        if not (np.array_equal(ia, ic) and np.array_equal(la, lc)):
            raise InputError(f"seed {seed}: the arms were scored on different test rows (check --max_eval_samples and --subsample_seed)")
        k = int(max(la.max(), pa.max(), pc.max())) + 1
        diffs.append(mcc_matrix(la[draws], pa[draws], k) - mcc_matrix(lc[draws], pc[draws], k))
    return np.mean(diffs, axis=0)


def compare(arm_dirs: dict[str, Path], control: str, out: Path, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """comparison.json/.md/.png in `out`: every arm's test MCC per (dataset, train size) and its paired
    difference to `control` with a 95% bootstrap interval; also the mean over datasets."""
    arms = {name: _read_arm(Path(d)) for name, d in arm_dirs.items()}
    keys = sorted(set.intersection(*(set(a) for a in arms.values())))
    if not keys:
        raise InputError("the arms share no (dataset, train size): run them with the same --datasets and --max_train_samples")
    rng = np.random.default_rng(seed)
    rows, replicates = [], {}
    for key in keys:
        n = len(next(iter(arms[control][key].values()))[0])
        draws = np.vstack([np.arange(n), rng.integers(0, n, size=(n_boot, n))])  # row 0: the test set itself
        for name, units in arms.items():
            mccs = [u[3]["test"]["mcc"] for u in units[key].values()]
            row = {"dataset": key[0], "train_size": key[1], "arm": name, "mcc_mean": float(np.mean(mccs)),
                   "mcc_std": float(np.std(mccs, ddof=1)) if len(mccs) > 1 else 0.0, "n_seeds": len(mccs),
                   "selected": [u[3].get("selected") for u in units[key].values()]}
            if name != control:
                d = paired_differences(units[key], arms[control][key], draws)
                replicates.setdefault((name, key[1]), []).append(d)
                row.update(_interval(d))
            rows.append(row)
    for (name, size), ds in replicates.items():
        if len(ds) > 1:
            rows.append({"dataset": "mean", "train_size": size, "arm": name, **_interval(np.mean(ds, axis=0))})
    result = {"control": control, "arms": {k: str(v) for k, v in arm_dirs.items()}, "n_bootstrap": n_boot, "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "comparison.json", result)
    write_text(out / "comparison.md", format_comparison(result))
    plot_comparison(result, out / "comparison.png")
    return result


def _interval(d: np.ndarray) -> dict:
    """Row 0 of `d` is the point estimate (the real test set); the rest are bootstrap replicates."""
    lo, hi = np.percentile(d[1:], [2.5, 97.5])
    return {"diff": float(d[0]), "ci_low": float(lo), "ci_high": float(hi)}


def format_comparison(result: dict) -> str:
    ctrl = result["control"]
    lines = [f"| dataset | train rows | arm | test MCC | Δ vs {ctrl} (95% CI) |", "| --- | ---: | --- | ---: | ---: |"]
    for r in result["rows"]:
        size = r["train_size"] or "all"
        mcc = f"{r['mcc_mean']:.2f} ± {r['mcc_std']:.2f}" if "mcc_mean" in r else "–"
        diff = f"{r['diff']:+.2f} [{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]" if "diff" in r else "(control)"
        lines.append(f"| {r['dataset']} | {size} | {r['arm']} | {mcc} | {diff} |")
    lines += ["", f"Test MCC x 100, mean ± sample std over seeds. Δ: arm minus {ctrl}, mean over the same seeds; the interval is a "
              f"paired bootstrap over test rows ({result['n_bootstrap']} replicates, the same rows for both arms). An interval that "
              "excludes 0 is a difference the test set and these seeds resolve."]
    return "\n".join(lines) + "\n"


def plot_comparison(result: dict, path: Path) -> None:
    """Bars of each arm's difference to the control per (dataset, train size), with the 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if "diff" in r]
    if not rows:
        return
    labels = [r["dataset"].replace("/", "/\n") + f"\n{r['arm']}" + (f"\nn={r['train_size']}" if r["train_size"] else "") for r in rows]
    diffs = np.array([r["diff"] for r in rows])
    err = np.array([[r["diff"] - r["ci_low"] for r in rows], [r["ci_high"] - r["diff"] for r in rows]])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 1.5), 4.4))
    ax.bar(range(len(rows)), diffs, yerr=err, capsize=4, color=["tab:green" if r["ci_low"] > 0 else "tab:red" if r["ci_high"] < 0 else "tab:gray" for r in rows])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylabel(f"test MCC − {result['control']} (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
