"""Tokenizer / masking ablation: pre-train each arm on the same budget, then GUE. See `python tools/ablate_tokenizers.py --help`; logic in megadna.experiments.ablation."""
from megadna.cli.ablate_tokenizers import main

if __name__ == "__main__":
    raise SystemExit(main())
