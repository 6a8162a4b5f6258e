"""Predict with a fine-tuned model saved by `megadna gue` (output_dir/models/...).

    megadna predict --model runs/gue/models/tf__0__seed42 --input seqs.fa --out preds.csv
    megadna predict --model runs/gue/models/tf__0__seed42 --input table.csv --out preds.csv

Input: FASTA (plain or gzipped) or a CSV with a 'sequence' column (and optionally 'id' or 'name').
Output: one row per sequence, in input order: row, id, length_bp, n_windows, then the prediction and
the class probabilities (regression: the value; multi-label: 0/1 and a probability per label).
Sequences longer than the model are tiled (megadna.infer.predict; docs/USING.md).
Exit codes: 0 done, 2 bad input (the message names the file and line or record).
"""

from __future__ import annotations

import argparse
import json

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point


def build_parser() -> argparse.ArgumentParser:
    from megadna.infer.predict import PredictConfig

    p = parser("megadna predict", __doc__)
    add_config_arguments(p, PredictConfig)
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megadna.infer.predict import PredictConfig, run_predict

    print(json.dumps(run_predict(config_from_args(PredictConfig, args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
