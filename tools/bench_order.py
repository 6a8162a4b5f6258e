"""Region mixing of the global sample order, measured: contigs and 1-Mbp regions per global batch.

    python tools/bench_order.py                         # 200 Mbp over 20 contigs, global batch 256
    python tools/bench_order.py --contigs 20 --contig_mbp 10 --batches 200 --json out.json

Writes a random genome and its shards (1,000-bp windows, 10,000 per shard, the writer's default
20,000-window shuffle buffer) into a temporary directory, then reads the first global batches in the
order of the lanes (megadna's order: up to 64 places a batch) and in the order megadna had before
them, a contiguous slot per rank (lanes = ranks: 1 and 8). Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from megadna.cli.args import parser
from megadna.data.genome import WindowConfig
from megadna.data.order import MAX_LANES
from megadna.data.shard_writer import ShardConfig, write_shards
from megadna.experiments.bench import machine, markdown_table
from megadna.experiments.order_mixing import spread, write_random_genome


def main(argv=None) -> int:
    p = parser("tools/bench_order.py", __doc__)
    p.add_argument("--contigs", type=int, default=20)
    p.add_argument("--contig_mbp", type=float, default=10.0)
    p.add_argument("--window", type=int, default=1000)
    p.add_argument("--global_batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=200, help="global batches measured")
    p.add_argument("--region_mbp", type=float, default=1.0)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_order_"))
    try:
        fasta = write_random_genome(tmp / "genome.fa.gz", args.contigs, int(args.contig_mbp * 1e6))
        m = write_shards([fasta], tmp / "shards", WindowConfig(window=args.window, stride=args.window, val_fraction=0.0), ShardConfig(samples_per_shard=10_000))
        t_write = time.perf_counter() - t0
        region_bp = int(args.region_mbp * 1e6)
        rows, results = [], {}
        for label, lanes in (("before: 1 rank (one slot)", 1), ("before: 8 ranks (a slot each)", 8), (f"global order (up to {MAX_LANES} lanes)", MAX_LANES)):
            r = spread(tmp / "shards", global_batch=args.global_batch, max_lanes=lanes, n_batches=args.batches, region_bp=region_bp)
            results[label] = r
            rows.append({"order": label, "lanes": r["lanes"], "contigs per batch (mean / min)": f"{r['contigs_mean']:.1f} / {r['contigs_min']}",
                         "windows from the batch's top contig": f"{r['top_contig_share']:.0%}",
                         f"{args.region_mbp:g}-Mbp regions per batch (mean / min / max)": f"{r['regions_mean']:.1f} / {r['regions_min']} / {r['regions_max']}",
                         f"regions seen in {args.batches} batches": r["regions_seen"]})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    print(json.dumps(info))
    print(f"{args.contigs} contigs x {args.contig_mbp:g} Mbp, {m['totals']['windows']} windows of "
          f"{args.window} bp in {len(m['splits']['train']['shards'])} shards (written in {t_write:.0f} s); global batch {args.global_batch}, first {args.batches} batches")
    print(markdown_table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
