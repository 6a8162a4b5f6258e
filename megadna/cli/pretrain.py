"""Pre-train a BERT-like DNA model with DeepSpeed: arguments in, megadna.train.train out.

Single process (CPU or one GPU), the built-in demo data and a tiny model:
    deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/z2.json
One node, all its GPUs, real shards:
    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/z2.json \\
        --data shards/hg38 --tokenizer kmer6 --masking randommask --model dnabert-base \\
        --max_steps 200000 --save_dir runs/hg38-kmer6
Several nodes: see launchers/multinode.sh, launchers/slurm.sbatch and docs/MULTINODE.md.
(`megadna pretrain ...` is the same command, for one process or under a launcher that sets the env.)

Exit codes: 0 done (or preempted and saved), 2 bad input (message names the place), 3 non-finite loss,
4 lost contact with another rank (a node died or froze: the message says which and what to check).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point
from megadna.train.config import TrainConfig

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[2] / "ds_configs" / "z2.json"
EXIT_NON_FINITE, EXIT_PEER_LOST = 3, 4


def build_parser(prog: str = "megadna pretrain") -> argparse.ArgumentParser:
    """TrainConfig's flags, plus the two the deepspeed launcher passes (--local_rank, --deepspeed_config)."""
    p = parser(prog, __doc__)
    p.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    p.add_argument("--deepspeed_config", default=str(DEFAULT_DS_CONFIG), help="DeepSpeed JSON config (batch, precision, optimizer, ZeRO)")
    p.add_argument("--deepspeed", action="store_true", help="accepted for DeepSpeed's own convention; megadna always uses DeepSpeed")
    add_config_arguments(p, TrainConfig)
    return p


@entry_point(owns_process_group=True)  # ends via os._exit once the process group exists: the code is final
def main(argv=None) -> int:
    from megadna.train import NonFiniteLoss, distributed, train

    args = build_parser().parse_args(argv)
    try:
        train(config_from_args(TrainConfig, args), args.deepspeed_config)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_NON_FINITE
    except (RuntimeError, OSError) as e:
        explanation = distributed.peer_failure(e)
        if explanation is None:
            raise
        print(f"error: {explanation}", file=sys.stderr)
        return EXIT_PEER_LOST
    return 0
