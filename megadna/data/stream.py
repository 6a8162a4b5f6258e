"""The resumable data position: batches of genome windows streamed from a shard set, exact over restarts.

Reading is planned from the manifest's sample counts (see docs/DATA.md for the mental model): every
epoch is a seeded permutation of the shards, cut into equal contiguous slots, one per (rank, worker),
so every rank gets the same number of batches (no DDP hang on uneven shards) and the position of the
stream is a single integer, the number of batches a rank has consumed.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from megadna.data.genome import reverse_complement
from megadna.data.remote import as_location, is_url, locate
from megadna.data.shards import SPLITS, iter_shard, read_manifest, shard_entries
from megadna.errors import InputError

# --------------------------------------------------------------------------------------------------
# The epoch plan (pure arithmetic on the manifest's counts)
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
# The batch stream
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
        self.dir = as_location(shard_dir)  # a local directory, or a URL form (megadna.data.remote)
        self.cfg = cfg
        self.rank, self.world_size = rank, world_size
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.start_batch = start_batch
        manifest = read_manifest(self.dir)
        self._entries = shard_entries(manifest, cfg.split)  # what each shard must be: read with it as `expect`
        if not self._entries:
            raise InputError(f"{self.dir}: the manifest has no {cfg.split!r} shards")
        shards = tuple((rel, sh["samples"]) for rel, sh in self._entries.items())
        missing = [] if is_url(self.dir) else [n for n, _ in shards if not (self.dir / n).is_file()]
        if missing:
            raise InputError(f"{self.dir}: {len(missing)} shard(s) listed in the manifest are missing: {', '.join(missing[:5])}")
        self.plan = EpochPlan(shards, world_size, max(1, cfg.num_workers), cfg.micro_batch, cfg.seed, cfg.shuffle)
        if self.plan.batches_per_slot == 0:
            raise InputError(
                f"{self.dir}/{cfg.split}: {self.plan.total_samples} windows are too few for {world_size} rank(s) x "
                f"{self.plan.num_workers} worker(s) x micro batch {cfg.micro_batch}; make more windows or use fewer workers"
            )
        self.window_bp = manifest["window_config"]["window"]
        self.manifest = manifest
        self.manifest_has_val = bool(manifest["splits"]["val"]["shards"])

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
        """The slot's samples in shard order from position `start`. Each shard is checked against its
        manifest entry (size and sha256 before a byte is decoded): a damaged one is a CorruptShard
        (an InputError naming it), never a silent short or wrong read."""
        pos = 0
        for seg in self.plan.segments(epoch, slot):
            n = seg.stop - seg.start
            if pos + n <= start:  # whole segment before the resume point: not even opened
                pos += n
                continue
            skip = max(0, start - pos)
            yield from iter_shard(locate(self.dir, seg.shard), seg.start + skip, seg.stop, with_meta=with_meta, expect=self._entries[seg.shard],
                                  gz=seg.shard.endswith(".gz"))
            pos += n

    def _fill(self, raw, size, epoch, slot, b) -> list:
        buf = list(itertools.islice(raw, size))
        if len(buf) < size:  # iter_shard checks every count against the manifest: only a bug gets here
            raise InputError(f"{self.dir}: slot {slot} of epoch {epoch} ran out of samples in block {b}; run tools/make_shards.py --out {self.dir} --verify")
        return buf

    # -- batch level ---------------------------------------------------------------------------

    def raw_batches(self, logical_worker: int, local_start: int) -> Iterator[tuple[list[bytes], int, int, int]]:
        """Endless (windows, epoch, slot, batch in slot) of one logical worker's slot, from its local
        batch index `local_start`: what `collate` turns into a batch."""
        bps = self.plan.batches_per_slot
        slot = self.rank * self.plan.num_workers + logical_worker
        local = local_start
        while True:
            epoch, first = divmod(local, bps)
            samples = self.slot_samples(epoch, slot, first * self.cfg.micro_batch)
            for b in range(first, bps):
                yield [next(samples)[0] for _ in range(self.cfg.micro_batch)], epoch, slot, b
                local += 1

    def batches(self, logical_worker: int, local_start: int) -> Iterator[dict]:
        """Endless batches of one logical worker's slot, from its local batch index `local_start`."""
        W = self.plan.num_workers
        for local, raw in enumerate(self.raw_batches(logical_worker, local_start), local_start):
            yield self.collate(*raw, global_batch=local * W + logical_worker)

    def collate(self, seqs: list[bytes], epoch: int, slot: int, b: int, global_batch: int) -> dict:
        """A batch: the windows (reverse-complemented by a draw of (seed, epoch, slot, b)), tokenized
        when the stream has a tokenizer."""
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
    """A torch IterableDataset over the stream; each DataLoader worker serves its own slot. Bad input
    met in a worker (a corrupt shard) crosses to the rank as a value, `{"error": message}`, which
    `Batches` raises there as the InputError it was: one line, not a worker traceback."""
    import torch

    class _Dataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            if info is not None and info.num_workers != stream.plan.num_workers:
                raise InputError(f"the stream was planned for {stream.plan.num_workers} workers, the DataLoader has {info.num_workers}")
            logical, local = stream.worker_start(info.id if info is not None else 0)
            return _errors_as_values(stream.batches(logical, local))

    return _Dataset()


def _errors_as_values(batches: Iterator[dict]) -> Iterator[dict]:
    try:
        yield from batches
    except InputError as e:
        yield {"error": str(e)}


def _init_worker(_worker_id: int, *, parent: int) -> None:
    """Launchers (DeepSpeed's, SLURM) send SIGTERM to the whole process tree. The rank saves a
    checkpoint on it and still needs its loader meanwhile, so workers ignore SIGTERM/SIGINT; they end
    when the rank closes its loader (`Batches.close`), and on Linux the kernel kills them when the rank
    dies, however it dies (PR_SET_PDEATHSIG)."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent)


def _die_with_parent(parent: int) -> None:
    import ctypes
    import signal
    import sys

    # Not a child of the rank (a forkserver started it), or the rank is already gone: torch's own
    # watchdog in the worker loop ends it once it notices.
    if not sys.platform.startswith("linux") or os.getppid() != parent:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the rank died between the check and prctl: no signal will come
        os._exit(1)


_open_iterators: weakref.WeakSet = weakref.WeakSet()


class Batches:
    """The iterator of a `make_loader` loader: batches in order; a worker's error raised here as the
    InputError it was; `close()` ends the workers for sure. Close it (the trainer does, in `fit`'s
    finally): at interpreter exit multiprocessing would SIGTERM workers that ignore SIGTERM and then
    join them forever. Iterators still open at exit are closed by an atexit hook, which runs before
    multiprocessing's (atexit runs hooks last-registered first)."""

    JOIN_S = 5.0  # how long a worker may take to leave on its own before it is killed

    def __init__(self, loader):
        _register_atexit()
        self._it = iter(loader)
        _open_iterators.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._it is None:
            raise StopIteration
        batch = next(self._it)
        if "error" in batch:
            self.close()
            raise InputError(batch["error"])
        return batch

    def close(self) -> None:
        it, self._it = self._it, None
        _open_iterators.discard(self)
        workers = list(getattr(it, "_workers", ()))
        if not workers:
            return
        try:
            it._shutdown_workers()  # torch's orderly shutdown: bounded joins, then SIGTERM (ignored here)
        finally:
            for w in workers:
                if w.is_alive():
                    w.kill()
                    w.join(self.JOIN_S)


@functools.cache
def _register_atexit() -> None:
    import multiprocessing.util  # noqa: F401  (registers its exit hook first, so ours runs before it)

    atexit.register(_close_open_iterators)


def _close_open_iterators() -> None:
    for b in list(_open_iterators):
        b.close()


class Loader:
    """A DataLoader over a WindowStream whose iterators are `Batches`."""

    def __init__(self, dataloader):
        self.dataloader = dataloader

    def __iter__(self) -> Batches:
        return Batches(self.dataloader)


def make_loader(stream: WindowStream, *, pin_memory: bool = False, prefetch_factor: int = 4) -> Loader:
    """A loader yielding the stream's batches in order, batch start_batch first (iterate it, then close
    the iterator)."""
    import torch

    W = stream.cfg.num_workers
    kw = dict(num_workers=W, persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=functools.partial(_init_worker, parent=os.getpid())) if W > 0 else {}
    return Loader(torch.utils.data.DataLoader(torch_dataset(stream), batch_size=None, pin_memory=pin_memory, **kw))
