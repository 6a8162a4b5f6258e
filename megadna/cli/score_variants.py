"""Score single-nucleotide variants with a trained masked language model: llr = log P(alt) - log P(ref).

    megadna score-variants --model exports/hg38-kmer6 --input variants.csv --out scored.csv
    megadna score-variants --model exports/hg38-kmer6 --input snvs.csv --fasta hg38.fa.gz --out scored.csv

Input CSV: sequence,pos,ref,alt (the variant lies in the row's sequence), or chrom,pos,ref,alt with
--fasta (in the FASTA record named chrom). pos is 1-based; ref and alt are single bases (A, C, G, T)
and the base at pos must be ref. Every token that contains the base is masked and the model's
log-probabilities of the ref and alt tokens there are summed (megadna.infer.variants; docs/USING.md).
Output: the input columns plus llr, logp_ref, logp_alt, in input order. Prints a JSON summary.
Exit codes: 0 done, 2 bad input (the message names the file and line).
"""

from __future__ import annotations

import argparse
import json

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point


def build_parser() -> argparse.ArgumentParser:
    from megadna.infer.variants import VariantConfig

    p = parser("megadna score-variants", __doc__)
    add_config_arguments(p, VariantConfig)
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megadna.infer.variants import VariantConfig, run_score_variants

    print(json.dumps(run_score_variants(config_from_args(VariantConfig, args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
