"""Benchmarks of the data path on a real genome: sharding speed, shard size, tokenization, loader.

    python tools/bench_data.py                       # E. coli from the shared data, 3 repeats
    python tools/bench_data.py --fasta g.fa.gz --repeats 5 --json out.json

Per-core figures are work per CPU-second of this (single-threaded) process, the median of the
repeats. Sharding is also timed against a prototype writer (`FastTarSink` below: the same bytes,
tar headers from a template instead of Python's tarfile), interleaved in this process, and the
time is split by stage so that a miss says where the time goes. Results: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

from megadna import genome
from megadna.bench import interleave, machine, markdown_table, median, median_ratio, timed, verdict
from megadna.genome import WindowConfig, iter_windows, read_fasta
from megadna.paths import shared_data_dir
from megadna.shards import ShardConfig, StreamConfig, WindowStream, _HashingFile, _shuffled, _ShardSink, write_shards
from megadna.tokenizers import get_tokenizer

# --------------------------------------------------------------------------------------------------
# Prototype: a tar writer with the bytes of webdataset.TarWriter + tarfile ("w|", PAX format), at a
# fraction of the cost. tarfile builds each 512-byte header field by field through a TarInfo copy;
# here one template header is patched (name, size, checksum), and a shard's members go to gzip in
# ~1 MB writes instead of 10 kB ones.
# --------------------------------------------------------------------------------------------------

_BLOCK, _RECORD = 512, 20 * 512  # tar block; tarfile pads the archive to a whole record (tar -b20)


def _template_header() -> bytes:
    ti = tarfile.TarInfo("")
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = 0, 0, 0o444, "bigdata", "bigdata"  # webdataset's
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


_T = _template_header()
# The header is name[0:100] | mode..mtime [100:124]... with size at [124:136] and the checksum at
# [148:156]. The checksum is the byte sum of the header with its own field as 8 spaces, so it is the
# template's constant part plus the sums of the two fields that change (name, size).
_T_MODE, _T_MTIME, _T_REST = _T[100:124], _T[136:148], _T[156:]
_T_SUM = sum(_T_MODE) + sum(_T_MTIME) + 8 * ord(" ") + sum(_T_REST)


def tar_member(name: bytes, data: bytes) -> bytes:
    """Header + data + padding of one regular-file member, byte for byte as tarfile writes it for
    webdataset (ASCII name of at most 100 bytes, size under 8 GiB: the only members shards have)."""
    size = b"%011o\x00" % len(data)
    checksum = _T_SUM + sum(name) + sum(size)
    return b"".join((name, bytes(100 - len(name)), _T_MODE, size, _T_MTIME, b"%06o\x00 " % checksum, _T_REST, data, bytes(-len(data) % _BLOCK)))


class _MetaJson:
    """json.dumps(meta).encode() of a window's meta, with the per-contig part formatted once."""

    def __init__(self):
        self._prefix: dict = {}

    def __call__(self, w) -> bytes:
        key = (w.contig, w.strand, w.source)
        fmt = self._prefix.get(key)
        if fmt is None:
            parts = [json.dumps(x).replace("%", "%%") for x in key]
            fmt = self._prefix[key] = ('{"contig": %s, "start": %%d, "end": %%d, "strand": %s, "source": %s' % tuple(parts)).encode()
        out = fmt % (w.start, w.end)
        if w.softmask_fraction is not None:
            out += b', "softmask_fraction": ' + json.dumps(round(w.softmask_fraction, 4)).encode()
        return out + b"}"


class FastTarSink(_ShardSink):
    """_ShardSink with `tar_member` in place of webdataset.TarWriter; shards are byte-identical."""

    flush_bytes = 1 << 20

    def __init__(self, directory, cfg):
        super().__init__(directory, cfg)
        self._meta = _MetaJson()

    def _open(self):
        suffix = ".tar.gz" if self.cfg.compress else ".tar"
        self._name = f"shard-{len(self.shards):06d}{suffix}"
        self._raw = _HashingFile(self.dir / self._name)
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=self.cfg.compresslevel, mtime=0) if self.cfg.compress else None
        self._writer = self._gz or self._raw
        self._buf, self._buf_bytes, self._offset, self._count = [], 0, 0, 0

    def _put(self, b: bytes):
        self._buf.append(b)
        self._buf_bytes += len(b)
        self._offset += len(b)
        if self._buf_bytes >= self.flush_bytes:
            self._writer.write(b"".join(self._buf))
            self._buf, self._buf_bytes = [], 0

    def write(self, w):
        if self._writer is None:
            self._open()
        key = b"w%010d" % self.windows
        # webdataset writes a sample's members in sorted order: meta.json, then seq.txt.
        self._put(tar_member(key + b".meta.json", self._meta(w)) + tar_member(key + b".seq.txt", w.seq.encode("utf-8")))
        self._count += 1
        self.windows += 1
        self.bp += w.end - w.start
        if self._count >= self.cfg.samples_per_shard:
            self._close()

    def _close(self):
        self._put(b"\x00" * (2 * _BLOCK))  # end of archive, then pad to a whole record
        if self._offset % _RECORD:
            self._put(b"\x00" * (_RECORD - self._offset % _RECORD))
        self._writer.write(b"".join(self._buf))
        if self._gz is not None:
            self._gz.close()
        self._raw.close()
        self.shards.append({"name": self._name, "samples": self._count, "bytes": self._raw.nbytes, "sha256": self._raw.sha256.hexdigest()})
        self._writer = None


class _Unusual(Exception):
    """The block reader met something only read_fasta's line-by-line path handles (or reports)."""


def _block_contigs(path: Path, block: int):
    from megadna.genome import _GZIP_MAGIC, _TO_UPPER_N, _VALID, Contig

    with open(path, "rb") as raw:
        gzipped = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        fh = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        name, seq, seen, tail = None, bytearray(), set(), b""

        def finish():
            if not seq:
                raise _Unusual  # a header without sequence: read_fasta names it
            return Contig(name=name, seq=bytes(seq.translate(_TO_UPPER_N)), source=str(path))

        while True:
            chunk = fh.read(block)
            body = tail + chunk
            if chunk:
                cut = body.rfind(b"\n") + 1
                body, tail = body[:cut], body[cut:]
            if b">" not in body:
                # The common case, a block of sequence lines: one validation and one copy per block.
                bases = body.replace(b"\n", b"")
                if bases and (name is None or bases.translate(None, _VALID)):
                    raise _Unusual  # sequence before a header, a bad byte, CR, a space: line by line
                seq += bases
            else:
                for line in body.split(b"\n"):
                    if line[:1] == b">":
                        if name is not None:
                            yield finish()
                        words = line[1:].decode("utf-8", "strict").split()
                        if not words or words[0] in seen:
                            raise _Unusual
                        name, seq = words[0], bytearray()
                        seen.add(name)
                    elif line:
                        if name is None or line.translate(None, _VALID):
                            raise _Unusual
                        seq += line
            if not chunk:
                break
        if name is None:
            raise _Unusual
        yield finish()


def read_fasta_blocks(path, *, keep_softmask: bool = False, iupac_to_n: bool = True, block: int = 1 << 20):
    """Prototype of a block-wise read_fasta: the same Contigs for a well-formed file, ~1 MB of
    FASTA per Python step instead of one line. Anything unusual (and every error) goes back to
    read_fasta, which re-reads the file line by line and skips the contigs already yielded."""
    from megadna.genome import read_fasta as by_line

    if keep_softmask or not iupac_to_n:
        yield from by_line(path, keep_softmask=keep_softmask, iupac_to_n=iupac_to_n)
        return
    done = 0
    try:
        for contig in _block_contigs(Path(path), block):
            yield contig
            done += 1
    except (_Unusual, UnicodeDecodeError, EOFError, OSError, zlib.error):
        for i, contig in enumerate(by_line(path)):
            if i >= done:
                yield contig


def write_shards_fast(fasta, out, window_cfg, shard_cfg=ShardConfig(), *, block_reader: bool = True):
    """write_shards' windows and shards (no manifest) through FastTarSink (and, with block_reader,
    read_fasta_blocks in place of read_fasta); returns {split: shards} for comparing with a manifest."""
    for split in ("train", "val"):
        (Path(out) / split).mkdir(parents=True, exist_ok=True)
    sinks = {split: FastTarSink(Path(out) / split, shard_cfg) for split in ("train", "val")}
    by_line = genome.read_fasta
    genome.read_fasta = read_fasta_blocks if block_reader else by_line  # iter_windows looks it up here
    try:
        for w in _shuffled(genome.iter_windows([str(f) for f in fasta], window_cfg), shard_cfg.write_shuffle, shard_cfg.seed):
            sinks[w.split].write(w)
    finally:
        genome.read_fasta = by_line
    return {split: sink.finish()["shards"] for split, sink in sinks.items()}


# --------------------------------------------------------------------------------------------------
# The benchmarks
# --------------------------------------------------------------------------------------------------


def bench_sharding(fasta: Path, tmp: Path, repeats: int) -> dict:
    """write_shards vs the prototypes, interleaved; then write_shards' time split by stage."""
    wcfg = WindowConfig(window=510, stride=510)
    bp = sum(len(c) for c in read_fasta(fasta))
    n = {"runs": 0}

    def case(fn):
        def run():
            n["runs"] += 1
            fn(tmp / f"run{n['runs']}")
            return bp
        return run

    t = interleave({
        "ours": case(lambda out: write_shards([fasta], out, wcfg)),
        "proto_tar": case(lambda out: write_shards_fast([fasta], out, wcfg, block_reader=False)),
        "proto_tar_blocks": case(lambda out: write_shards_fast([fasta], out, wcfg, block_reader=True)),
    }, repeats)
    manifest = json.loads((tmp / "run1" / "manifest.json").read_text())
    want = {s: manifest["splits"][s]["shards"] for s in ("train", "val")}
    same = all(write_shards_fast([fasta], tmp / f"check{b}", wcfg, block_reader=b) == want for b in (False, True))

    # Where write_shards' time goes: each stage timed alone (CPU s of this process), medians.
    def cpu(fn):
        return median(timed(fn).cpu_s for _ in range(repeats))

    stages = {"gunzip + parse FASTA (read_fasta)": cpu(lambda: sum(len(c) for c in read_fasta(fasta)))}
    stages["tile into Window objects (iter_windows)"] = cpu(lambda: sum(1 for _ in iter_windows([fasta], wcfg))) - stages["gunzip + parse FASTA (read_fasta)"]
    windows = list(iter_windows([fasta], wcfg))
    # A buffer smaller than the genome, so that the per-window draw (the steady state) is what is timed.
    stages["write-shuffle buffer (_shuffled, 1000-window buffer)"] = cpu(lambda: sum(1 for _ in _shuffled(iter(windows), 1000, 0)))

    import webdataset as wds

    def tar_stream(fast: bool) -> bytes:
        buf = io.BytesIO()
        if fast:
            meta = _MetaJson()
            for i, w in enumerate(windows):
                buf.write(tar_member(b"w%010d.meta.json" % i, meta(w)) + tar_member(b"w%010d.seq.txt" % i, w.seq.encode()))
            return buf.getvalue()
        tw = wds.TarWriter(buf, mtime=0, compress=False)
        for i, w in enumerate(windows):
            tw.write({"__key__": f"w{i:010d}", "seq.txt": w.seq, "meta.json": {"contig": w.contig, "start": w.start, "end": w.end, "strand": w.strand, "source": w.source}})
        tw.tarstream.fileobj.close()  # flush tarfile's stream buffer without closing our BytesIO
        return buf.getvalue()

    stages["tar members + meta JSON (webdataset.TarWriter -> tarfile)"] = cpu(lambda: len(tar_stream(False)))
    raw = tar_stream(False)
    levels = {level: {"cpu_s": cpu(lambda: len(gzip.compress(raw, compresslevel=level, mtime=0))), "bytes_per_bp": len(gzip.compress(raw, compresslevel=level, mtime=0)) / len(windows) / 510} for level in (1, 6)}
    stages["gzip level 1 of the tar stream"] = levels[1]["cpu_s"]
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    stages["sha256 of the shards and of the FASTA"] = cpu(lambda: len(hashlib.sha256(gz).digest()) + len(hashlib.sha256(fasta.read_bytes()).digest()))
    proto_stages = {
        "read_fasta_blocks": cpu(lambda: sum(len(c) for c in read_fasta_blocks(fasta))),
        "tar_member + _MetaJson": cpu(lambda: len(tar_stream(True))),
    }
    return {
        "bp": bp,
        "windows": len(windows),
        "mbp_per_cpu_s": {k: median(x.per_cpu_s for x in v) / 1e6 for k, v in t.items()},
        "mbp_per_wall_s": {k: median(x.per_wall_s for x in v) / 1e6 for k, v in t.items()},
        "speedup_vs_ours": {k: median_ratio(v, t["ours"], cpu=True) for k, v in t.items()},
        "proto_bytes_identical": same,
        "ours_cpu_s": median(x.cpu_s for x in t["ours"]),
        "stages_cpu_s": stages,
        "proto_stages_cpu_s": proto_stages,
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


def bench_loader(shards: Path, repeats: int, micro_batch: int = 8, n_batches: int = 400) -> dict:
    """Shards -> tokenized batches in this process (num_workers=0 is what one DataLoader worker does).
    max_tokens 507 and reverse_complement 0.5 as the trainer uses them for 510-bp windows."""
    tok = get_tokenizer("kmer6")
    out = {}
    for rc in (0.5, 0.0):
        stream = WindowStream(shards, StreamConfig(micro_batch=micro_batch, num_workers=0, reverse_complement=rc), tokenizer=tok, max_tokens=507)
        batches = stream.batches(0, 0)
        next(batches)  # opens the first shard

        def run():
            return sum(next(batches)["input_ids"].numel() for _ in range(n_batches))

        t = [timed(run) for _ in range(repeats)]
        out[f"rc{rc}"] = median(x.per_cpu_s for x in t) / 1e6
    raw = WindowStream(shards, StreamConfig(micro_batch=micro_batch, num_workers=0, reverse_complement=0.0))

    def endless():
        epoch = 0
        while True:
            yield from raw.slot_samples(epoch, 0)
            epoch += 1

    samples = endless()
    next(samples)
    read = median(timed(lambda: sum(1 for _ in range(n_batches * micro_batch) if next(samples))).per_cpu_s for _ in range(repeats))
    out["read_only_windows_per_cpu_s"] = read
    out["micro_batch"] = micro_batch
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = (shared_data_dir() or Path(".")) / "genomes" / "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    p.add_argument("--fasta", type=Path, default=default, help="a gzipped FASTA (default: E. coli K-12, 4.6 Mbp)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not args.fasta.is_file():
        sys.exit(f"{args.fasta}: no such FASTA; pass --fasta or set MEGADNA_SHARED_DATA")
    info = machine()
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench_data_"))
    try:
        shard = bench_sharding(args.fasta, tmp, args.repeats)
        size = bench_bytes_per_bp(args.fasta, tmp)
        tokenize = bench_tokenize(args.fasta, args.repeats)
        loader = bench_loader(tmp / "run1", args.repeats)  # run1: write_shards, the first case
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results = {"machine": info, "fasta": str(args.fasta), "sharding": shard, "bytes_per_bp": size, "tokenize": tokenize, "loader": loader, "seconds": time.perf_counter() - t0}

    mbp, speed = shard["mbp_per_cpu_s"], shard["speedup_vs_ours"]
    rows = [
        {"benchmark": "1. sharding FASTA.gz -> .tar.gz (510/510), write_shards", "figure": f"{mbp['ours']:.2f} Mbp/s per core ({shard['mbp_per_wall_s']['ours']:.2f} wall)", "target": ">= 20", "met?": verdict(mbp["ours"], 20)},
        {"benchmark": "1b. prototype: FastTarSink", "figure": f"{mbp['proto_tar']:.2f} Mbp/s per core ({speed['proto_tar']:.1f}x)", "target": ">= 20", "met?": verdict(mbp["proto_tar"], 20)},
        {"benchmark": "1c. prototype: FastTarSink + read_fasta_blocks", "figure": f"{mbp['proto_tar_blocks']:.2f} Mbp/s per core ({speed['proto_tar_blocks']:.1f}x)", "target": ">= 20", "met?": verdict(mbp["proto_tar_blocks"], 20)},
        *({"benchmark": f"2. shard bytes per bp, {w}-bp windows", "figure": f"{s['bytes_per_bp']:.3f}", "target": "<= 1.3", "met?": verdict(s["bytes_per_bp"], 1.3, higher_is_better=False)} for w, s in size.items()),
        {"benchmark": f"3. kmer6 encode_batch, {tokenize['batch']} x 510 bp (bytes / str)", "figure": f"{tokenize['mtok_per_cpu_s_bytes']:.0f} / {tokenize['mtok_per_cpu_s_str']:.0f} M tok/s per core", "target": ">= 20 M", "met?": verdict(min(tokenize["mtok_per_cpu_s_bytes"], tokenize["mtok_per_cpu_s_str"]), 20)},
        {"benchmark": f"4. WindowStream -> tokenized batches (micro batch {loader['micro_batch']}, RC 0.5 / 0)", "figure": f"{loader['rc0.5']:.2f} / {loader['rc0.0']:.2f} M tok/s per worker", "target": ">= 2 M", "met?": verdict(min(loader["rc0.5"], loader["rc0.0"]), 2)},
    ]
    print(json.dumps(info))
    print(markdown_table(rows))
    print(f"\nprototype shards byte-identical to write_shards' (sha256 of every shard): {shard['proto_bytes_identical']}")
    total = sum(shard["stages_cpu_s"].values())
    print("\nwrite_shards, CPU s by stage (each timed alone; %.2f s in all vs %.2f s end to end):" % (total, shard["ours_cpu_s"]))
    print(markdown_table([{"stage": k, "CPU s": f"{v:.3f}", "share": f"{v / total:.0%}", "Mbp/s if alone": f"{shard['bp'] / v / 1e6:.0f}" if v > 0 else "-"} for k, v in shard["stages_cpu_s"].items()]))
    print("prototype stages (CPU s): " + ", ".join(f"{k} {v:.3f} ({shard['bp'] / v / 1e6:.0f} Mbp/s)" for k, v in shard["proto_stages_cpu_s"].items()))
    print("gzip levels: " + ", ".join(f"level {k}: {v['cpu_s']:.3f} CPU s, {v['bytes_per_bp']:.3f} bytes/bp" for k, v in shard["gzip_levels"].items()) + f"; uncompressed tar {shard['tar_bytes_per_bp']:.2f} bytes/bp")
    print(f"loader reading shards only (no tokenizer, no RC): {loader['read_only_windows_per_cpu_s'] * 505 / 1e6:.1f} M tok/s-equivalent; total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
