"""The one owner of a pre-training run's directory layout and of its checkpoints' completeness.

    save_dir/
      config.json              # the resolved run config (written at start, rank 0)
      metrics.jsonl            # one JSON line per step (rank 0); trimmed to the checkpoint on resume
      summary.json             # final step, eval, throughput (written at the end)
      tensorboard/             # TensorBoard scalars
      demo_data/               # the built-in demo shards, when --data is empty
      checkpoints/
        step00000100/          # DeepSpeed's files (model + ZeRO optimizer shards, one writer per rank)
          megadna.json         # written last, atomically, by rank 0 after every rank finished: "complete"
          config.json          # the resolved run config
          tokenizer/           # the tokenizer, so a checkpoint exports on its own
        step00000200/
        ...

Every reader and writer of these names (trainer, pretrained loader, ablation, tests, demo) goes
through `RunDir` and the functions below; no other module spells them.

A checkpoint directory without `megadna.json` is an interrupted save: `--resume auto` passes over it
and takes the newest complete one, so a crash mid-save leaves the previous checkpoint usable. Only
after a new checkpoint is complete are the oldest beyond `keep_last` deleted.
The step is read from megadna.json, never parsed from the directory name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from megadna.errors import InputError
from megadna.jsonfile import read_json, read_jsonl, read_versioned_json, write_json

META = "megadna.json"
FORMAT = "megadna-checkpoint/1"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run's save_dir, and the few reads every consumer needs."""

    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def demo_data(self) -> Path:
        return self.root / "demo_data"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / tag_for(step)

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        return complete_checkpoints(self.checkpoints)

    def newest_checkpoint(self) -> Path | None:
        found = self.complete_checkpoints()
        return found[-1][1] if found else None

    def read_metrics(self) -> list[dict]:
        """The per-step records of metrics.jsonl (empty when the run has not logged yet)."""
        return read_jsonl(self.metrics) if self.metrics.is_file() else []

    def read_summary(self) -> dict | None:
        """summary.json, or None while the run has not finished."""
        return read_json(self.summary, "run summary") if self.summary.is_file() else None

    def read_config(self) -> dict:
        return read_json(self.config, "run config")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Mark a checkpoint complete: temp file + rename, so the marker is never half-written."""
    write_json(Path(ckpt_dir) / META, {"format": FORMAT, **meta})


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
