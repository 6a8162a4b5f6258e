"""Pre-train a BERT-like DNA model with DeepSpeed. Thin: arguments in, megadna.train.train out.

Single process (CPU or one GPU), the built-in demo data and a tiny model:
    deepspeed --num_gpus 1 launchers/pretrain.py --deepspeed_config ds_configs/z2.json
One node, all its GPUs, real shards:
    deepspeed launchers/pretrain.py --deepspeed_config ds_configs/z2.json \
        --data shards/hg38 --tokenizer kmer6 --masking randommask --model dnabert-base \
        --max_steps 200000 --save_dir runs/hg38-kmer6
Several nodes: see launchers/multinode.sh, launchers/slurm.sbatch and docs/MULTINODE.md.

Exit codes: 0 done (or preempted and saved), 2 bad input (message names the place), 3 non-finite loss,
4 lost contact with another rank (a node died or froze: the message says which and what to check).
"""

import argparse
import sys
from pathlib import Path

from megadna import distributed
from megadna.cli.common import entry_point
from megadna.train import NonFiniteLoss, add_arguments, config_from_args, train

DEFAULT_DS_CONFIG = Path(__file__).resolve().parents[1] / "ds_configs" / "z2.json"


@entry_point
def main(argv=None):
    import deepspeed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local_rank", type=int, default=-1, help="set by the deepspeed launcher")
    add_arguments(parser)
    deepspeed.add_config_arguments(parser)
    args = parser.parse_args(argv)
    try:
        train(config_from_args(args), args.deepspeed_config or str(DEFAULT_DS_CONFIG))
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except (RuntimeError, OSError) as e:
        explanation = distributed.peer_failure(e)
        if explanation is None:
            raise
        print(f"error: {explanation}", file=sys.stderr)
        sys.exit(4)


if __name__ == "__main__":
    main()
