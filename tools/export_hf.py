"""Checkpoint -> Hugging Face directory. See `python tools/export_hf.py --help`; logic in megadna.model.export."""
from megadna.cli.export_hf import main

if __name__ == "__main__":
    raise SystemExit(main())
