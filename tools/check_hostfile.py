"""Validate a DeepSpeed hostfile. See `python tools/check_hostfile.py --help`; logic in megadna.hostfile."""
from megadna.cli.check_hostfile import main

if __name__ == "__main__":
    main()
