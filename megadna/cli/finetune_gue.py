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
import dataclasses

from megadna.cli.common import entry_point
from megadna.gue import GUEConfig, format_table, run_gue


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One --flag per GUEConfig field, typed and documented from the dataclass."""
    for f in dataclasses.fields(GUEConfig):
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            parser.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default, help=f.metadata.get("help"))
        else:
            parser.add_argument(f"--{f.name}", type={"int": int, "float": float}.get(kind, str), default=f.default, help=f.metadata.get("help"))
    return parser


@entry_point
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    cfg = GUEConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GUEConfig)})
    if not cfg.gue_dir:
        parser.error("--gue_dir is required")
    results = run_gue(cfg)
    print(format_table(results))
    print(f"results: {cfg.output_dir}/results.md, results.csv, results.json; predictions: {cfg.output_dir}/predictions/")


if __name__ == "__main__":
    main()
