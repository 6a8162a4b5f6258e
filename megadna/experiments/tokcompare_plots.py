"""The tokenizer comparison's plots (PNG, matplotlib Agg): token lengths, compression, vocabulary use.

Each takes the report dict of megadna.experiments.tokcompare.compare and a path to write.
"""

from __future__ import annotations

import numpy as np

from megadna.tokenizers import N_SPECIAL


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_token_length(report: dict, path) -> None:
    plt = _pyplot()
    rows = report["tokenizers"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    longest = max(int(L) for r in rows.values() for L in r["token_span_bp"])
    xs = np.arange(1, longest + 1)
    width = 0.8 / len(rows)
    for i, (label, r) in enumerate(rows.items()):
        ys = [r["token_span_bp"].get(str(x), 0.0) for x in xs]
        ax.bar(xs - 0.4 + width * (i + 0.5), ys, width=width, label=f"{label} (mean {r['mean_token_span_bp']:.2f} bp)")
    ax.set_xlabel("bases spelled by one token (bp)")
    ax.set_ylabel("share of tokens")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_title("Token length distribution")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bp_per_token(report: dict, path) -> None:
    plt = _pyplot()
    rows = report["tokenizers"]
    labels = list(rows)
    values = [rows[k]["bp_per_token"] for k in labels]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(labels) + 1.5))
    bars = ax.barh(labels, values, color="tab:blue")
    for bar, label in zip(bars, labels):
        t = rows[label]["tokens_per_window"]
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {bar.get_width():.2f}  ({t['mean']:.0f} tok/window)",
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"bp per token (windows of {report['sample'].get('window_bp', '?')} bp)")
    ax.set_xlim(0, max(values) * 1.45)
    ax.set_title("Compression")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_vocab_use(report: dict, path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, r) in enumerate(report["tokenizers"].items()):
        c = r["vocab_curve"]
        ax.plot(c["top_n"], c["share"], linestyle=("-", "--", "-.", ":")[i % 4], label=f"{label} ({r['vocab_seen']:,}/{r['vocab_size'] - N_SPECIAL:,} seen)")
    ax.set_xscale("log")
    ax.set_xlabel("top-n vocabulary entries (by frequency)")
    ax.set_ylabel("cumulative share of tokens")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.set_title("Vocabulary use")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = {"token_length.png": plot_token_length, "bp_per_token.png": plot_bp_per_token, "vocab_use.png": plot_vocab_use}
