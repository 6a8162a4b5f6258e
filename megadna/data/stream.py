"""The resumable data position: batches of genome windows streamed from a shard set, exact over restarts.

Reading is planned from the manifest's sample counts (see docs/DATA.md for the mental model): every
epoch is a seeded permutation of the shards, cut into equal contiguous slots, one per (rank, worker),
so every rank gets the same number of batches (no DDP hang on uneven shards) and the position of the
stream is a single integer, the number of batches a rank has consumed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from megadna.data.genome import reverse_complement
from megadna.data.shards import SPLITS, CorruptShard, iter_shard, read_manifest
from megadna.errors import InputError

log = logging.getLogger(__name__)


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
