"""Embed DNA sequences with a trained model: one vector per sequence.

    megadna embed --model exports/hg38-kmer6 --input seqs.fa.gz --out emb/seqs
    megadna embed --model runs/hg38-kmer6 --input gue/tf/0/test.csv --out emb/tf0 --pooling cls --layer 6

Writes PREFIX.npy (float32 [n, hidden_size], input order) and PREFIX.csv (row, id, length_bp,
n_windows), both renamed into place at the end. Sequences longer than the model are tiled into
overlapping windows and their window vectors averaged (megadna.infer.embed; docs/USING.md).
Prints a JSON summary (counts, sequences/s and bp/s of the embedding itself) on stdout.
Exit codes: 0 done, 2 bad input (the message names the file and line or record).
"""

from __future__ import annotations

import argparse
import json

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point


def build_parser() -> argparse.ArgumentParser:
    from megadna.infer.embed import EmbedConfig

    p = parser("megadna embed", __doc__)
    add_config_arguments(p, EmbedConfig)
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megadna.infer.embed import EmbedConfig, run_embed

    print(json.dumps(run_embed(config_from_args(EmbedConfig, args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
