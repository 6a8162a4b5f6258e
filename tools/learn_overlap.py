"""Does a small model learn the k-mer overlap? See `python tools/learn_overlap.py --help`; logic in megadna.experiments.overlap."""
from megadna.cli.learn_overlap import main

if __name__ == "__main__":
    raise SystemExit(main())
