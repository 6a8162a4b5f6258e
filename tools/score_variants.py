"""SNVs -> masked-LM log-likelihood ratios. See `python tools/score_variants.py --help`; logic in megadna.infer.variants."""
from megadna.cli.score_variants import main

if __name__ == "__main__":
    raise SystemExit(main())
