"""Validate a DeepSpeed hostfile. See `python tools/check_hostfile.py --help`; logic in megadna.train.hostfile."""
from megadna.cli.check_hostfile import main

if __name__ == "__main__":
    raise SystemExit(main())
