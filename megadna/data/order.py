"""The global sample order: which window is sample P of a run, whatever the world size, workers or micro batch.

Pure arithmetic on the manifests' counts (docs/DATA.md has the picture). A run's samples form one
endless sequence P = 0, 1, 2, ... that depends only on the seed, the shard sets (and their weights) and
`order_batch`, the global batch size the run started with (recorded in every checkpoint and kept on
resume). The sequence is cut into rounds of `order_batch` samples:

- a round holds a fixed quota of samples from each shard set (the weights, by largest remainder);
- a shard set's quota is taken from its lanes: each epoch, the set's shards are permuted by
  (seed, epoch) and the concatenation is cut into `lanes` equal contiguous lanes (the largest divisor
  of the quota up to 64 and up to the number of shards), each read in
  shuffle blocks of consecutive samples permuted by (seed, epoch, lane, block); a round takes `chunk`
  consecutive samples of every lane (lanes x chunk = quota).

So a global batch mixes `lanes` places of the genome (up to 64) instead of one, and global batch g is
samples [g G, (g + 1) G). A rank's micro batch is a contiguous piece of it (`Deal`), so a rank reads
the same few lanes at every step: reading stays local however many ranks there are.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from megadna.errors import InputError

MAX_LANES = 64


def rng(*key: int) -> np.random.Generator:
    """A generator that is a pure function of its integer key (seed, epoch, lane, ...)."""
    return np.random.default_rng(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]))


def lanes_for(quota: int, max_lanes: int = MAX_LANES) -> int:
    """The lanes a shard set's quota is read from: the largest divisor of the quota up to max_lanes."""
    return max(d for d in range(1, min(quota, max_lanes) + 1) if quota % d == 0)


def quotas(weights: list[float], order_batch: int) -> list[int]:
    """Samples of each shard set in a round of `order_batch` samples: the weights by largest remainder.
    Each set must get at least one sample per round."""
    total = sum(weights)
    exact = [order_batch * w / total for w in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (out[i] - exact[i], i))[: order_batch - sum(out)]:
        out[i] += 1
    if min(out) < 1:
        raise InputError(f"weights {weights} give a source no sample in a global batch of {order_batch}: "
                         f"raise its weight to at least 1/{order_batch} of the total, or use a larger global batch")
    return out


@dataclass(frozen=True)
class Segment:
    shard: str  # path relative to the shard directory
    start: int  # first sample (index within the shard)
    stop: int  # one past the last
    first_id: int  # the sample id of `start`: its index in the manifest's order of all the split's samples


@dataclass(frozen=True)
class SetOrder:
    """One shard set's order: its samples' positions 0, 1, 2, ... (the set's share of the run) -> where
    each lies (epoch, lane, index in the lane's reading order). The sizes are cached: `locate` runs
    once per sample read."""

    shards: tuple[tuple[str, int], ...]  # (relative path, samples) in manifest order
    quota: int  # samples of this set in each round
    seed: int
    shuffle: bool = True
    shuffle_block: int = 2048
    max_lanes: int = MAX_LANES

    @cached_property
    def lanes(self) -> int:
        """At most one lane per shard: more lanes than shards would only open the same shards again."""
        return lanes_for(self.quota, min(self.max_lanes, len(self.shards)))

    @cached_property
    def chunk(self) -> int:
        return self.quota // self.lanes

    @cached_property
    def total_samples(self) -> int:
        return sum(n for _, n in self.shards)

    @cached_property
    def rounds_per_epoch(self) -> int:
        """Whole rounds an epoch holds; the few samples left over (< quota) sit out that epoch only."""
        return self.total_samples // self.quota

    @cached_property
    def lane_len(self) -> int:
        return self.rounds_per_epoch * self.chunk

    @cached_property
    def epoch_len(self) -> int:
        return self.rounds_per_epoch * self.quota

    def locate(self, p: int) -> tuple[int, int, int]:
        """(epoch, lane, index in the lane) of this set's sample position p."""
        epoch, rest = divmod(p, self.epoch_len)
        t, o = divmod(rest, self.quota)
        lane, i = divmod(o, self.chunk)
        return epoch, lane, t * self.chunk + i

    def shard_order(self, epoch: int) -> list[tuple[int, str, int]]:
        """(first sample id, path, samples) of each shard, in the epoch's reading order."""
        starts = np.concatenate([[0], np.cumsum([n for _, n in self.shards])[:-1]]).tolist()
        order = rng(self.seed, epoch, 0x5A4D).permutation(len(self.shards)) if self.shuffle else range(len(self.shards))
        return [(int(starts[i]), *self.shards[i]) for i in order]

    def lane_segments(self, epoch: int, lane: int) -> list[Segment]:
        """The (shard, start, stop) pieces of one lane of one epoch, in reading order."""
        lo = lane * self.lane_len
        hi = lo + self.lane_len
        out, pos = [], 0
        for first_id, name, n in self.shard_order(epoch):
            a, b = max(lo, pos), min(hi, pos + n)
            if a < b:
                out.append(Segment(name, a - pos, b - pos, first_id + a - pos))
            pos += n
            if pos >= hi:
                break
        return out

    def block_order(self, epoch: int, lane: int, block: int, size: int) -> np.ndarray:
        """The reading order inside one shuffle block of a lane."""
        return rng(self.seed, epoch, lane, block, 0xB10C).permutation(size) if self.shuffle else np.arange(size)


@dataclass(frozen=True)
class Deal:
    """How a run's samples are dealt to one rank: its k-th micro batch since the resume point holds
    samples [first(k), first(k) + micro_batch). Global batch g is samples [start + g G, start + (g+1) G),
    G = world_size x accum x micro_batch; its part j = rank x accum + micro step is rank `rank`'s
    micro step `micro step`. Data loader workers take micro batches k = worker, worker + W, ...
    (torch's round-robin), so any worker count gives the same batches."""

    start: int  # samples the whole run had consumed at the resume point
    micro_batch: int
    accum: int = 1
    rank: int = 0
    world_size: int = 1

    @property
    def global_batch(self) -> int:
        return self.world_size * self.accum * self.micro_batch

    def part(self, k: int) -> int:
        """The index of micro batch k within its global batch (what masking and dropout are keyed by)."""
        return self.rank * self.accum + k % self.accum

    def first(self, k: int) -> int:
        g = k // self.accum
        return self.start + g * self.global_batch + self.part(k) * self.micro_batch


__all__ = ["Deal", "MAX_LANES", "Segment", "SetOrder", "lanes_for", "quotas", "rng"]
