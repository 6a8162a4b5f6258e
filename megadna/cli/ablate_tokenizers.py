"""Tokenizer / masking ablation: the same pre-training budget per arm, then GUE; logic in megadna.experiments.ablation.

Overnight on a GPU node (every local GPU per arm, ZeRO-2 bf16):
    python tools/ablate_tokenizers.py --data shards/hg38 --out runs/ablation \\
        --arms kmer6:randommask,kmer6:bert,nkmer6:bert,bpe4096:bert,base:bert --model small --max_steps 20000 \\
        --gue_dir data/GUE --datasets prom/prom_core_notata,tf/0,mouse/0 --gue_lr 1e-4
Small, on CPU:
    OMP_NUM_THREADS=1 python tools/ablate_tokenizers.py --data shards/ --out runs/abl --tokenizers kmer6,base \\
        --max_steps 30 --gue_dir data/GUE --datasets tf/0 --gue_seeds 42 --max_train_samples 256 \\
        --max_eval_samples 128 --gue_max_steps 20 --gue_lr 1e-3

Every arm reads the same windows (same shards, DeepSpeed config, ranks, seed and steps): the bp budget
is equal. Re-running the same command skips finished arms and resumes an interrupted one.
Writes ablation.json, ablation.md, loss_curves.png and arms/<arm>/{pretrain,gue}/ into --out.
Exit codes: 0 every arm done, 1 an arm failed (the others ran; see ablation.md), 2 bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point
from megadna.experiments.ablation import AblationConfig, run_ablation


def build_parser(prog: str = "megadna ablate-tokenizers") -> argparse.ArgumentParser:
    """AblationConfig's flags, one per field."""
    p = parser(prog, __doc__)
    add_config_arguments(p, AblationConfig)
    return p


@entry_point
def main(argv=None) -> int:
    cfg = config_from_args(AblationConfig, build_parser().parse_args(argv))
    result = run_ablation(cfg)
    print((Path(cfg.out) / "ablation.md").read_text())
    print(f"wrote {cfg.out}/ablation.json, ablation.md, loss_curves.png")
    return 1 if any(a.get("error") for a in result["arms"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
