"""Train a DNA BPE tokenizer on FASTA or shards. See `python tools/train_bpe.py --help`; logic in megadna.tokenizers.bpe."""
from megadna.cli.train_bpe import main

if __name__ == "__main__":
    raise SystemExit(main())
