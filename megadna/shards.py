"""WebDataset tar shards of genome windows: writing them, and reading them back as an exact stream.

A shard directory looks like::

    shards/
      manifest.json             # written last: its presence means every shard below is complete
      train/shard-000000.tar.gz # one sample per window: <key>.seq.txt (bases) and <key>.meta.json
      val/shard-000000.tar.gz

Shards hold raw bases, not tokens, so one shard set serves every tokenizer of an ablation.
Nothing in a shard is ever unpickled: readers decode `seq.txt` as ASCII and `meta.json` as JSON.

Reading is planned from the manifest's sample counts (see docs/DATA.md for the mental model): every
epoch is a seeded permutation of the shards, cut into equal contiguous slots, one per (rank, worker),
so every rank gets the same number of batches (no DDP hang on uneven shards) and the position of the
stream is a single integer, the number of batches a rank has consumed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import shutil
import tarfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from megadna import __version__
from megadna.errors import InputError
from megadna.jsonfile import read_versioned_json
from megadna.genome import Window, WindowConfig, WindowStats, iter_windows, reverse_complement

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "megadna-shards/1"
SPLITS = ("train", "val")


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardConfig:
    samples_per_shard: int = 10_000
    """Windows per shard. Equal-sized shards keep the per-rank plan simple; the last may be shorter."""
    compress: bool = True
    """.tar.gz (about 0.3 bytes per bp) instead of .tar (about 4 bytes per bp: two 512-byte tar headers per window)."""
    compresslevel: int = 1
    """gzip level. Level 1 is several times faster than level 9 and only a few % larger on DNA."""
    write_shuffle: int = 20_000
    """Windows held in a seeded shuffle buffer while writing, so that a shard mixes regions of the
    genome instead of holding one contiguous stretch (0 writes in genome order)."""
    seed: int = 0

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


def _ustar_template() -> bytes:
    """A 512-byte POSIX ustar header with every field fixed but name, size and checksum."""
    h = bytearray(512)
    h[100:108] = b"0000444\x00"  # mode r--r--r--
    h[108:116] = b"0000000\x00"  # uid
    h[116:124] = b"0000000\x00"  # gid
    h[136:148] = b"00000000000\x00"  # mtime 0: shards are byte-reproducible
    h[156:157] = b"0"  # regular file
    h[257:265] = b"ustar\x0000"
    h[265:272] = b"megadna"  # uname
    h[297:304] = b"megadna"  # gname
    return bytes(h)


_USTAR = _ustar_template()
# Only the name (bytes 0-100) and size (124-136) fields vary; they are zero in the template, so the
# header checksum is the template's own (its checksum field counted as spaces) plus their bytes.
_USTAR_SUM = sum(_USTAR) + sum(b" " * 8)
_USTAR_MID, _USTAR_TAIL = _USTAR[100:124], _USTAR[136:148]
_USTAR_END = _USTAR[156:]


def tar_member(name: bytes, data: bytes) -> bytes:
    """One tar member (header + data + padding), the same ustar format tarfile and webdataset read.

    Python's tarfile builds each header field by field (~100 us a member); this fills a template
    (a few us), which is what lets sharding run at tens of Mbp/s per core (docs/BENCHMARKS.md).
    """
    if len(name) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name[:40]!r}...")
    size = b"%011o\x00" % len(data)
    chksum = b"%06o\x00 " % (_USTAR_SUM + sum(name) + sum(size))
    return name.ljust(100, b"\0") + _USTAR_MID + size + _USTAR_TAIL + chksum + _USTAR_END + data + bytes(-len(data) % 512)


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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_shards(fasta_paths: Sequence[str | Path], out_dir: str | Path, window_cfg: WindowConfig, shard_cfg: ShardConfig = ShardConfig(), *, overwrite: bool = False) -> dict:
    """Window the FASTA files and write train/val shards plus manifest.json into out_dir.

    The manifest is written last, atomically (temp file + rename): a crash leaves no manifest, and
    readers refuse a directory without one. An existing shard set is never touched without overwrite.
    Returns the manifest.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise InputError(f"{out} is not empty; choose a new directory or pass --overwrite to replace the shard set there")
        # Remove the manifest first so a crash during the rewrite cannot leave it over new partial shards.
        (out / MANIFEST).unlink(missing_ok=True)
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    sources = []
    for p in fasta_paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"{p}: no such FASTA file")
        sources.append({"path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size})
    for split in SPLITS:
        (out / split).mkdir(parents=True, exist_ok=True)
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
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return manifest


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a complete shard set, or a clear error saying why the directory is not one."""
    d = Path(shard_dir)
    path = d / MANIFEST
    if not path.is_file():
        hint = " (shards without a manifest are an unfinished write: run tools/make_shards.py again)" if any(d.glob("*/shard-*")) else ""
        raise InputError(f"{d}: no {MANIFEST}; not a megadna shard directory{hint}")
    return read_versioned_json(path, FORMAT)


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Check every shard's size and sha256 against the manifest; returns the problems found."""
    d = Path(shard_dir)
    manifest = read_manifest(d)
    problems = []
    for split, info in manifest["splits"].items():
        for sh in info["shards"]:
            p = d / split / sh["name"]
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != sh["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {sh['bytes']}")
            elif file_sha256(p) != sh["sha256"]:
                problems.append(f"{p}: sha256 differs from the manifest")
    return problems


# --------------------------------------------------------------------------------------------------
# Reading: the epoch plan (pure arithmetic on the manifest's counts)
# --------------------------------------------------------------------------------------------------


def _rng(*key: int) -> np.random.Generator:
    """A generator that is a pure function of its integer key (seed, epoch, slot, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


@dataclass(frozen=True)
class Segment:
    shard: str  # path relative to the shard directory
    start: int  # first sample (index within the shard)
    stop: int  # one past the last


@dataclass(frozen=True)
class EpochPlan:
    """Which samples each (rank, worker) slot reads in one epoch.

    The epoch's shard order is a permutation seeded by (seed, epoch); the concatenated samples are cut
    into world_size * num_workers contiguous slots of equal length, a multiple of the micro batch.
    The few samples that do not fill a slot (fewer than slots * micro_batch) are left out of this
    epoch only: the next epoch's permutation leaves out others.
    """

    shards: tuple[tuple[str, int], ...]  # (relative path, samples) in manifest order
    world_size: int
    num_workers: int
    micro_batch: int
    seed: int
    shuffle: bool = True

    @property
    def slots(self) -> int:
        return self.world_size * self.num_workers

    @property
    def total_samples(self) -> int:
        return sum(n for _, n in self.shards)

    @property
    def batches_per_slot(self) -> int:
        return self.total_samples // self.slots // self.micro_batch

    @property
    def samples_per_slot(self) -> int:
        return self.batches_per_slot * self.micro_batch

    @property
    def batches_per_rank(self) -> int:
        return self.batches_per_slot * self.num_workers

    def shard_order(self, epoch: int) -> list[tuple[str, int]]:
        if not self.shuffle:
            return list(self.shards)
        perm = _rng(self.seed, epoch, 0x5A4D).permutation(len(self.shards))
        return [self.shards[i] for i in perm]

    def segments(self, epoch: int, slot: int) -> list[Segment]:
        """The (shard, start, stop) pieces that make up one slot's samples, in reading order."""
        lo = slot * self.samples_per_slot
        hi = lo + self.samples_per_slot
        out, pos = [], 0
        for name, n in self.shard_order(epoch):
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                out.append(Segment(name, a - pos, b - pos))
            pos += n
            if pos >= hi:
                break
        return out


# --------------------------------------------------------------------------------------------------
# Reading: samples from tar shards
# --------------------------------------------------------------------------------------------------

_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError, UnicodeDecodeError, KeyError, json.JSONDecodeError)


class CorruptShard(Exception):
    def __init__(self, path, index, cause):
        super().__init__(f"{path}: corrupt or truncated at sample {index}: {cause}")
        self.path, self.index = path, index


def iter_shard(path: Path, start: int = 0, stop: int | None = None, *, with_meta: bool = False) -> Iterator[tuple[bytes, dict | None]]:
    """Yield (bases, meta) for samples start..stop of one shard. Samples before `start` are skipped
    without decoding. Raises CorruptShard, naming the shard and sample, when the tar is damaged."""
    from webdataset.tariterators import tar_file_iterator  # tar stream parsing: webdataset's

    index, key, sample = 0, None, {}
    try:
        with open(path, "rb") as f:
            # Members of one sample are adjacent (<key>.seq.txt, <key>.meta.json): group by key prefix.
            for member in tar_file_iterator(f):
                k, _, ext = member["fname"].partition(".")
                if k != key:
                    if key is not None:
                        if index >= start:
                            yield _decode(sample, with_meta)
                        index += 1
                        if stop is not None and index >= stop:
                            return
                    key, sample = k, {}
                if index >= start and (ext == "seq.txt" or (with_meta and ext == "meta.json")):
                    sample[ext] = member["data"]
            if key is not None and index >= start and (stop is None or index < stop):
                yield _decode(sample, with_meta)
    except _CORRUPT as e:
        raise CorruptShard(path, index, e) from None


def _decode(sample: dict, with_meta: bool) -> tuple[bytes, dict | None]:
    seq = sample["seq.txt"]
    meta = json.loads(sample["meta.json"]) if with_meta else None
    return seq, meta


# --------------------------------------------------------------------------------------------------
# Reading: the batch stream
# --------------------------------------------------------------------------------------------------


@dataclass
class StreamConfig:
    split: str = "train"
    micro_batch: int = 8
    """Windows per batch: the DeepSpeed config's train_micro_batch_size_per_gpu."""
    num_workers: int = 1
    """DataLoader worker processes per rank; part of the data position (changing it on resume is refused)."""
    seed: int = 0
    shuffle: bool = True
    shuffle_block: int = 2048
    """Samples shuffled together inside a slot (on top of the per-epoch shard permutation)."""
    reverse_complement: float = 0.0
    """Probability that a window is read as its reverse complement (augmentation at load time)."""

    def __post_init__(self):
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.micro_batch < 1 or self.num_workers < 0 or self.shuffle_block < 1:
            raise InputError(f"micro_batch >= 1, num_workers >= 0, shuffle_block >= 1 required, got {self}")
        if not 0.0 <= self.reverse_complement <= 1.0:
            raise InputError(f"reverse_complement must be a probability, got {self.reverse_complement}")


class WindowStream:
    """The batches of genome windows one rank trains on, endless over epochs, resumable exactly.

    Position: `start_batch` is the number of batches this rank has already consumed. Batches are
    dealt to DataLoader workers round-robin (torch's own order), so global batch g comes from logical
    worker g % W; on resume the workers are rotated by start_batch so that the first batch fetched is
    exactly batch start_batch. A batch is a pure function of (seed, epoch, slot, batch index).
    """

    def __init__(self, shard_dir: str | Path, cfg: StreamConfig, *, rank: int = 0, world_size: int = 1, tokenizer=None, max_tokens: int | None = None, start_batch: int = 0):
        self.dir = Path(shard_dir)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.start_batch = start_batch
        manifest = read_manifest(self.dir)
        split = manifest["splits"].get(cfg.split)
        if not split or not split["shards"]:
            raise InputError(f"{self.dir}: the manifest has no {cfg.split!r} shards")
        shards = tuple((f"{cfg.split}/{s['name']}", s["samples"]) for s in split["shards"])
        missing = [n for n, _ in shards if not (self.dir / n).is_file()]
        if missing:
            raise InputError(f"{self.dir}: {len(missing)} shard(s) listed in the manifest are missing: {', '.join(missing[:5])}")
        self.plan = EpochPlan(shards, world_size, max(1, cfg.num_workers), cfg.micro_batch, cfg.seed, cfg.shuffle)
        if self.plan.batches_per_slot == 0:
            raise InputError(
                f"{self.dir}/{cfg.split}: {self.plan.total_samples} windows are too few for {world_size} rank(s) x "
                f"{self.plan.num_workers} worker(s) x micro batch {cfg.micro_batch}; make more windows or use fewer workers"
            )
        self.window_bp = manifest["window_config"]["window"]

    # -- sample level ----------------------------------------------------------------------------

    def slot_samples(self, epoch: int, slot: int, start: int = 0, *, with_meta: bool = False) -> Iterator[tuple[bytes, dict | None]]:
        """One slot's samples of one epoch in final (block-shuffled) order, from position `start`."""
        block = self.cfg.shuffle_block
        first_block = start // block
        raw = self._slot_raw(epoch, slot, first_block * block, with_meta)
        n = self.plan.samples_per_slot
        for b in range(first_block, (n + block - 1) // block):
            size = min(block, n - b * block)
            buf = self._fill(raw, size, epoch, slot, b)
            order = _rng(self.cfg.seed, epoch, slot, b, 0xB10C).permutation(size) if self.cfg.shuffle else range(size)
            skip = start - b * block if b == first_block else 0
            for i in order[skip:] if skip else order:
                yield buf[i]

    def _slot_raw(self, epoch, slot, start, with_meta):
        """The slot's samples in shard order from position `start`; corrupt shards are skipped with a warning."""
        pos = 0
        for seg in self.plan.segments(epoch, slot):
            n = seg.stop - seg.start
            if pos + n <= start:  # whole segment before the resume point: not even opened
                pos += n
                continue
            skip = max(0, start - pos)
            got = 0
            try:
                for sample in iter_shard(self.dir / seg.shard, seg.start + skip, seg.stop, with_meta=with_meta):
                    got += 1
                    yield sample
            except CorruptShard as e:
                log.warning("%s; skipping the %d sample(s) of this slot left in it", e, n - skip - got)
                yield None  # marks the gap; _fill replaces it so every rank keeps the same count
            pos += n

    def _fill(self, raw, size, epoch, slot, b) -> list:
        buf = []
        while len(buf) < size:
            s = next(raw, StopIteration)
            if s is StopIteration:
                break
            if s is not None:
                buf.append(s)
        if len(buf) < size:
            # A corrupt shard left this block short. Ranks must keep the same number of batches (else
            # the collective in the next step hangs), so the gap is filled by repeating this block's
            # own samples. The warning above names the shard.
            if not buf:
                raise InputError(f"{self.dir}: slot {slot} of epoch {epoch} has no readable samples in block {b}; run tools/make_shards.py --verify")
            buf.extend(buf[i % len(buf)] for i in range(size - len(buf)))
        return buf

    # -- batch level ---------------------------------------------------------------------------

    def batches(self, logical_worker: int, local_start: int) -> Iterator[dict]:
        """Endless batches of one logical worker's slot, from its local batch index `local_start`."""
        bps = self.plan.batches_per_slot
        W = self.plan.num_workers
        slot = self.rank * W + logical_worker
        local = local_start
        while True:
            epoch, first = divmod(local, bps)
            samples = self.slot_samples(epoch, slot, first * self.cfg.micro_batch)
            for b in range(first, bps):
                seqs = [next(samples)[0] for _ in range(self.cfg.micro_batch)]
                yield self._collate(seqs, epoch, slot, b, local * W + logical_worker)
                local += 1

    def _collate(self, seqs: list[bytes], epoch: int, slot: int, b: int, global_batch: int) -> dict:
        if self.cfg.reverse_complement > 0:
            flips = _rng(self.cfg.seed, epoch, slot, b, 0x4C).random(len(seqs)) < self.cfg.reverse_complement
            seqs = [reverse_complement(s.decode()).encode() if f else s for s, f in zip(seqs, flips)]
        out = {"batch_index": global_batch, "epoch": epoch}
        if self.tokenizer is None:
            out["seqs"] = seqs
            return out
        import torch

        enc = self.tokenizer.encode_batch(seqs, self.max_tokens)
        out["input_ids"] = torch.from_numpy(enc["input_ids"])
        out["attention_mask"] = torch.from_numpy(enc["attention_mask"])
        return out

    def worker_start(self, dataloader_worker: int) -> tuple[int, int]:
        """(logical worker, its first local batch) for a DataLoader worker, after start_batch batches."""
        W = self.plan.num_workers
        logical = (dataloader_worker + self.start_batch) % W
        first_global = self.start_batch + ((logical - self.start_batch) % W)
        return logical, first_global // W


def torch_dataset(stream: WindowStream):
    """A torch IterableDataset over the stream; each DataLoader worker serves its own slot."""
    import torch

    class _Dataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers != stream.plan.num_workers:
                raise InputError(f"the stream was planned for {stream.plan.num_workers} workers, the DataLoader has {info.num_workers}")
            logical, local = stream.worker_start(info.id if info is not None else 0)
            return stream.batches(logical, local)

    return _Dataset()


def _ignore_preemption_signals(_worker_id: int) -> None:
    # Launchers (DeepSpeed's, SLURM) send SIGTERM to the whole process tree. The rank saves a
    # checkpoint on it and still needs its loader meanwhile; workers exit with their parent anyway.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(stream: WindowStream, *, pin_memory: bool = False, prefetch_factor: int = 4):
    """A DataLoader yielding the stream's batches in order, batch start_batch first."""
    import torch

    W = stream.cfg.num_workers
    kw = dict(num_workers=W, persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=_ignore_preemption_signals) if W > 0 else {}
    return torch.utils.data.DataLoader(torch_dataset(stream), batch_size=None, pin_memory=pin_memory, **kw)
