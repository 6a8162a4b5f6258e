"""Writing a shard set: FASTA files -> windows -> numbered train/val tar shards, then the manifest.

The format (layout, tar members, manifest) is megadna.data.shards; this module only produces it.
Shards are byte-reproducible (mtime 0 in tar and gzip headers, seeded write shuffle), so the same
input and configs give the same sha256 on every machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from megadna import __version__
from megadna.data.genome import Window, WindowConfig, WindowStats, iter_windows
from megadna.data.shards import FORMAT, MANIFEST, SPLITS, file_sha256, tar_member
from megadna.errors import InputError
from megadna.jsonfile import replace_dir, write_json


@dataclass(frozen=True)
class ShardConfig:
    """How windows are packed into shards (the windows themselves: megadna.data.genome.WindowConfig)."""

    samples_per_shard: int = field(default=10_000, metadata={"help": "windows per shard (equal-sized shards keep the per-rank plan simple; the last may be shorter)"})
    compress: bool = field(default=True, metadata={"help": ".tar.gz (about 0.3 bytes per bp) instead of .tar (about 4 bytes per bp: two 512-byte tar headers per window)"})
    compresslevel: int = field(default=1, metadata={"help": "gzip level 0-9; level 1 is several times faster than 9 and only a few percent larger on DNA"})
    write_shuffle: int = field(default=20_000, metadata={"help": "windows held in a seeded shuffle buffer while writing, so a shard mixes regions of the genome (0: genome order)"})
    seed: int = field(default=0, metadata={"help": "seeds the write shuffle"})

    def __post_init__(self):
        if self.samples_per_shard < 1:
            raise InputError(f"samples_per_shard must be >= 1, got {self.samples_per_shard}")
        if not 0 <= self.compresslevel <= 9:
            raise InputError(f"compresslevel must be in 0..9, got {self.compresslevel}")
        if self.write_shuffle < 0:
            raise InputError(f"write_shuffle must be >= 0, got {self.write_shuffle}")


class _HashingFile(io.RawIOBase):
    """A write-only file that keeps the sha256 and byte count of what passes through it."""

    def __init__(self, path: Path):
        self._f = open(path, "wb")
        self.sha256 = hashlib.sha256()
        self.nbytes = 0

    def writable(self):
        return True

    def write(self, b):
        self._f.write(b)
        self.sha256.update(b)
        self.nbytes += len(b)
        return len(b)

    def close(self):
        if not self.closed:
            self._f.close()
        super().close()


class _ShardSink:
    """Writes one split's windows into numbered shards: one tar member pair per window."""

    _FLUSH_BYTES = 1 << 20  # members are gathered and written (and compressed) a megabyte at a time

    def __init__(self, directory: Path, cfg: ShardConfig):
        self.dir = directory
        self.cfg = cfg
        self.shards: list[dict] = []
        self.windows = 0
        self.bp = 0
        self._out = None
        self._count = 0
        self._json_cache: dict[str, str] = {}

    def _open(self):
        suffix = ".tar.gz" if self.cfg.compress else ".tar"
        self._name = f"shard-{len(self.shards):06d}{suffix}"
        self._raw = _HashingFile(self.dir / self._name)
        # mtime=0 in the gzip header too: shards are byte-identical across runs (reproducible sha256).
        self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=self.cfg.compresslevel, mtime=0) if self.cfg.compress else self._raw
        self._buf, self._buf_bytes, self._count = [], 0, 0

    def _flush(self):
        self._out.write(b"".join(self._buf))
        self._buf, self._buf_bytes = [], 0

    def _close(self):
        self._buf.append(bytes(1024))  # end of archive: two zero blocks
        self._flush()
        if self._out is not self._raw:
            self._out.close()
        self._raw.close()
        self.shards.append({"name": self._name, "samples": self._count, "bytes": self._raw.nbytes, "sha256": self._raw.sha256.hexdigest()})
        self._out = None

    def _json_str(self, s: str) -> str:
        j = self._json_cache.get(s)
        if j is None:
            j = self._json_cache[s] = json.dumps(s)
        return j

    def write(self, w: Window):
        if self._out is None:
            self._open()
        meta = f'{{"contig": {self._json_str(w.contig)}, "start": {w.start}, "end": {w.end}, "strand": "{w.strand}", "source": {self._json_str(w.source)}'
        if w.softmask_fraction is not None:
            meta += f', "softmask_fraction": {round(w.softmask_fraction, 4)}'
        # Keys must not contain '.', which webdataset reads as the start of the extension: contig
        # names such as NC_000913.3 live in meta.json instead.
        key = b"w%010d" % self.windows
        seq = w.seq.encode("ascii")
        members = tar_member(key + b".seq.txt", seq) + tar_member(key + b".meta.json", (meta + "}").encode())
        self._buf.append(members)
        self._buf_bytes += len(members)
        if self._buf_bytes >= self._FLUSH_BYTES:
            self._flush()
        self._count += 1
        self.windows += 1
        self.bp += w.end - w.start
        if self._count >= self.cfg.samples_per_shard:
            self._close()

    def finish(self) -> dict:
        if self._out is not None:
            self._close()
        return {"shards": self.shards, "windows": self.windows, "bp": self.bp}


def _shuffled(windows: Iterable[Window], size: int, seed: int) -> Iterator[Window]:
    """A seeded shuffle buffer: emits a random held window each time the buffer is full."""
    if size <= 1:
        yield from windows
        return
    rng = np.random.default_rng(seed)
    buf: list[Window] = []
    for w in windows:
        if len(buf) < size:
            buf.append(w)
            continue
        i = int(rng.integers(size))
        buf[i], w = w, buf[i]
        yield w
    order = rng.permutation(len(buf))
    for i in order:
        yield buf[i]


def write_shards(fasta_paths: Sequence[str | Path], out_dir: str | Path, window_cfg: WindowConfig, shard_cfg: ShardConfig = ShardConfig(), *, overwrite: bool = False) -> dict:
    """Window the FASTA files and write train/val shards plus manifest.json into out_dir.

    Write, then rename: the inputs are checked first (every FASTA a readable file, none inside
    out_dir), the new set is written into a temporary directory beside out_dir, and only a complete
    set is swapped in. A run that fails, on bad input or a crash, leaves out_dir as it was (an old
    set intact; no empty train/ val/ behind) and at most a `.NAME.writing-*` directory beside it after a
    hard kill. An existing shard set is replaced only with overwrite. Returns the manifest.
    """
    out = _output_dir(out_dir, overwrite)
    sources = _check_sources(fasta_paths, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700; the set should get the usual permissions
        manifest = _write_set(fasta_paths, tmp, window_cfg, shard_cfg, sources)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


_SET_ENTRIES = {MANIFEST, MANIFEST + ".tmp", *SPLITS}  # what a shard set directory holds (".tmp": an interrupted manifest write)


def _output_dir(out_dir: str | Path, overwrite: bool) -> Path:
    """The resolved output directory (a symlink to a directory: its target), after the checks that need no input."""
    out = Path(out_dir)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(f"{out}: exists and is not a directory; --out must be a directory for the shard set (new, empty, or one to --overwrite)")
        out = out.resolve()
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            raise InputError(f"{out} is not empty; choose a new directory or pass --overwrite to replace the shard set there")
        others = [e for e in entries if e not in _SET_ENTRIES]
        if others:
            raise InputError(f"{out} holds more than a shard set ({', '.join(others[:5])}); --overwrite replaces only a shard set: choose another --out")
    else:
        out = out.absolute()
        parent = next((q for q in out.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise InputError(f"{out}: {parent} is a file, so this directory cannot be made; choose another --out")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_sources(fasta_paths: Sequence[str | Path], out: Path) -> list[dict]:
    """Every FASTA exists, is readable and lies outside `out` (which the new set replaces): checked before anything is written."""
    if not fasta_paths:
        raise InputError("no FASTA files given")
    sources = []
    for p in map(Path, fasta_paths):
        if not p.is_file():
            raise InputError(f"{p}: no such FASTA file")
        if p.resolve().is_relative_to(out):
            raise InputError(f"{p}: lies inside the output directory {out}, which the new shard set replaces; move it out first")
        try:
            sha = file_sha256(p)
        except OSError as e:
            raise InputError(f"{p}: cannot read it ({e.strerror})") from None
        sources.append({"path": str(p), "sha256": sha, "bytes": p.stat().st_size})
    return sources


def _write_set(fasta_paths, out: Path, window_cfg: WindowConfig, shard_cfg: ShardConfig, sources: list[dict]) -> dict:
    """Write a whole shard set into the (new, empty) directory `out`; the manifest last."""
    for split in SPLITS:
        (out / split).mkdir()
    sinks = {split: _ShardSink(out / split, shard_cfg) for split in SPLITS}
    stats = WindowStats()
    windows = iter_windows([str(p) for p in fasta_paths], window_cfg, stats)
    for w in _shuffled(windows, shard_cfg.write_shuffle, shard_cfg.seed):
        sinks[w.split].write(w)
    splits = {split: sink.finish() for split, sink in sinks.items()}
    if splits["train"]["windows"] == 0:
        raise InputError(f"no training windows came out of {', '.join(map(str, fasta_paths))}: are the contigs shorter than the {window_cfg.window} bp window, or all N? ({stats.to_dict()})")
    manifest = {
        "format": FORMAT,
        "megadna_version": __version__,
        "window_config": window_cfg.to_dict(),
        "shard_config": asdict(shard_cfg),
        "sources": sources,
        "splits": splits,
        "totals": {"windows": sum(s["windows"] for s in splits.values()), "bp": sum(s["bp"] for s in splits.values()), "bytes": sum(sh["bytes"] for s in splits.values() for sh in s["shards"])},
        "window_stats": stats.to_dict(),
    }
    write_json(out / MANIFEST, manifest)
    return manifest

