"""Compare DNA tokenizers on the same genome windows; logic in megadna.experiments.tokcompare (see docs/TOKENIZERS.md).

    python tools/compare_tokenizers.py --fasta a.fa.gz b.fa.gz --tokenizers kmer3,kmer6,nkmer6,base \\
        --train_bpe 256,1024,4096 --window 510 --max_bp 2000000 --out reports/tokenizers
    python tools/compare_tokenizers.py --shards shards/hg38 --tokenizers kmer6,nkmer6,tokenizers/bpe4096 --out reports/tok

Writes report.json, report.md and token_length.png, bp_per_token.png, vocab_use.png into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point
from megadna.errors import InputError
from megadna.experiments.tokcompare import CompareConfig, run_comparison
from megadna.experiments.tokcompare_plots import PLOTS


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna compare-tokenizers", __doc__)
    source = p.add_argument_group("input (one of the two)")
    source.add_argument("--fasta", nargs="+", default=[], metavar="FA", help="FASTA files, plain or .gz (tiled into windows, stride = window)")
    source.add_argument("--shards", metavar="DIR", help="a shard set from tools/make_shards.py (its train split)")
    p.add_argument("--tokenizers", default="", help="comma-separated: kmer<k>, nkmer<k>, base, or saved tokenizer directories (e.g. a BPE)")
    p.add_argument("--train_bpe", type=_int_list, default=[], metavar="V1,V2", help="also train a BPE of each vocab size on the sample, into --out/bpe<V>")
    p.add_argument("--out", required=True, help="output directory")
    add_config_arguments(p.add_argument_group("the sample and the measurements"), CompareConfig)
    return p


@entry_point
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.fasta) == bool(args.shards):
        p.error("give --fasta FILE [FILE ...] or --shards DIR (one of the two)")
    specs = [s.strip() for s in args.tokenizers.split(",") if s.strip()]
    if not specs and not args.train_bpe:
        raise InputError("nothing to compare: give --tokenizers and/or --train_bpe")
    cfg = config_from_args(CompareConfig, args)
    report = run_comparison(specs, args.out, fasta=args.fasta, shards=args.shards, train_bpe_sizes=args.train_bpe, cfg=cfg)
    print((Path(args.out) / "report.md").read_text())
    print(f"wrote {args.out}/report.json, report.md, " + ", ".join(PLOTS))
    return 0 if report["tokenizers"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
