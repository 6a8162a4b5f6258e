"""Train a DNA BPE tokenizer (sentencepiece) on FASTA files or a shard set; logic in megadna.tokenizers.bpe.

    python tools/train_bpe.py --fasta a.fa.gz b.fa.gz --vocab_size 4096 --out tokenizers/bpe4096 [--max_bp N]
    python tools/train_bpe.py --shards shards/ --vocab_size 4096 --out tokenizers/bpe4096 --max_bp 200000000

The output directory loads with megadna.tokenizers.get_tokenizer(DIR) and with
transformers.AutoTokenizer.from_pretrained(DIR).
"""

from __future__ import annotations

import argparse
import itertools

from megadna.cli.args import parser
from megadna.cli.common import entry_point
from megadna.tokenizers.bpe import train_bpe
from megadna.tokenizers.bpe_corpus import fasta_sequences, shard_sequences


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna train-bpe", __doc__)
    p.epilog = "Input is cut at every N run and IUPAC code, then into --chunk_bp chunks."
    source = p.add_argument_group("input (one or both)")
    source.add_argument("--fasta", nargs="+", default=[], metavar="FA", help="FASTA files, plain or .gz")
    source.add_argument("--shards", metavar="DIR", help="shard set from tools/make_shards.py (its train split only)")
    p.add_argument("--vocab_size", type=int, default=4096, help="tokens in all, specials included (default 4096)")
    p.add_argument("--out", required=True, help="output directory, e.g. tokenizers/bpe4096")
    p.add_argument("--max_bp", type=int, default=None, help="train on at most this many bases (default: all)")
    p.add_argument("--chunk_bp", type=int, default=1000, help="bases per training sentence (default 1000)")
    p.add_argument("--max_piece_bp", type=int, default=16, help="longest BPE piece in bases (default 16)")
    p.add_argument("--threads", type=int, default=1, help="sentencepiece training threads (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace a tokenizer already in --out")
    return p


@entry_point
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.fasta and not args.shards:
        p.error("give --fasta FILE [FILE ...] and/or --shards DIR")
    sources = []
    if args.fasta:
        sources.append(fasta_sequences(args.fasta))
    if args.shards:
        sources.append(shard_sequences(args.shards))
    tokenizer = train_bpe(
        itertools.chain(*sources),
        args.vocab_size,
        args.out,
        chunk_bp=args.chunk_bp,
        max_bp=args.max_bp,
        max_piece_bp=args.max_piece_bp,
        num_threads=args.threads,
        overwrite=args.overwrite,
    )
    stats = tokenizer.training
    print(f"{tokenizer.name}: trained on {stats['n_bp']:,} bp in {stats['n_chunks']:,} chunks, saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
