"""The ablation's report: loss curves per arm (smoothed), a convergence measure, the figure and the
markdown tables (ablation.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megadna.rundir import RunDir


def read_metrics(save_dir) -> dict[str, np.ndarray]:
    """Per-step "step", "loss" (nats) and "mlm_accuracy" arrays of one pre-training run (empty before it logs)."""
    records = RunDir(save_dir).read_metrics()
    return {"step": np.array([r["step"] for r in records]),
            "loss": np.array([r["loss"] for r in records], dtype=float),
            "mlm_accuracy": np.array([r.get("mlm_accuracy", float("nan")) for r in records], dtype=float)}


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over `width` steps (shorter at the start), so the curve has a value at every step."""
    if width <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - width)
    return (c[idx] - c[lo]) / (idx - lo)


def convergence(metrics: dict[str, np.ndarray]) -> dict:
    """First and last training loss (means over the first and last 10% of steps), and the first step at
    which the smoothed loss has made half of that drop: a plain measure of how fast an arm converges."""
    loss, steps = metrics["loss"], metrics["step"]
    if len(loss) == 0:
        return {}
    k = max(1, len(loss) // 10)
    first, last = float(loss[:k].mean()), float(loss[-k:].mean())
    s = smooth(loss, max(1, len(loss) // 20))
    target = first - 0.5 * (first - last)
    hit = np.nonzero(s <= target)[0] if first > last else np.zeros(0, dtype=int)
    return {"first_loss": first, "final_loss": last, "final_mlm_accuracy": float(np.nanmean(metrics["mlm_accuracy"][-k:])),
            "half_drop_step": int(steps[hit[0]]) if len(hit) else None}


def plot_loss_curves(arms: list[dict], path, max_steps: int) -> None:
    """loss_curves.png: training loss (faint per step, bold smoothed) and MLM accuracy of every arm."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, a in enumerate(arms):
        m = read_metrics(Path(a["dir"]) / "pretrain")
        if len(m["step"]) == 0:
            continue
        w = max(1, len(m["step"]) // 20)
        color = f"C{i % 10}"
        left.plot(m["step"], m["loss"], color=color, alpha=0.2, linewidth=0.7)
        left.plot(m["step"], smooth(m["loss"], w), color=color, label=f"{a['name']} (|V|={a['vocab_size']:,})")
        right.plot(m["step"], smooth(m["mlm_accuracy"], w), color=color, label=a["name"])
    left.set_xlabel("optimizer step (same bp per step in every arm)")
    left.set_ylabel("training MLM loss (nats; faint: per step)")
    left.set_title("Pre-training loss")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set_xlabel("optimizer step")
    right.set_ylabel("MLM accuracy on masked tokens (smoothed)")
    right.set_title("Pre-training MLM accuracy")
    right.grid(alpha=0.3)
    for ax in (left, right):
        ax.set_xlim(0, max_steps)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# ablation.md
# --------------------------------------------------------------------------------------------------


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def _secs(x) -> str:
    if x is None:
        return "–"
    return f"{x / 60:.1f} min" if x >= 90 else f"{x:.0f} s"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mcc(d: dict | None) -> str:
    return f"{d['mcc_mean']:.2f} ± {d['mcc_std']:.2f}" if d else "–"


def _budget_text(result: dict) -> str:
    b = result["budget"]
    return (f"Equal budget: every arm pre-trained {b['max_steps']:,} steps x {b['windows_per_step']} windows "
            f"({b['micro_batch']} per rank x {b['gradient_accumulation']} accumulation x {b['ranks']} rank(s)) of {b['window_bp']} bp "
            f"= {b['bp_per_step']:,} bp per step, {b['bp_total'] / 1e6:.2f} Mbp in all, the same windows in the same order (seed {b['seed']}). "
            "The bp budget is equal; the token counts are not (column 'tokens seen'). "
            f"Model: {result['config']['model']}; DeepSpeed config: {Path(result['config']['ds_config']).name}.")


def _pretrain_table(arms: list[dict]) -> list[str]:
    head = ["arm", "tokenizer", "masking", "vocab", "tokens/window (positions)", "tokens seen", "first → final train loss",
            "steps to half the drop", "eval MLM loss", "eval MLM acc", "pre-train wall"]
    lines = [_row(head), "|" + "|".join([" --- "] * 3 + [" ---: "] * (len(head) - 3)) + "|"]
    for a in arms:
        p = a.get("pretrain", {})
        c = p.get("convergence", {})
        ev = (p.get("summary") or {}).get("eval") or {}
        tw = a.get("tokens") or {}
        lines.append(_row([
            a["name"], a["tokenizer_name"], a["masking"], f"{a['vocab_size']:,}",
            f"{tw.get('tokens_per_window', 0):.1f} ({tw.get('positions', '–')})" if tw else "–",
            f"{p['tokens_seen'] / 1e6:.2f} M" if p.get("tokens_seen") else "–",
            f"{_f(c.get('first_loss'))} → {_f(c.get('final_loss'))}" if c else "–",
            _f(c.get("half_drop_step"), "{:d}") if c else "–",
            _f(ev.get("eval_loss")), _f(ev.get("eval_mlm_accuracy")), _secs(a.get("pretrain_wall_s")),
        ]))
    return lines


def _gue_table(result: dict, names: list[str]) -> list[str]:
    gc = result["config"]
    head = ["arm"] + names + ["mean", "GUE wall"]
    lines = ["## GUE (test MCC x 100, mean ± std over seeds " + gc["gue_seeds"] + ")", "",
             _row(head), "|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|"]
    for a in result["arms"]:
        g = a.get("gue") or {}
        cells = [a["name"]] + [_mcc((g.get("datasets") or {}).get(n)) for n in names]
        lines.append(_row(cells + [_mcc(g.get("overall")), _secs(a.get("gue_wall_s"))]))
    controls = result.get("controls") or {}
    for label, g in controls.items():
        cells = [f"*{label}, random init (control)*"] + [_mcc(g["datasets"].get(n)) for n in names]
        lines.append(_row(cells + [_mcc(g["overall"]), _secs(g.get("gue_wall_s"))]))
    if controls:
        lines += ["", "Control rows: the same architecture and GUE settings from random init, with that tokenizer and no "
                      "pre-training; an arm's gain over its tokenizer's control is what its pre-training added."]
    lines += ["", f"GUE: train subset {gc['max_train_samples'] or 'all'}, dev/test subset {gc['max_eval_samples'] or 'all'}, "
                  f"lr {gc['gue_lr']}, batch {gc['gue_batch_size']}, steps {gc['gue_max_steps'] if gc['gue_max_steps'] > 0 else 'recipe'}; "
                  "the state with the best dev MCC is scored on test."]
    return lines


def _notes(arms: list[dict]) -> list[str]:
    lines = ["- Training losses are over different vocabularies (a uniform guess costs ln|V| nats), and with overlapping "
             "k-mers a masked token can be read from its unmasked neighbours: compare a loss curve's shape and speed across "
             "arms, not its height. 'Steps to half the drop': first step at which the smoothed loss has fallen half-way "
             "from its first-10% mean to its last-10% mean."]
    spans = [a["name"] for a in arms if a["masking"] in ("dnabert", "randommask") and not a["overlapping"]]
    if spans:
        lines.append(f"- {', '.join(spans)}: a span masking policy with a non-overlapping tokenizer; the trainer then uses "
                     "span unit 1 (DNABERT span m = 1 is single-token masking; RandomMask's boundary grows from 1 token).")
    failed = [a["name"] for a in arms if a.get("error")]
    if failed:
        lines.append(f"- Failed arms (see ablation.json and their logs): {', '.join(failed)}.")
    return lines


def format_markdown(result: dict) -> str:
    """ablation.md: the budget, the pre-training table, the GUE table (when GUE ran) and notes."""
    lines = ["# Tokenizer ablation", "", _budget_text(result), "", "## Pre-training", ""]
    lines += _pretrain_table(result["arms"])
    names = result.get("gue_datasets") or []
    if names:
        lines += [""] + _gue_table(result, names)
    lines += ["", "## Notes", ""] + _notes(result["arms"])
    lines += ["", "Plot: `loss_curves.png` (training loss and MLM accuracy per step, every arm)."]
    return "\n".join(lines) + "\n"
