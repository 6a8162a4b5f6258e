"""GUE results: mean/std over seeds per dataset, family and overall, beside the published baselines
(gue_baselines.csv, DNABERT-2 paper Table 4), as results.json / results.csv / results.md."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from megadna.errors import InputError
from megadna.eval.problems import METRIC_NAMES, PRIMARY
from megadna.eval.problems import METRICS as PROBLEM_METRICS
from megadna.jsonfile import write_json, write_text

BASELINES_FILE = Path(__file__).resolve().parent / "gue_baselines.csv"
# Published columns shown beside ours: (column in gue_baselines.csv, heading).
BASELINE_COLUMNS = (("dnabert2", "DNABERT-2"), ("dnabert_6mer", "DNABERT (6-mer)"), ("nt_2500m_multi", "NT-2500M-multi"))
METRICS = PROBLEM_METRICS["classification"]  # the GUE datasets' (and the baselines')


def load_baselines(path=None) -> dict[str, dict[str, float]]:
    """Published GUE figures (x 100), {"tf/0": {"dnabert2": 71.99, ...}}, from megadna/eval/gue_baselines.csv."""
    path = Path(path) if path else BASELINES_FILE
    with open(path, newline="") as f:
        rows = [line for line in f if not line.startswith("#")]
    out = {}
    for i, row in enumerate(csv.DictReader(rows)):
        name = row.pop("dataset")
        try:
            out[name] = {k: float(v) for k, v in row.items() if v not in ("", None)}
        except ValueError as e:
            raise InputError(f"{path}: data row {i + 1} ({name}): {e}") from None
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(records: list[dict], names: list[str], seeds: list[int], baselines: dict) -> dict:
    """Per dataset: mean/std over seeds. Per family (task) and overall: per seed, the mean over the
    datasets; then mean/std of those over seeds. Baselines: the mean of the same datasets' figures."""
    by = {(r["dataset"], r["seed"]): r for r in records}

    def row(level: str, label: str, group: list[str]) -> dict | None:
        kinds = {by[(n, seeds[0])].get("problem", "classification") for n in group}
        if len(kinds) > 1:
            return None  # datasets of different problems share no metric to average
        problem = kinds.pop()
        metrics = PROBLEM_METRICS[problem]
        per_seed = {m: [float(np.mean([by[(n, s)]["test"][m] for n in group])) for s in seeds] for m in metrics}
        out = {"level": level, "name": label, "datasets": group, "n_seeds": len(seeds), "problem": problem}
        for m in metrics:
            out[f"{m}_mean"], out[f"{m}_std"] = _mean_std(per_seed[m])
        out["baselines"] = {col: (float(np.mean([baselines[n][col] for n in group]))
                                  if problem == "classification" and all(col in baselines.get(n, {}) for n in group) else None)
                            for col, _ in BASELINE_COLUMNS}
        return out

    dataset_rows = []
    for n in names:
        r = row("dataset", n, [n])
        runs = [by[(n, s)] for s in seeds]
        r.update(family=n.split("/")[0], sizes=runs[0]["sizes"], max_tokens=runs[0]["max_tokens"],
                 truncated=runs[0]["truncated"],
                 per_seed={str(s): {**by[(n, s)]["test"], "best_dev": by[(n, s)].get("best_dev", by[(n, s)].get("best_dev_mcc")), "selected": by[(n, s)].get("selected"),
                                    "best_step": by[(n, s)].get("best_step", 0), "steps": by[(n, s)].get("steps", 0)} for s in seeds},
                 selected=_chosen([by[(n, s)].get("selected") for s in seeds]))
        dataset_rows.append(r)
    families = sorted({n.split("/")[0] for n in names}, key=[n.split("/")[0] for n in names].index)
    family_rows = [r for r in (row("family", f, [n for n in names if n.split("/")[0] == f]) for f in families) if r is not None]
    overall = row("all", "all", names)  # None when the datasets mix problems
    return {"seeds": seeds, "datasets": dataset_rows, "families": family_rows, "overall": overall,
            "baseline_columns": dict(BASELINE_COLUMNS)}


def _chosen(selected: list) -> str:
    """'lr 0.0001 x2, 0.001 x1' / 'C 0.1 x3': what the dev sweep chose over the seeds."""
    picks = [next(iter(s.items())) for s in selected if s]
    if not picks:
        return ""
    counts = {}
    for _, v in picks:
        counts[v] = counts.get(v, 0) + 1
    return f"{picks[0][0]} " + ", ".join(f"{v:g} x{c}" for v, c in counts.items())


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def format_table(results: dict) -> str:
    """The results as Markdown: ours (mean ± std over seeds) beside the published baselines; one table
    per problem (classification, regression, multilabel) present."""
    # Family rows where a family has several datasets; the overall row where there are several datasets.
    rows = results["datasets"] + [r for r in results["families"] if len(r["datasets"]) > 1]
    if len(results["datasets"]) > 1 and results["overall"] is not None:
        rows.append(results["overall"])
    lines = []
    for problem in dict.fromkeys(r.get("problem", "classification") for r in rows):
        metrics = PROBLEM_METRICS[problem]
        baselines = BASELINE_COLUMNS if problem == "classification" else ()
        heads = ["dataset"] + [METRIC_NAMES[m] for m in metrics] + [h for _, h in baselines]
        if lines:
            lines.append("")
        if problem != "classification":
            lines += [f"{problem.capitalize()} datasets:", ""]
        lines += ["| " + " | ".join(heads) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|"]
        for r in (r for r in rows if r.get("problem", "classification") == problem):
            label = r["name"] if r["level"] == "dataset" else f"**{r['name']} (mean of {len(r['datasets'])})**"
            cells = [label] + [_cell(r[f"{m}_mean"], r[f"{m}_std"], r["n_seeds"]) for m in metrics]
            cells += [f"{r['baselines'][c]:.2f}" if r["baselines"][c] is not None else "–" for c, _ in baselines]
            lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s) for s in results["seeds"])
    spread = f"mean ± sample std over seeds {seeds}" if len(results["seeds"]) > 1 else f"seed {seeds}"
    lines.append("")
    lines.append(f"Test-set scores x 100 (MSE in squared label units), {spread}; the state with the best dev score "
                 "(MCC; Pearson r for regression) is scored. "
                 "Baselines: DNABERT-2 paper, Table 4 (MCC; virus/covid is F1). Family rows average their datasets.")
    chosen = [f"{r['name']}: {r['selected']}" for r in results["datasets"] if r.get("selected")]
    if chosen:
        lines.append("Chosen on dev (per seed): " + "; ".join(chosen) + ".")
    if results.get("low_data"):
        lines += ["", _low_data_table(results["low_data"])]
    return "\n".join(lines) + "\n"


def _low_data_table(per_size: dict) -> str:
    """Test score (MCC; Pearson r for regression) per dataset (rows) and train size (columns): the low-data curve."""
    sizes = list(per_size)
    heads = ["dataset"] + [f"n={s}" if s != "0" else "all" for s in sizes]
    lines = ["Low-data curve, test MCC (Pearson r for regression; nested seeded subsets of train):", "",
             "| " + " | ".join(heads) + " |", "|" + "|".join([" --- "] + [" ---: "] * len(sizes)) + "|"]
    for i, row in enumerate(per_size[sizes[0]]["datasets"]):
        m = PRIMARY[row.get("problem", "classification")]
        cells = [row["name"]] + [_cell(per_size[s]["datasets"][i][f"{m}_mean"], per_size[s]["datasets"][i][f"{m}_std"], row["n_seeds"]) for s in sizes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _results_csv(results: dict) -> str:
    """One row per dataset, family and overall: mean/std of each metric (blank where a row's problem
    has no such metric), then the baselines."""
    metrics = list(dict.fromkeys(m for ms in PROBLEM_METRICS.values() for m in ms))
    cols = ["level", "name", "problem", "n_seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + [c for c, _ in BASELINE_COLUMNS]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(cols)
    for r in results["datasets"] + results["families"] + [r for r in [results["overall"]] if r is not None]:
        w.writerow([r["level"], r["name"], r.get("problem", "classification"), r["n_seeds"]]
                   + [f"{r[f'{m}_{s}']:.4f}" if f"{m}_{s}" in r else "" for m in metrics for s in ("mean", "std")]
                   + ["" if r["baselines"][c] is None else f"{r['baselines'][c]:.2f}" for c, _ in BASELINE_COLUMNS])
    return buf.getvalue()


def write_results(out: Path, results: dict) -> None:
    """results.json, results.md and results.csv in `out`, each written atomically."""
    out = Path(out)
    write_json(out / "results.json", results)
    write_text(out / "results.md", format_table(results))
    write_text(out / "results.csv", _results_csv(results))
