"""Fine-tune and evaluate on GUE; report MCC / F1 / accuracy beside published baselines.

A pretrained megadna model (checkpoint dir, run save_dir or HF export), 3 seeds, every dataset found:
    python launchers/finetune_gue.py --gue_dir data/GUE --model runs/hg38-kmer6 --output_dir runs/gue-kmer6
The control, same architecture from random init:
    python launchers/finetune_gue.py --gue_dir data/GUE --init random --model tiny --tokenizer kmer6 --output_dir runs/gue-random
A quick CPU check on subsets:
    python launchers/finetune_gue.py --gue_dir data/GUE --model runs/demo --datasets tf/0 --seeds 42 \\
        --max_train_samples 256 --max_eval_samples 128 --max_steps 20
Defaults follow DNABERT-2's published fine-tuning recipe (docs/GUE.md); every knob is a flag.
Re-running with the same --output_dir skips the (dataset, seed) pairs already finished.
Exit codes: 0 done, 2 bad input (the message names the file and line).
"""

from __future__ import annotations

import argparse

from megadna.cli.args import add_config_arguments, config_from_args, parse_bool, parser
from megadna.cli.common import entry_point
from megadna.eval.compare import format_comparison, run_arms
from megadna.eval.config import GUEConfig
from megadna.eval.gue import format_table, run_gue


def build_parser(prog: str = "megadna gue") -> argparse.ArgumentParser:
    """One typed, documented --flag per GUEConfig field, plus the arms of a comparison."""
    p = parser(prog, __doc__)
    add_config_arguments(p, GUEConfig)
    arms = p.add_argument_group("several arms side by side (megadna.eval.compare)")
    arms.add_argument("--models", default="", help="comma-separated model paths, each run with this config into output_dir/arms/<name>/, then compared")
    arms.add_argument("--init_random_control", type=parse_bool, nargs="?", const=True, default=False, metavar="BOOL",
                      help="with --models: also run the first model's architecture and tokenizer from random init, the control every arm is compared to")
    return p


@entry_point
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    models = [m for m in args.models.split(",") if m.strip()]
    if args.init_random_control and not models:
        p.error("--init_random_control goes with --models")
    cfg = config_from_args(GUEConfig, args, **({"model": models[0]} if models else {}))
    if not cfg.gue_dir:
        p.error("--gue_dir is required")
    if models:
        comparison = run_arms(cfg, models, args.init_random_control)
        print(format_comparison(comparison))
        print(f"comparison: {cfg.output_dir}/comparison.md, comparison.json, comparison.png; arms: {cfg.output_dir}/arms/")
        return 0
    results = run_gue(cfg)
    print(format_table(results))
    print(f"results: {cfg.output_dir}/results.md, results.csv, results.json; predictions: {cfg.output_dir}/predictions/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
