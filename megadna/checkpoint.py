"""Checkpoint layout, completeness, retention and resume.

    save_dir/checkpoints/
      step00000100/            # DeepSpeed's files (model + ZeRO optimizer shards, one writer per rank)
        megadna.json           # written last, atomically, by rank 0 after every rank finished: "complete"
        config.json            # the resolved run config
        tokenizer/             # the tokenizer, so a checkpoint exports on its own
      step00000200/
      ...

A checkpoint directory without `megadna.json` is an interrupted save: `--resume auto` passes over it
and takes the newest complete one, so a crash mid-save leaves the previous checkpoint usable. Only
after a new checkpoint is complete are the oldest beyond `keep_last` deleted.
The step is read from megadna.json, never parsed from the directory name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from megadna.errors import InputError
from megadna.jsonfile import read_versioned_json

META = "megadna.json"
FORMAT = "megadna-checkpoint/1"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Mark a checkpoint complete: temp file + rename, so the marker is never half-written."""
    tmp = ckpt_dir / (META + ".tmp")
    tmp.write_text(json.dumps({"format": FORMAT, **meta}, indent=1))
    os.replace(tmp, ckpt_dir / META)


def read_meta(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise InputError(f"{ckpt_dir}: no {META}; this checkpoint was never completed (an interrupted save?)")
    return read_versioned_json(path, FORMAT)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(global_step, directory) of every complete checkpoint under root, oldest first."""
    out = []
    if not root.is_dir():
        return out
    for d in root.iterdir():
        if d.is_dir() and (d / META).is_file():
            try:
                out.append((int(read_meta(d)["global_step"]), d))
            except (InputError, KeyError, ValueError):
                continue  # a damaged marker is treated as an incomplete checkpoint
    return sorted(out)


def resolve_resume(resume: str, root: Path) -> Path | None:
    """'auto' -> newest complete checkpoint under root (or None); 'none' -> None; else a directory."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        return found[-1][1] if found else None
    d = Path(resume)
    read_meta(d)  # raises a clear error for an incomplete or foreign directory
    return d


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond keep_last, and incomplete ones older than the
    newest complete one (leftovers of interrupted saves). Returns what was deleted."""
    found = complete_checkpoints(root)
    doomed = [d for _, d in found[:-keep_last]] if keep_last > 0 else []
    if found:
        newest = found[-1][1]
        doomed += [d for d in root.iterdir() if d.is_dir() and not (d / META).exists() and d.stat().st_mtime < newest.stat().st_mtime]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed
