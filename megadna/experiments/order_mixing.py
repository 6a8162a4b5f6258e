"""How many places of the genome a global batch draws from: the global order's lanes against the
reading order megadna had before them (one contiguous slot per rank). tools/bench_order.py runs it.

A shard holds windows of about one region (the writer's shuffle buffer spans ~write_shuffle windows of
one chromosome), so reading shards one after the other gives a rank hundreds of steps from one region.
The measures, for each global batch: the distinct contigs, the share of its windows from its most
frequent contig, and the distinct `region_bp` regions (contig, start // region_bp) of its windows.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np

from megadna.data.stream import StreamConfig, WindowStream


def write_random_genome(path: Path, n_contigs: int, contig_bp: int, seed: int = 0) -> Path:
    """A gzipped FASTA of uniform random bases (the content does not matter here, the layout does)."""
    rng = np.random.default_rng(seed)
    with gzip.open(path, "wb", compresslevel=1) as f:
        for c in range(n_contigs):
            f.write(b">chr%d\n" % (c + 1))
            for lo in range(0, contig_bp, 10_000_000):
                codes = rng.integers(0, 4, min(10_000_000, contig_bp - lo), dtype=np.uint8)
                f.write(np.frombuffer(b"ACGT", np.uint8)[codes].tobytes())
            f.write(b"\n")
    return path


def spread(shard_dir: Path, *, global_batch: int, max_lanes: int, n_batches: int, region_bp: int, seed: int = 0) -> dict:
    """Distinct contigs and regions per global batch over the run's first n_batches global batches."""
    stream = WindowStream(shard_dir, StreamConfig(micro_batch=global_batch, num_workers=0, seed=seed, max_lanes=max_lanes))
    lanes: dict = {}
    contigs, top, regions, seen = [], [], [], set()
    for g in range(n_batches):
        metas = [m for _, m, _, _, _ in stream.samples(g * global_batch, global_batch, lanes, with_meta=True)]
        counts = Counter(m["contig"] for m in metas)
        contigs.append(len(counts))
        top.append(max(counts.values()) / len(metas))
        here = {(m["contig"], m["start"] // region_bp) for m in metas}
        regions.append(len(here))
        seen |= here
    c, r = np.asarray(contigs), np.asarray(regions)
    return {"lanes": stream.sets[0].order.lanes, "contigs_mean": float(c.mean()), "contigs_min": int(c.min()), "top_contig_share": float(np.mean(top)),
            "regions_mean": float(r.mean()),
            "regions_min": int(r.min()), "regions_max": int(r.max()), "regions_seen": len(seen)}


__all__ = ["spread", "write_random_genome"]
