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
      universal/
        step00000200/          # a checkpoint in DeepSpeed's universal form, made when it is resumed on
                               # another world size (megadna.train.elastic); its own megadna.json

Every reader and writer of these names (trainer, pretrained loader, ablation, tests, demo) goes
through `RunDir` and the functions below; no other module spells them.

A checkpoint directory without `megadna.json` is an interrupted save: `--resume auto` passes over it
and takes the newest complete one, so a crash mid-save leaves the previous checkpoint usable. Only
after a new checkpoint is complete are the oldest beyond `keep_last` deleted.
The step is read from megadna.json, never parsed from the directory name. A `megadna.json` that
exists but cannot be read is never passed over (that would silently resume from an older step): it
is an InputError naming the directory.

megadna.json also records the size and sha256 of every other file of the checkpoint ("files", written
by `write_meta` after every rank's files are on disk); `verify_files` checks them all before any byte
is deserialised, so a truncated, corrupted or swapped file is named instead of loaded.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from megadna.errors import InputError
from megadna.integrity import check_file, file_record
from megadna.jsonfile import read_json, read_jsonl, read_versioned_json, write_json

META = "megadna.json"
FORMAT = "megadna-checkpoint/1"
CONFIG = "config.json"
TOKENIZER_DIR = "tokenizer"
FILES = "files"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")  # what a loader would read weights from


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
    def universal(self) -> Path:
        return self.root / "universal"

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
        return read_jsonl(self.metrics, allow_torn_tail=True) if self.metrics.is_file() else []  # a crash can tear the last line

    def read_summary(self) -> dict | None:
        """summary.json, or None while the run has not finished."""
        return read_json(self.summary, "run summary") if self.summary.is_file() else None

    def read_config(self) -> dict:
        return read_json(self.config, "run config")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Mark a checkpoint complete: record the size and sha256 of every file already in it, then write
    the marker (temp file + rename, so it is never half-written). Call it once every file is written."""
    ckpt_dir = Path(ckpt_dir)
    write_json(ckpt_dir / META, {"format": FORMAT, **meta, FILES: record_files(ckpt_dir)})


def read_meta(ckpt_dir: Path) -> dict:
    """The checkpoint's marker: InputError naming it when missing, unreadable or without a valid step."""
    path = Path(ckpt_dir) / META
    if not path.is_file():
        raise InputError(f"{ckpt_dir}: no {META}; this checkpoint was never completed (an interrupted save?)")
    meta = read_versioned_json(path, FORMAT)
    step = meta.get("global_step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise InputError(f"{path}: global_step {step!r} is not a step number")
    return meta


def record_files(ckpt_dir: Path) -> dict[str, dict]:
    """{path relative to ckpt_dir: {"size", "sha256"}} of every file in it but the marker."""
    ckpt_dir = Path(ckpt_dir)
    files = sorted(p for p in ckpt_dir.rglob("*") if p.is_file() and p.name != META and not p.name.endswith(".tmp"))
    return {p.relative_to(ckpt_dir).as_posix(): file_record(p) for p in files}


def verify_files(ckpt_dir: Path, meta: dict) -> bool:
    """Every file recorded in megadna.json has its recorded size and sha256, and no weights file
    (WEIGHT_SUFFIXES) is there that was not recorded; InputError naming the first that fails. Reads
    each file once, deserialises nothing. False for a checkpoint written before files were recorded."""
    ckpt_dir = Path(ckpt_dir)
    files = meta.get(FILES)
    if files is None:
        return False
    if not isinstance(files, dict):
        raise InputError(f"{ckpt_dir / META}: '{FILES}' is not a mapping of file names to size and sha256")
    hint = (f" Use another checkpoint of {ckpt_dir.parent} (--resume DIR), or delete {ckpt_dir} (--resume auto then "
            "takes the newest remaining one).")
    for rel, record in files.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts or not isinstance(record, dict):
            raise InputError(f"{ckpt_dir / META}: bad file record {rel!r}")
    extra = sorted(rel for p in ckpt_dir.rglob("*") if p.suffix in WEIGHT_SUFFIXES and (rel := p.relative_to(ckpt_dir).as_posix()) not in files)
    if extra:
        raise InputError(f"{ckpt_dir / extra[0]}: not recorded in {META} when the checkpoint was written "
                         f"({len(extra)} such file(s)); it would be loaded unverified. Remove it, or resume from another checkpoint")
    # Sizes first (one stat each): a truncated or missing file is named at once, before any hashing.
    by_size = sorted(files.items(), key=lambda kv: (ckpt_dir / kv[0]).is_file() and (ckpt_dir / kv[0]).stat().st_size == kv[1].get("size"))
    for rel, record in by_size:
        check_file(ckpt_dir / rel, record, what=f"checkpoint file {rel}", hint=hint)
    return True


def _scan(root: Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, InputError]]]:
    """(complete checkpoints as (global_step, directory) oldest first, [(directory, error)] of those
    whose marker exists but cannot be read). Directories without a marker are in neither."""
    found, damaged = [], []
    if not root.is_dir():
        return found, damaged
    for d in root.iterdir():
        if d.is_dir() and (d / META).is_file():
            try:
                found.append((read_meta(d)["global_step"], d))
            except InputError as e:
                damaged.append((d, e))
    return sorted(found), sorted(damaged, key=lambda x: x[0].name)


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(global_step, directory) of every complete checkpoint under root, oldest first. A directory
    without a marker (an interrupted save) is passed over; one whose marker is unreadable is an
    InputError naming it: passing over it would silently go back to an older step."""
    found, damaged = _scan(root)
    if damaged:
        d, e = damaged[-1]
        raise InputError(f"{d}: its completion marker {META} cannot be read ({e}); --resume auto will not silently fall "
                         f"back to an older checkpoint. Delete {d}, or pass --resume with an older checkpoint directory of {root}")
    return found


def resolve_resume(resume: str, root: Path) -> Path | None:
    """'auto' -> newest complete checkpoint under root (or None); 'none' -> None; else a directory.
    The directory returned has passed `verify_files`: every recorded file is as it was written."""
    if resume == "none":
        return None
    if resume == "auto":
        found = complete_checkpoints(root)
        if not found:
            return None
        d = found[-1][1]
    else:
        d = Path(resume)
    verify_files(d, read_meta(d))  # read_meta: a clear error for an incomplete or foreign directory
    return d


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete the oldest complete checkpoints beyond keep_last, and incomplete ones older than the
    newest complete one (leftovers of interrupted saves). A checkpoint with an unreadable marker is left
    alone (neither counted nor deleted: the next --resume auto names it). Returns what was deleted."""
    found, _ = _scan(root)
    doomed = [d for _, d in found[:-keep_last]] if keep_last > 0 else []
    if found:
        newest = found[-1][1]
        doomed += [d for d in root.iterdir() if d.is_dir() and not (d / META).exists() and d.stat().st_mtime < newest.stat().st_mtime]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed
