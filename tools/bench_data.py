"""Benchmarks of the data path on a real genome: sharding speed, shard size, tokenization, loader.

    python tools/bench_data.py                       # E. coli from the shared data, 3 repeats
    python tools/bench_data.py --fasta g.fa.gz --repeats 5 --json out.json

Per-core figures are work per CPU-second of this (single-threaded) process, the median of the
repeats. Sharding's time is also split by stage, so that a miss says where the time goes.
Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from megadna.cli.args import parser
from megadna.data.genome import WindowConfig, iter_windows, read_fasta
from megadna.data.shard_writer import ShardConfig, _ShardSink, _shuffled, write_shards
from megadna.data.shards import tar_member
from megadna.data.stream import StreamConfig, WindowStream
from megadna.experiments.bench import interleave, machine, markdown_table, median, timed, verdict
from megadna.paths import shared_data_dir
from megadna.tokenizers import get_tokenizer


def bench_sharding(fasta: Path, tmp: Path, repeats: int) -> dict:
    """write_shards end to end (CPU and wall), then its time split by stage."""
    wcfg = WindowConfig(window=510, stride=510)
    bp = sum(len(c) for c in read_fasta(fasta))
    n = {"runs": 0}

    def run():
        n["runs"] += 1
        write_shards([fasta], tmp / f"run{n['runs']}", wcfg)
        return bp

    t = [timed(run) for _ in range(repeats)]

    # Where write_shards' time goes: each stage timed alone (CPU s of this process), medians.
    def cpu(fn):
        return median(timed(fn).cpu_s for _ in range(repeats))

    stages = {"gunzip + parse FASTA (read_fasta)": cpu(lambda: sum(len(c) for c in read_fasta(fasta)))}
    stages["tile into Window objects (iter_windows)"] = cpu(lambda: sum(1 for _ in iter_windows([fasta], wcfg))) - stages["gunzip + parse FASTA (read_fasta)"]
    windows = list(iter_windows([fasta], wcfg))
    # A buffer smaller than the genome, so that the per-window draw (the steady state) is what is timed.
    stages["write-shuffle buffer (_shuffled, 1000-window buffer)"] = cpu(lambda: sum(1 for _ in _shuffled(iter(windows), 1000, 0)))
    k = {"n": 0}

    def sink(compress: bool):
        k["n"] += 1
        d = tmp / f"sink{k['n']}"
        d.mkdir()
        out = _ShardSink(d, ShardConfig(compress=compress, samples_per_shard=len(windows)))
        for w in windows:
            out.write(w)
        return out.finish()["shards"]

    uncompressed = cpu(lambda: len(sink(False)))
    members = [(b"w%010d.seq.txt" % i, w.seq.encode()) for i, w in enumerate(windows)] + [(b"w%010d.meta.json" % i, b"{}" * 60) for i in range(len(windows))]
    stages["tar members: tar_member (2 per window)"] = cpu(lambda: sum(len(tar_member(a, b)) for a, b in members))
    stages["meta JSON, buffering, .tar write + sha256 (_ShardSink, compress=False, less tar_member)"] = uncompressed - stages["tar members: tar_member (2 per window)"]
    raw = (tmp / f"sink{k['n']}" / sink(False)[0]["name"]).read_bytes()
    levels = {level: {"cpu_s": cpu(lambda: len(gzip.compress(raw, compresslevel=level, mtime=0))), "bytes_per_bp": len(gzip.compress(raw, compresslevel=level, mtime=0)) / len(windows) / 510} for level in (1, 6)}  # noqa: B023 (called at once, inside the loop)
    stages["gzip level 1 of the tar stream"] = levels[1]["cpu_s"]
    stages["sha256 of the FASTA (manifest)"] = cpu(lambda: len(hashlib.sha256(fasta.read_bytes()).digest()))
    return {
        "bp": bp,
        "windows": len(windows),
        "mbp_per_cpu_s": median(x.per_cpu_s for x in t) / 1e6,
        "mbp_per_wall_s": median(x.per_wall_s for x in t) / 1e6,
        "cpu_s": median(x.cpu_s for x in t),
        "stages_cpu_s": stages,
        "gzip_levels": levels,
        "tar_bytes_per_bp": len(raw) / len(windows) / 510,
    }


def bench_bytes_per_bp(fasta: Path, tmp: Path) -> dict:
    out = {}
    for window in (510, 1000):
        m = write_shards([fasta], tmp / f"size{window}", WindowConfig(window=window, stride=window), overwrite=True)
        out[window] = {"bytes": m["totals"]["bytes"], "bp": m["totals"]["bp"], "bytes_per_bp": m["totals"]["bytes"] / m["totals"]["bp"]}
    return out


def bench_tokenize(fasta: Path, repeats: int, batch: int = 4096) -> dict:
    tok = get_tokenizer("kmer6")
    seqs = [w.seq.encode() for w in iter_windows([fasta], WindowConfig(window=510, stride=510))][:batch]
    n_tokens = len(seqs) * tok.num_tokens(510)  # 505 k-mers per window; [CLS]/[SEP]/[PAD] not counted
    as_str = [s.decode() for s in seqs]
    t = interleave({"bytes": lambda: tok.encode_batch(seqs, 512) and n_tokens, "str": lambda: tok.encode_batch(as_str, 512) and n_tokens}, repeats * 3)
    return {"batch": len(seqs), "mtok_per_cpu_s_bytes": median(x.per_cpu_s for x in t["bytes"]) / 1e6, "mtok_per_cpu_s_str": median(x.per_cpu_s for x in t["str"]) / 1e6}


def bench_loader(shard_dir: Path, repeats: int, micro_batch: int = 8) -> dict:
    """Shards -> tokenized batches in this process (num_workers=0 is what one DataLoader worker does).
    max_tokens 507 and reverse_complement 0.5 as the trainer uses them for 510-bp windows. Each repeat
    times one whole epoch from an epoch boundary: a lane reads a shuffle block (2048 windows) at once,
    so a shorter stretch could be served from blocks read before the clock started."""
    tok = get_tokenizer("kmer6")
    out = {}
    for rc in (0.5, 0.0):
        stream = WindowStream(shard_dir, StreamConfig(micro_batch=micro_batch, num_workers=0, reverse_complement=rc), tokenizer=tok, max_tokens=507)
        batches = stream.batches()
        n_batches = stream.batches_per_epoch
        for _ in range(n_batches):  # the first epoch: imports, first opens
            next(batches)

        def run():
            return sum(next(batches)["input_ids"].numel() for _ in range(n_batches))  # noqa: B023 (run() is timed inside this iteration)

        t = [timed(run) for _ in range(repeats)]
        out[f"rc{rc}"] = median(x.per_cpu_s for x in t) / 1e6
    raw = WindowStream(shard_dir, StreamConfig(micro_batch=micro_batch, num_workers=0, reverse_complement=0.0))

    def endless():
        epoch = 0
        while True:
            for lane in range(raw.sets[0].order.lanes):
                yield from raw.lane_samples(0, epoch, lane)
            epoch += 1

    samples = endless()
    next(samples)
    read = median(timed(lambda: sum(1 for _ in range(n_batches * micro_batch) if next(samples))).per_cpu_s for _ in range(repeats))
    out["read_only_windows_per_cpu_s"] = read
    out["micro_batch"] = micro_batch
    return out


def main(argv=None) -> int:
    p = parser("tools/bench_data.py", __doc__)
    default = (shared_data_dir() or Path(".")) / "genomes" / "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    p.add_argument("--fasta", type=Path, default=default, help="a gzipped FASTA (default: E. coli K-12, 4.6 Mbp)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not args.fasta.is_file():
        print(f"error: {args.fasta}: no such FASTA; pass --fasta or set MEGADNA_SHARED_DATA", file=sys.stderr)
        return 2
    info = machine()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        shard = bench_sharding(args.fasta, tmp, args.repeats)
        size = bench_bytes_per_bp(args.fasta, tmp)
        tokenize = bench_tokenize(args.fasta, args.repeats)
        loader = bench_loader(tmp / "run1", args.repeats)  # run1: write_shards as it is
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {"machine": info, "fasta": str(args.fasta), "sharding": shard, "bytes_per_bp": size, "tokenize": tokenize, "loader": loader, "seconds": time.perf_counter() - t0}

    rows = [
        {"benchmark": "1. sharding FASTA.gz -> .tar.gz (510/510), write_shards", "figure": f"{shard['mbp_per_cpu_s']:.2f} Mbp/s per core ({shard['mbp_per_wall_s']:.2f} wall)", "target": ">= 20", "met?": verdict(shard["mbp_per_cpu_s"], 20)},
        *({"benchmark": f"2. shard bytes per bp, {w}-bp windows", "figure": f"{s['bytes_per_bp']:.3f}", "target": "<= 1.3", "met?": verdict(s["bytes_per_bp"], 1.3, higher_is_better=False)} for w, s in size.items()),
        {"benchmark": f"3. kmer6 encode_batch, {tokenize['batch']} x 510 bp (bytes / str)", "figure": f"{tokenize['mtok_per_cpu_s_bytes']:.0f} / {tokenize['mtok_per_cpu_s_str']:.0f} M tok/s per core", "target": ">= 20 M", "met?": verdict(min(tokenize["mtok_per_cpu_s_bytes"], tokenize["mtok_per_cpu_s_str"]), 20)},
        {"benchmark": f"4. WindowStream -> tokenized batches (micro batch {loader['micro_batch']}, RC 0.5 / 0)", "figure": f"{loader['rc0.5']:.2f} / {loader['rc0.0']:.2f} M tok/s per worker", "target": ">= 2 M", "met?": verdict(min(loader["rc0.5"], loader["rc0.0"]), 2)},
    ]
    print(json.dumps(info))
    print(markdown_table(rows))
    total = sum(shard["stages_cpu_s"].values())
    print("\nwrite_shards, CPU s by stage (each timed alone; %.2f s in all vs %.2f s end to end):" % (total, shard["cpu_s"]))
    print(markdown_table([{"stage": k, "CPU s": f"{v:.3f}", "share": f"{v / total:.0%}", "Mbp/s if alone": f"{shard['bp'] / v / 1e6:.0f}" if v > 0 else "-"} for k, v in shard["stages_cpu_s"].items()]))
    print("gzip levels: " + ", ".join(f"level {k}: {v['cpu_s']:.3f} CPU s, {v['bytes_per_bp']:.3f} bytes/bp" for k, v in shard["gzip_levels"].items()) + f"; uncompressed tar {shard['tar_bytes_per_bp']:.2f} bytes/bp")
    print(f"loader reading shards only (no tokenizer, no RC): {loader['read_only_windows_per_cpu_s'] * 505 / 1e6:.1f} M tok/s-equivalent; total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
