"""FASTA -> WebDataset shards. See `python tools/make_shards.py --help`; logic in megadna.data.shard_writer."""
from megadna.cli.make_shards import main

if __name__ == "__main__":
    raise SystemExit(main())
