"""FASTA(.gz) -> WebDataset tar shards of genome windows, with a manifest.

    python tools/make_shards.py --fasta genome.fa.gz --out shards/ --window 510 --stride 510 --val_contigs chr21
    python tools/make_shards.py --out shards/ --verify      # sizes and sha256 against the manifest

Exit codes: 0 done (or every shard verified), 1 --verify found damaged or missing shards, 2 bad input.
A failed run leaves --out as it was (see docs/DATA.md, "Write, then rename").
"""

from __future__ import annotations

import argparse
import json
import time

from megadna.cli.args import add_config_arguments, config_from_args, parser
from megadna.cli.common import entry_point
from megadna.data.genome import WindowConfig
from megadna.data.shard_writer import ShardConfig, write_shards
from megadna.data.shards import MANIFEST, verify_shards


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna make-shards", __doc__)
    p.add_argument("--fasta", nargs="+", help="FASTA or gzipped FASTA files (many genomes: list them all)")
    p.add_argument("--out", required=True, help="output shard directory (must be new or empty unless --overwrite); written beside, then renamed into place")
    p.add_argument("--overwrite", action="store_true", help="replace the shard set in --out, once the new one is complete (a failed run keeps the old one)")
    p.add_argument("--verify", action="store_true", help="only check the shards in --out against their manifest")
    # WindowConfig's fields carry no help metadata (and val_contigs is a tuple), so its flags are spelled here.
    w = p.add_argument_group("windows (megadna.data.genome.WindowConfig)")
    w.add_argument("--window", type=int, default=WindowConfig.window, help="window length in bp")
    w.add_argument("--stride", type=int, default=WindowConfig.stride, help="step between window starts in bp")
    w.add_argument("--max_n_fraction", type=float, default=WindowConfig.max_n_fraction, help="drop windows with a larger share of N")
    w.add_argument("--val_contigs", default="", help="comma-separated contig names held out whole for validation; FILE:NAME picks one file's contig (a NAME in several files is an error)")
    w.add_argument("--val_fraction", type=float, default=WindowConfig.val_fraction, help="else: last fraction of each contig held out")
    w.add_argument("--keep_softmask", action="store_true", help="record each window's share of lower-case (repeat) bases")
    s = p.add_argument_group("shards (megadna.data.shard_writer.ShardConfig)")
    add_config_arguments(s, ShardConfig, exclude=("compress",))
    s.add_argument("--no_compress", action="store_true", help="write .tar instead of .tar.gz")
    return p


def _verify(out: str) -> int:
    problems = verify_shards(out)
    print("\n".join(problems) or f"{out}: every shard matches the manifest")
    return 1 if problems else 0


def _summary(m: dict, seconds: float) -> str:
    lines = [f"{split}: {s['windows']} windows, {s['bp'] / 1e6:.2f} Mbp in {len(s['shards'])} shard(s)" for split, s in m["splits"].items()]
    src_bp = m["window_stats"].get("bp_read") or m["totals"]["bp"]
    dropped = {k: v for k, v in m["window_stats"].items() if "drop" in k or "short" in k}
    lines.append(f"{m['totals']['bytes'] / max(1, m['totals']['bp']):.3f} bytes of shards per bp; {src_bp / 1e6 / seconds:.1f} Mbp/s; dropped: {json.dumps(dropped)}")
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.verify:
        return _verify(args.out)
    if not args.fasta:
        p.error("--fasta is required (unless --verify)")
    window_cfg = config_from_args(WindowConfig, args, val_contigs=tuple(c for c in args.val_contigs.split(",") if c))
    shard_cfg = config_from_args(ShardConfig, args, compress=not args.no_compress)
    t0 = time.perf_counter()
    m = write_shards(args.fasta, args.out, window_cfg, shard_cfg, overwrite=args.overwrite)
    print(_summary(m, time.perf_counter() - t0))
    print(f"manifest: {args.out}/{MANIFEST}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
