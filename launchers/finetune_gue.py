"""GUE fine-tuning and evaluation. See `python launchers/finetune_gue.py --help`; logic in megadna.eval.gue."""
from megadna.cli.finetune_gue import main

if __name__ == "__main__":
    raise SystemExit(main())
