"""Sequences -> predictions of a fine-tuned model. See `python tools/predict.py --help`; logic in megadna.infer.predict."""
from megadna.cli.predict import main

if __name__ == "__main__":
    raise SystemExit(main())
