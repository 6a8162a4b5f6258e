"""Tokenizer / masking ablation: the same pre-training budget per arm, then GUE; logic in megadna.ablation.

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
import dataclasses

from megadna.ablation import AblationConfig, run_ablation
from megadna.cli.common import entry_point


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="megadna-ablate-tokenizers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(AblationConfig):
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default, nargs="?", const=True,
                           help=f.metadata.get("help"))
        else:
            p.add_argument(f"--{f.name}", type=type(f.default), default=f.default, help=f.metadata.get("help"))
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = AblationConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(AblationConfig)})
    result = run_ablation(cfg)
    print(open(f"{cfg.out}/ablation.md").read())
    print(f"wrote {cfg.out}/ablation.json, ablation.md, loss_curves.png")
    return 1 if any(a.get("error") for a in result["arms"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
