"""What every megadna command shares: bad input is one clear line on stderr and exit code 2.

A command that joins a torch.distributed process group (pre-training) declares it with
`@entry_point(owns_process_group=True)`. Once its call has created the group, the process ends through
`os._exit` with the command's code, after flushing its output and tearing the group down (bounded).
A normal interpreter exit would instead run the C++ destructors of gloo/NCCL and DeepSpeed while their
threads still run, which sometimes aborts ("terminate called without an active exception", exit 250 or
134 in place of the intended 2) or blocks on a loader worker that never exits.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import traceback
from typing import NoReturn

from megadna.errors import InputError

TEARDOWN_TIMEOUT_S = 10.0  # destroying a process group can block on a dead peer: never longer than this


def entry_point(fn=None, *, owns_process_group: bool = False):
    """Wrap a `main(argv=None)`: an InputError prints its message (it names the place) without a traceback.

    `owns_process_group`: see the module docstring; the exit code is then final even where the
    interpreter's own shutdown would have replaced it.
    """
    if fn is None:
        return functools.partial(entry_point, owns_process_group=owns_process_group)

    @functools.wraps(fn)
    def wrapper(argv=None):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        owner = owns_process_group and not _group_initialized()  # a group made before this call is not ours
        try:
            code = fn(argv)
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            if owner and _group_initialized():
                exit_now(2)
            sys.exit(2)
        except BaseException as e:
            if not (owner and _group_initialized()):
                raise
            exit_now(_code_of(e))
        if owner and _group_initialized():
            exit_now(code)
        return code

    return wrapper


def _group_initialized() -> bool:
    dist = sys.modules.get("torch.distributed")  # never import torch for a command that did not
    return bool(dist is not None and dist.is_available() and dist.is_initialized())


def _code_of(e: BaseException) -> int:
    """The exit code the interpreter would have given `e`, after printing what it would have printed."""
    if isinstance(e, SystemExit):
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    if isinstance(e, KeyboardInterrupt):
        return 130
    traceback.print_exception(e)
    return 1


def exit_now(code: int | None) -> NoReturn:
    """End the process with `code`: flush, destroy the process group (at most TEARDOWN_TIMEOUT_S), then
    os._exit, so that no C++ destructor or atexit hook runs and nothing can replace the code."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if _group_initialized():
        t = threading.Thread(target=_destroy_group, name="megadna-teardown", daemon=True)
        t.start()
        t.join(TEARDOWN_TIMEOUT_S)
    os._exit(0 if code is None else int(code) & 0xFF)


def _destroy_group() -> None:
    try:
        sys.modules["torch.distributed"].destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort: the process ends next whatever happens here
        pass
