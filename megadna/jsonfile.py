"""The one owner of megadna's JSON files (and other small text records): atomic writes, checked reads.

Every record megadna writes (shard manifests, checkpoint markers, run configs and summaries, GUE
markers and results, export metadata) goes through `write_json` / `write_text` (a finished directory,
such as a shard set or an export, through `replace_dir`): a temp file beside the
target, then `os.replace`, so a reader never sees half a file and a crash never destroys the previous
version. Every record it reads goes through `read_json`: plain JSON, never pickle, and a malformed file
is an `InputError` naming the file and line. `read_json_or_none` is for optional records (restart
markers) where "missing or unreadable" means "start again".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from megadna.errors import InputError

log = logging.getLogger(__name__)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (temp file + rename in the same directory)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def staged_dir(out: str | Path):
    """Yield an empty hidden sibling of `out` to fill; when the block ends normally it replaces `out`
    (`replace_dir`), when it raises it is deleted: nothing half-written ever stands under `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: str | Path, out: str | Path) -> None:
    """Put the finished directory `new` at `out` (the directory counterpart of `write_text`). An empty
    or absent `out` is replaced in one rename; an existing one is first renamed aside (readers see the
    old contents or the new, never a mix), put back if the swap fails, and deleted only once the new
    one is in place. `new` must be on the same filesystem (make it beside `out`)."""
    new, out = Path(new), Path(out)
    if not out.exists() or not any(out.iterdir()):
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old / "previous")
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old / "previous", out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | Path, obj, indent: int = 1) -> Path:
    """Write `obj` as JSON (trailing newline) atomically."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | Path, what: str = "JSON file"):
    """The parsed JSON in `path`; a missing or malformed file is an InputError naming it."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such {what}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); is this a {what}?") from None
    return parse_json(text, path)


def parse_json(text: str | bytes, where):
    """JSON text read from `where` (a file or a URL), parsed; malformed text is an InputError naming it."""
    try:
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise InputError(f"{where}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


def read_json_or_none(path: str | Path):
    """The parsed JSON in `path`, or None when it is missing or unreadable (optional records only)."""
    try:
        return read_json(path)
    except InputError:
        return None


def read_versioned_json(path: str | Path, fmt: str, obj=None) -> dict:
    """The JSON object in `path` (or `obj`, already parsed from there), whose "format" field must be
    `fmt`; a clear error naming the file otherwise."""
    obj = read_json(path) if obj is None else obj
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: format {found!r}, expected {fmt!r}")
    return obj


def read_jsonl(path: str | Path, *, allow_torn_tail: bool = False) -> list[dict]:
    """One JSON value per line (blank lines skipped); a malformed line is an InputError naming it.

    `allow_torn_tail`: for an append-only log that a crash can cut mid-line, a malformed LAST line is
    dropped with a warning instead (malformed lines before it are still errors).
    """
    lines = Path(path).read_bytes().splitlines()
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    out = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            msg = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            if allow_torn_tail and i == last:
                log.warning("%s, line %d: dropped an incomplete last line (%s), as left by a crash mid-write", path, i + 1, msg)
                break
            raise InputError(f"{path}, line {i + 1}: not valid JSON: {msg}") from None
    return out
