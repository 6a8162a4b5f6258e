"""FASTA(.gz) -> WebDataset tar shards of genome windows, with a manifest.

    python tools/make_shards.py --fasta genome.fa.gz --out shards/ --window 510 --stride 510 --val_contigs chr21
"""

from __future__ import annotations

import argparse
import json
import time

from megadna.cli.common import entry_point
from megadna.genome import WindowConfig
from megadna.shards import ShardConfig, verify_shards, write_shards


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", nargs="+", help="FASTA or gzipped FASTA files (many genomes: list them all)")
    p.add_argument("--out", required=True, help="output shard directory (must be new or empty unless --overwrite)")
    p.add_argument("--window", type=int, default=WindowConfig.window, help="window length in bp")
    p.add_argument("--stride", type=int, default=WindowConfig.stride, help="step between window starts in bp")
    p.add_argument("--max_n_fraction", type=float, default=WindowConfig.max_n_fraction, help="drop windows with a larger share of N")
    p.add_argument("--val_contigs", default="", help="comma-separated contig names held out whole for validation")
    p.add_argument("--val_fraction", type=float, default=WindowConfig.val_fraction, help="else: last fraction of each contig held out")
    p.add_argument("--keep_softmask", action="store_true", help="record each window's share of lower-case (repeat) bases")
    p.add_argument("--samples_per_shard", type=int, default=ShardConfig.samples_per_shard)
    p.add_argument("--no_compress", action="store_true", help="write .tar instead of .tar.gz")
    p.add_argument("--write_shuffle", type=int, default=ShardConfig.write_shuffle, help="shuffle buffer while writing (windows)")
    p.add_argument("--seed", type=int, default=ShardConfig.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set in --out")
    p.add_argument("--verify", action="store_true", help="only check the shards in --out against their manifest")
    return p


@entry_point
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.verify:
        problems = verify_shards(args.out)
        print("\n".join(problems) or f"{args.out}: every shard matches the manifest")
        return 1 if problems else 0
    if not args.fasta:
        build_parser().error("--fasta is required (unless --verify)")
    window_cfg = WindowConfig(
        window=args.window,
        stride=args.stride,
        max_n_fraction=args.max_n_fraction,
        val_contigs=tuple(c for c in args.val_contigs.split(",") if c),
        val_fraction=args.val_fraction,
        keep_softmask=args.keep_softmask,
    )
    shard_cfg = ShardConfig(samples_per_shard=args.samples_per_shard, compress=not args.no_compress, write_shuffle=args.write_shuffle, seed=args.seed)
    t0 = time.perf_counter()
    m = write_shards(args.fasta, args.out, window_cfg, shard_cfg, overwrite=args.overwrite)
    dt = time.perf_counter() - t0
    for split, s in m["splits"].items():
        print(f"{split}: {s['windows']} windows, {s['bp'] / 1e6:.2f} Mbp in {len(s['shards'])} shard(s)")
    src_bp = m["window_stats"].get("bp_read") or m["totals"]["bp"]
    print(f"{m['totals']['bytes'] / max(1, m['totals']['bp']):.3f} bytes of shards per bp; {src_bp / 1e6 / dt:.1f} Mbp/s; dropped: {json.dumps({k: v for k, v in m['window_stats'].items() if 'drop' in k or 'short' in k})}")
    print(f"manifest: {args.out}/manifest.json")
    return 0


if __name__ == "__main__":
    main()
