"""Per-layer, per-head attention entropy and focus of models on held-out windows. See `python tools/analyze_attention.py --help`; logic in megadna.experiments.attention."""
from megadna.cli.analyze_attention import main

if __name__ == "__main__":
    raise SystemExit(main())
