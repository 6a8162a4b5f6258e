"""Sequences -> embeddings. See `python tools/embed.py --help`; logic in megadna.infer.embed."""
from megadna.cli.embed import main

if __name__ == "__main__":
    raise SystemExit(main())
