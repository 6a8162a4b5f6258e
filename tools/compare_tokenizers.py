"""Compare DNA tokenizers on genome windows. See `python tools/compare_tokenizers.py --help`; logic in megadna.experiments.tokcompare."""
from megadna.cli.compare_tokenizers import main

if __name__ == "__main__":
    raise SystemExit(main())
