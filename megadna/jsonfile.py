"""Reading megadna's own JSON records (shard manifests, checkpoint markers): plain JSON, never pickle."""

from __future__ import annotations

import json
from pathlib import Path

from megadna.errors import InputError


def read_versioned_json(path: Path, fmt: str) -> dict:
    """The JSON object in `path`, whose "format" field must be `fmt`; a clear error naming the file otherwise."""
    try:
        obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise InputError(f"{path}: format {found!r}, expected {fmt!r}")
    return obj
