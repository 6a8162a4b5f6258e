"""Plot a run's curricula against the optimizer step: mask boundary, masked share and, with
--seq_len_schedule, tokens per sequence.

    python tools/plot_masking.py --policy randommask --k 6 --total_steps 10000 --seq_len_schedule 34:0.3,130:0.6 --out schedule.png

The numbers come from `megadna.masking.schedule`, which applies the policy itself to a random batch
at sampled steps, so the plot shows what training will do, not a re-derivation of it.
"""

from __future__ import annotations

import argparse

from megadna.cli.args import parser
from megadna.cli.common import entry_point
from megadna.masking import POLICIES, MaskingConfig, schedule
from megadna.seqlen import parse_schedule, seq_len_at


def build_parser() -> argparse.ArgumentParser:
    # MaskingConfig's None-able fields (centre_probability, max_boundary, phase_steps) are not
    # bool/int/float/str, so add_config_arguments cannot spell them: the flags are listed here.
    ap = parser("megadna plot-masking", __doc__)
    ap.add_argument("--policy", choices=POLICIES, default="randommask")
    ap.add_argument("--k", type=int, default=6, help="tokenizer k-mer size (tokens per base window)")
    ap.add_argument("--total_steps", type=int, required=True, help="optimizer steps in the run")
    ap.add_argument("--mask_ratio", type=float, default=0.15)
    ap.add_argument("--centre_probability", type=float, default=None)
    ap.add_argument("--no_rescale", action="store_true", help="hold p fixed: the masked share grows")
    ap.add_argument("--max_boundary", type=int, default=None, help="B_max in tokens (default 2k)")
    ap.add_argument("--phases", type=int, default=5)
    ap.add_argument("--phase_steps", type=int, default=None)
    ap.add_argument("--n_points", type=int, default=50, help="steps sampled across the run")
    ap.add_argument("--batch_size", type=int, default=64, help="windows in the random batch per point")
    ap.add_argument("--seq_len", type=int, default=512, help="tokens per window, [CLS]/[SEP] included")
    ap.add_argument("--seq_len_schedule", default="", help="the run's sequence-length curriculum (as megadna pretrain), drawn as a third panel")
    ap.add_argument("--out", required=True, help="PNG to write")
    return ap


def _plot(s: dict, title: str, out) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    panels = 3 if "seq_len" in s else 2
    fig, axes = plt.subplots(panels, 1, sharex=True, figsize=(7, 2.5 * panels))
    top, bottom = axes[0], axes[1]
    top.step(s["step"], s["mask_boundary"], where="post")
    top.set_ylabel("mask boundary B (tokens)")
    top.set_title(title)
    bottom.step(s["step"], s["expected_mask_ratio"], where="post", label="expected (interior)")
    bottom.plot(s["step"], s["realised_mask_ratio"], "o", ms=3, label="realised on a random batch")
    bottom.set_ylabel("masked share of maskable tokens")
    bottom.legend()
    if panels == 3:
        axes[2].step(s["step"], s["seq_len"], where="post")
        axes[2].set_ylabel("tokens per sequence")
    axes[-1].set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = MaskingConfig(policy=args.policy, mask_ratio=args.mask_ratio, centre_probability=args.centre_probability, rescale=not args.no_rescale,
                        max_boundary=args.max_boundary, phases=args.phases, phase_steps=args.phase_steps)
    s = schedule(cfg, args.k, args.total_steps, args.n_points, batch_size=args.batch_size, seq_len=args.seq_len)
    stages = parse_schedule(args.seq_len_schedule)
    if stages:
        s["seq_len"] = [seq_len_at(stages, step, args.total_steps, args.seq_len) for step in s["step"]]
    _plot(s, f"{args.policy}, k={args.k}", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
