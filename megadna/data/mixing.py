"""Weighted mixing of several shard sets (`--data human=0.6:shards/hg38,mouse=0.2:shards/mm10,...`).

    --data "human=0.6:shards/hg38,mouse=0.2:shards/mm10,plants=0.2:https://host/plants"
    --data mix.json          # {"sources": [{"name": "human", "weight": 0.6, "data": "shards/hg38"}, ...]}

The mental model: each source is its own shard set, read by its own `WindowStream` with its own data
position. A micro batch comes from one source. Which one is a pure function of its place in the run:
one fixed cycle of sources, the smooth weighted round-robin of the weights (in thousandths, reduced:
0.7/0.3 is a cycle of 10), in which every stretch of consecutive places holds each source in its
share to within about one batch (at most 1.33 for 5:1:1). Rank r reads the cycle from its own offset, r x cycle / world_size: its
batch b is place (b + offset) of the cycle. So each rank's own share follows the weights to within about one
batch at every step, and at one step the ranks sit at different places of the cycle, so a global batch
mixes sources. A source's position is the number of earlier batches of this rank that came from it:
the run's data position stays one integer (batches consumed per rank) and a resume is exact.

With more than one DataLoader worker, a worker serves every num_workers-th batch of the rank, which
may be any source's batch of any of its slots: each worker reads what it needs of every slot of its
rank (reading, and downloading for URL sources, grows with num_workers; tokenizing does not). Every source must have the same window
length (one sequence length for the model).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from megadna.data.remote import as_location
from megadna.errors import InputError

RESOLUTION = 1000  # weights are used in thousandths
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Source:
    name: str
    weight: float
    location: str  # a directory or a URL form (megadna.data.remote)


def is_mix(spec: str) -> bool:
    """Whether --data names a mixture (NAME=WEIGHT:LOCATION,... or a .json spec) rather than one set."""
    return bool(spec) and (spec.endswith(".json") or re.match(r"^[A-Za-z0-9_.-]+=[0-9.eE+-]+:", spec) is not None)


def parse_mix(spec: str) -> list[Source]:
    """The sources of a mixture spec; one error naming the spec and the part that is wrong."""
    if spec.endswith(".json"):
        from megadna.jsonfile import read_json

        raw = read_json(spec, "mixing spec")
        items = raw.get("sources") if isinstance(raw, dict) else None
        if not isinstance(items, list):
            raise InputError(f"{spec}: a mixing spec is {{\"sources\": [{{\"name\", \"weight\", \"data\"}}, ...]}}")
        parts = [(i.get("name"), i.get("weight"), i.get("data")) if isinstance(i, dict) else (None, None, None) for i in items]
    else:
        parts = []
        for piece in spec.split(","):
            m = re.fullmatch(r"([^=]+)=([^:]+):(.+)", piece.strip())
            if not m:
                raise InputError(f"--data {spec!r}: {piece!r} is not NAME=WEIGHT:LOCATION (a location holding a comma: use a .json spec)")
            parts.append((m.group(1), m.group(2), m.group(3)))
    sources = []
    for name, weight, location in parts:
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise InputError(f"--data {spec!r}: source {name!r} has weight {weight!r}, not a number") from None
        if not isinstance(name, str) or not _NAME.fullmatch(name) or not isinstance(location, str) or not location:
            raise InputError(f"--data {spec!r}: each source needs a name (letters, digits, _ . -) and a location")
        if not (w > 0 and math.isfinite(w)):
            raise InputError(f"--data {spec!r}: source {name!r} has weight {w}; weights must be finite and > 0")
        sources.append(Source(name, w, location))
    if len(sources) < 2 or len({s.name for s in sources}) != len(sources):
        raise InputError(f"--data {spec!r}: a mixture names at least two sources, each name once")
    return sources


def schedule(weights: list[float]) -> np.ndarray:
    """One cycle of the source sequence: smooth weighted round-robin over the weights in thousandths,
    reduced by their common divisor (the cycle is their sum). Every prefix holds each source within
    one of its share."""
    ints = [max(1, round(RESOLUTION * w / sum(weights))) for w in weights]
    g = math.gcd(*ints)
    ints = [i // g for i in ints]  # the shortest cycle: 0.7/0.3 -> 7/3, so ranks' offsets fall at different places
    current, out = [0] * len(ints), []
    for _ in range(sum(ints)):
        current = [c + w for c, w in zip(current, ints)]
        pick = int(np.argmax(current))
        current[pick] -= sum(ints)
        out.append(pick)
    return np.asarray(out, dtype=np.int64)


class _Plan:
    """What the trainer and the DataLoader read of a stream's plan."""

    def __init__(self, num_workers: int, batches_per_rank: int):
        self.num_workers, self.batches_per_rank = num_workers, batches_per_rank


class MixedStream:
    """Batches of several WindowStreams interleaved by weight; the WindowStream interface the trainer
    and `torch_dataset` use (plan, worker_start, batches, start_batch, window_bp)."""

    def __init__(self, sources: list[Source], cfg, *, rank: int = 0, world_size: int = 1, tokenizer=None, max_tokens: int | None = None,
                 start_batch: int = 0):
        from megadna.data.stream import WindowStream

        self.sources, self.cfg, self.rank, self.world_size, self.start_batch = sources, cfg, rank, world_size, start_batch
        self.streams = [WindowStream(as_location(s.location), cfg, rank=rank, world_size=world_size, tokenizer=tokenizer, max_tokens=max_tokens)
                        for s in sources]
        lengths = {s.name: st.window_bp for s, st in zip(sources, self.streams)}
        if len(set(lengths.values())) > 1:
            raise InputError(f"--data: the sources' windows differ ({', '.join(f'{k} {v} bp' for k, v in lengths.items())}); "
                             "make every shard set with the same --window")
        self.window_bp = self.streams[0].window_bp
        self.period = schedule([s.weight for s in sources])
        W = max(1, cfg.num_workers)
        self.plan = _Plan(W, min(st.plan.batches_per_rank for st in self.streams))

    def source_of(self, b: np.ndarray | int) -> np.ndarray:
        """The source index of this rank's batch(es) b."""
        offset = len(self.period) * self.rank // self.world_size
        return self.period[(np.asarray(b) + offset) % len(self.period)]

    def source_position(self, b: int) -> np.ndarray:
        """How many of this rank's batches 0..b-1 came from each source: each source stream's position at b
        (whole cycles times the cycle's counts, plus the part of the last one)."""
        k = len(self.sources)
        whole, rest = divmod(int(b), len(self.period))
        per_cycle = np.bincount(self.period, minlength=k)
        return whole * per_cycle + np.bincount(self.source_of(np.arange(whole * len(self.period), b, dtype=np.int64)), minlength=k)

    def worker_start(self, dataloader_worker: int) -> tuple[int, int]:
        W = self.plan.num_workers
        logical = (dataloader_worker + self.start_batch) % W
        first_global = self.start_batch + ((logical - self.start_batch) % W)
        return logical, first_global // W

    def batches(self, logical_worker: int, local_start: int) -> Iterator[dict]:
        """Endless batches b = local * W + logical_worker of this rank, each from its source."""
        W = self.plan.num_workers
        first = local_start * W + logical_worker
        pos = self.source_position(first)
        readers: dict[tuple[int, int], list] = {}  # (source, its logical worker) -> [next local index, raw batches]
        for b in itertools.count(first, W):
            s = int(self.source_of(b))
            k = int(pos[s])  # this batch is source s's batch k of this rank
            # the positions of every source advance over the W batches until this worker's next one
            pos += np.bincount(self.source_of(np.arange(b, b + W)), minlength=len(self.sources))
            stream = self.streams[s]
            Ws = stream.plan.num_workers
            lw, local = k % Ws, k // Ws
            key = (s, lw)
            reader = readers.get(key)
            if reader is None or reader[0] > local:
                reader = [local, stream.raw_batches(lw, local)]
                readers[key] = reader
            while reader[0] < local:  # batches of this slot served by other workers: read, not tokenized
                next(reader[1])
                reader[0] += 1
            raw = next(reader[1])
            reader[0] += 1
            out = stream.collate(*raw, global_batch=b)
            out["source"] = s
            yield out


def source_shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


__all__ = ["MixedStream", "Source", "is_mix", "parse_mix", "schedule", "source_shares"]
