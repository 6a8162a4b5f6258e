"""Weighted mixing of several shard sets (`--data human=0.6:shards/hg38,mouse=0.2:shards/mm10,...`).

    --data "human=0.6:shards/hg38,mouse=0.2:shards/mm10,plants=0.2:https://host/plants"
    --data mix.json          # {"sources": [{"name": "human", "weight": 0.6, "data": "shards/hg38"}, ...]}

The mental model (megadna.data.order): every global batch of the run's first size holds a fixed quota
of each source, the weights by largest remainder (0.7/0.3 in a global batch of 256: 179 and 77), read
from that source's own lanes. So every global batch follows the weights to within one sample per source,
the shares do not depend on the world size or workers, and the run's data position stays one integer
(samples consumed). Every source must have the same window length (one sequence length for the model).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from megadna.errors import InputError

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


def source_shares(counts: dict[str, int]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: (v / total if total else 0.0) for k, v in counts.items()}


__all__ = ["Source", "is_mix", "parse_mix", "source_shares"]
