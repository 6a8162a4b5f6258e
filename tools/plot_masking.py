"""Plot a masking curriculum to PNG. See `python tools/plot_masking.py --help`; logic in megadna.masking."""
from megadna.cli.plot_masking import main

if __name__ == "__main__":
    raise SystemExit(main())
