"""How much of a k-mer model's embedding table is linear in the k-mers' bases. See `python tools/analyze_embeddings.py --help`; logic in megadna.experiments.embeddings."""
from megadna.cli.analyze_embeddings import main

if __name__ == "__main__":
    raise SystemExit(main())
