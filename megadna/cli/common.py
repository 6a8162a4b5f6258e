"""What every megadna command shares: bad input is one clear line on stderr and exit code 2."""

from __future__ import annotations

import functools
import logging
import sys

from megadna.errors import InputError


def entry_point(fn):
    """Wrap a `main(argv=None)`: an InputError prints its message (it names the place) without a traceback."""

    @functools.wraps(fn)
    def wrapper(argv=None):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return fn(argv)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
