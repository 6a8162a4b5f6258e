"""The data position: batches of genome windows in the run's global sample order, exact over restarts.

The order is megadna.data.order (a pure function of the seed, the shard sets and the run's first global
batch size); this module reads it. A rank's micro batch k since the resume point is a fixed piece of a
global batch (order.Deal), so the position of the whole run is one integer, the samples consumed, and a
resume may change the world size, the DataLoader workers, the micro batch and gradient accumulation:
with the same global batch, the same samples form the same global batches.
"""

from __future__ import annotations

import atexit
import bisect
import functools
import itertools
import os
import weakref
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from megadna.data.genome import reverse_complement
from megadna.data.order import MAX_LANES, Deal, SetOrder, quotas, rng
from megadna.data.remote import as_location, is_url, locate
from megadna.data.shards import SPLITS, iter_shard, read_manifest, shard_entries
from megadna.errors import InputError


@dataclass
class StreamConfig:
    split: str = "train"
    micro_batch: int = 8
    """Windows per batch: the DeepSpeed config's train_micro_batch_size_per_gpu."""
    num_workers: int = 1
    """DataLoader worker processes per rank; any number gives the same batches."""
    seed: int = 0
    shuffle: bool = True
    shuffle_block: int = 2048
    """Consecutive samples of a lane shuffled together (on top of the per-epoch shard permutation)."""
    reverse_complement: float = 0.0
    """Probability that a window is read as its reverse complement (augmentation at load time)."""
    accum: int = 1
    """Micro batches per rank per optimizer step (the DeepSpeed config's gradient_accumulation_steps)."""
    order_batch: int = 0
    """The global batch size the run started with, which fixes the order (0: this run's global batch)."""
    max_lanes: int = MAX_LANES
    """Places of a shard set a global batch is drawn from, at most. 1 (with one rank) reads shards one
    after the other, as megadna did before the global order: tools/bench_order.py compares the two."""

    def __post_init__(self):
        if self.split not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.micro_batch < 1 or self.num_workers < 0 or self.shuffle_block < 1 or self.accum < 1 or self.order_batch < 0 or self.max_lanes < 1:
            raise InputError(f"micro_batch >= 1, num_workers >= 0, shuffle_block >= 1, accum >= 1, order_batch >= 0 required, got {self}")
        if not 0.0 <= self.reverse_complement <= 1.0:
            raise InputError(f"reverse_complement must be a probability, got {self.reverse_complement}")


class ShardSet:
    """One shard set (a directory or a URL form) of a split: its manifest and its order in the run."""

    def __init__(self, location, cfg: StreamConfig, quota: int):
        self.dir = as_location(location)
        manifest = read_manifest(self.dir)
        self.entries = shard_entries(manifest, cfg.split)  # what each shard must be: read with it as `expect`
        if not self.entries:
            raise InputError(f"{self.dir}: the manifest has no {cfg.split!r} shards")
        shards = tuple((rel, sh["samples"]) for rel, sh in self.entries.items())
        missing = [] if is_url(self.dir) else [n for n, _ in shards if not (self.dir / n).is_file()]
        if missing:
            raise InputError(f"{self.dir}: {len(missing)} shard(s) listed in the manifest are missing: {', '.join(missing[:5])}")
        self.order = SetOrder(shards, quota, cfg.seed, cfg.shuffle, cfg.shuffle_block, cfg.max_lanes)
        if self.order.rounds_per_epoch == 0:
            raise InputError(f"{self.dir}/{cfg.split}: {self.order.total_samples} windows are fewer than the {quota} this set gives each "
                             "global batch; make more windows or use a smaller global batch")
        self.window_bp = manifest["window_config"]["window"]
        self.manifest = manifest
        self.has_val = bool(manifest["splits"]["val"]["shards"])


class _Lane:
    """A forward reader of one lane of one epoch: sample q of the lane's reading order, block by block.
    Each shard is checked against its manifest entry (size and sha256 before a byte is decoded): a
    damaged one is a CorruptShard (an InputError naming it), never a silent short or wrong read."""

    def __init__(self, sset: ShardSet, epoch: int, lane: int, rc: float, with_meta: bool = False):
        self.sset, self.epoch, self.lane, self.rc, self.with_meta = sset, epoch, lane, rc, with_meta
        self.segments = sset.order.lane_segments(epoch, lane)
        self.block, self.raw, self.raw_pos = -1, None, -1

    def get(self, q: int) -> tuple[bytes, dict | None, int, bool]:
        """(bases, meta, sample id, reverse-complement flip) of sample q of the lane."""
        B = self.sset.order.shuffle_block
        b, i = divmod(q, B)
        if b != self.block:
            self._load(b)
        j = self.order[i]
        return self.samples[j][0], self.samples[j][1], int(self.ids[j]), bool(self.flips[i])

    def _load(self, b: int) -> None:
        o = self.sset.order
        start = b * o.shuffle_block
        size = min(o.shuffle_block, o.lane_len - start)
        if self.raw is None or self.raw_pos != start:  # a jump (or a first read): open at the block, skipping what is before
            self.raw = self._raw(start)
        self.samples = list(itertools.islice(self.raw, size))
        self.raw_pos = start + size
        if len(self.samples) < size:  # iter_shard checks every count against the manifest: only a bug gets here
            raise InputError(f"{self.sset.dir}: lane {self.lane} of epoch {self.epoch} ran out of samples in block {b}; "
                             f"run tools/make_shards.py --out {self.sset.dir} --verify")
        self.ids = self._ids(start, size)
        self.order = o.block_order(self.epoch, self.lane, b, size)
        self.flips = (rng(o.seed, self.epoch, self.lane, b, 0x4C).random(size) < self.rc) if self.rc > 0 else np.zeros(size, bool)
        self.block = b

    def _ids(self, start: int, size: int) -> np.ndarray:
        ids, pos = np.empty(size, np.int64), 0
        for seg in self.segments:
            n = seg.stop - seg.start
            a, z = max(start, pos), min(start + size, pos + n)
            if a < z:
                ids[a - start:z - start] = seg.first_id + (a - pos) + np.arange(z - a)
            pos += n
        return ids

    def _raw(self, start: int):
        """The lane's samples in shard order from position `start`."""
        pos = 0
        for seg in self.segments:
            n = seg.stop - seg.start
            if pos + n <= start:  # whole segment before the start: not even opened
                pos += n
                continue
            skip = max(0, start - pos)
            yield from iter_shard(locate(self.sset.dir, seg.shard), seg.start + skip, seg.stop, with_meta=self.with_meta,
                                  expect=self.sset.entries[seg.shard], gz=seg.shard.endswith(".gz"))
            pos += n


class WindowStream:
    """The batches of genome windows one rank trains on, endless over epochs, resumable exactly.

    `data` is one shard set (a directory or a URL form) or a weighted mixture (a list of
    megadna.data.mixing.Source). `start_sample` is the number of samples the whole run had consumed
    at the resume point; micro batch k of this rank is `deal.first(k)` onwards. A batch is a pure
    function of those positions, so it does not depend on the worker that reads it."""

    def __init__(self, data, cfg: StreamConfig, *, rank: int = 0, world_size: int = 1, tokenizer=None, max_tokens: int | None = None,
                 start_sample: int = 0):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.deal = Deal(start_sample, cfg.micro_batch, cfg.accum, rank, world_size)
        self.order_batch = cfg.order_batch or self.deal.global_batch
        self.sources = data if isinstance(data, list) else None
        locations = [s.location for s in self.sources] if self.sources else [data]
        self.quotas = quotas([s.weight for s in self.sources], self.order_batch) if self.sources else [self.order_batch]
        self.sets = [ShardSet(loc, cfg, q) for loc, q in zip(locations, self.quotas)]
        self._starts = np.cumsum([0, *self.quotas[:-1]]).tolist()  # each set's first place in a round
        names = [s.name for s in self.sources] if self.sources else [str(self.sets[0].dir)]
        lengths = {name: s.window_bp for name, s in zip(names, self.sets)}
        if len(set(lengths.values())) > 1:
            raise InputError(f"--data: the sources' windows differ ({', '.join(f'{k} {v} bp' for k, v in lengths.items())}); "
                             "make every shard set with the same --window")
        self.dir = self.sets[0].dir
        self.window_bp = self.sets[0].window_bp
        self.manifest = self.sets[0].manifest
        self.manifest_has_val = all(s.has_val for s in self.sets)

    @property
    def start_sample(self) -> int:
        return self.deal.start

    @property
    def epoch_samples(self) -> int:
        """The run's samples in the shortest epoch of its sets (whole rounds)."""
        return min(s.order.rounds_per_epoch for s in self.sets) * self.order_batch

    @property
    def batches_per_epoch(self) -> int:
        """Micro batches of this rank in `epoch_samples`."""
        return self.epoch_samples // self.deal.global_batch * self.cfg.accum

    # -- positions -------------------------------------------------------------------------------

    def locate(self, p: int) -> tuple[int, int]:
        """(set index, position within the set) of the run's sample p."""
        if len(self.quotas) == 1:
            return 0, p
        t, o = divmod(p, self.order_batch)
        s = bisect.bisect_right(self._starts, o) - 1
        return s, t * self.quotas[s] + o - self._starts[s]

    def source_counts(self, p: int) -> np.ndarray:
        """Samples of each set among the run's samples 0..p-1."""
        t, o = divmod(int(p), self.order_batch)
        return t * np.asarray(self.quotas) + np.clip(o - np.asarray(self._starts), 0, self.quotas)

    def lanes_read(self, n_batches: int) -> set[tuple[int, int, int]]:
        """(set, epoch, lane) of every lane this rank's first n micro batches read from."""
        out = set()
        for k in range(n_batches):
            for p in range(self.deal.first(k), self.deal.first(k) + self.cfg.micro_batch):
                s, sp = self.locate(p)
                out.add((s, *self.sets[s].order.locate(sp)[:2]))
        return out

    # -- samples and batches ---------------------------------------------------------------------

    def samples(self, first: int, n: int, lanes: dict | None = None, *, with_meta: bool = False) -> Iterator[tuple[bytes, dict | None, int, int, bool]]:
        """(bases, meta, set index, sample id, flip) of the run's samples first..first+n-1. `lanes` keeps
        the open lane readers between calls (a reader only moves forward)."""
        lanes = {} if lanes is None else lanes
        for p in range(first, first + n):
            s, sp = self.locate(p)
            epoch, lane, q = self.sets[s].order.locate(sp)
            key = (s, epoch, lane)
            reader = lanes.get(key)
            if reader is None or q < reader.block * self.cfg.shuffle_block:
                for old in [k for k in lanes if k[0] == s and k[1] < epoch]:  # readers of this set's finished epochs
                    del lanes[old]
                reader = lanes[key] = _Lane(self.sets[s], epoch, lane, self.cfg.reverse_complement, with_meta)
            bases, meta, sid, flip = reader.get(q)
            yield bases, meta, s, sid, flip

    def batches(self, worker: int = 0, num_workers: int = 1) -> Iterator[dict]:
        """Endless micro batches k = worker, worker + num_workers, ... of this rank since the resume point."""
        lanes: dict = {}
        for k in itertools.count(worker, num_workers):
            yield self.collate(list(self.samples(self.deal.first(k), self.cfg.micro_batch, lanes)), k)

    def collate(self, samples: list, k: int) -> dict:
        """A batch: the windows (reverse-complemented where the lane's draw says), tokenized when the
        stream has a tokenizer; with each window's set and sample id (its index in the set's manifest)."""
        seqs = [reverse_complement(b.decode()).encode() if flip else b for b, _, _, _, flip in samples]
        out = {"batch_index": k, "part": self.deal.part(k), "sources": np.asarray([s for _, _, s, _, _ in samples], np.int64),
               "sample_ids": np.asarray([i for _, _, _, i, _ in samples], np.int64)}
        if self.tokenizer is None:
            out["seqs"] = seqs
            return out
        import torch

        enc = self.tokenizer.encode_batch(seqs, self.max_tokens)
        out["input_ids"] = torch.from_numpy(enc["input_ids"])
        out["attention_mask"] = torch.from_numpy(enc["attention_mask"])
        return out

    def lane_samples(self, s: int, epoch: int, lane: int, *, with_meta: bool = False) -> Iterator[tuple[bytes, dict | None, int]]:
        """(bases, meta, sample id) of one lane of one epoch of set s, in reading order."""
        reader = _Lane(self.sets[s], epoch, lane, 0.0, with_meta)
        for q in range(self.sets[s].order.lane_len):
            bases, meta, sid, _ = reader.get(q)
            yield bases, meta, sid


def torch_dataset(stream: WindowStream):
    """A torch IterableDataset over the stream; DataLoader worker w serves micro batches w, w + W, ...,
    which torch's round-robin hands out in order. Bad input
    met in a worker (a corrupt shard) crosses to the rank as a value, `{"error": message}`, which
    `Batches` raises there as the InputError it was: one line, not a worker traceback."""
    import torch

    class _Dataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
            return _errors_as_values(stream.batches(worker, workers))

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
    """A loader yielding the stream's micro batches in order from the resume point (iterate it, then
    close the iterator)."""
    import torch

    W = stream.cfg.num_workers
    kw = dict(num_workers=W, persistent_workers=True, prefetch_factor=prefetch_factor, worker_init_fn=functools.partial(_init_worker, parent=os.getpid())) if W > 0 else {}
    return Loader(torch.utils.data.DataLoader(torch_dataset(stream), batch_size=None, pin_memory=pin_memory, **kw))
