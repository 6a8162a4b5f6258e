"""The shard format: WebDataset tar shards of genome windows, the manifest's checks, and one shard read back.

A shard directory looks like::

    shards/
      manifest.json             # written last: its presence means every shard below is complete
      train/shard-000000.tar.gz # one sample per window: <key>.seq.txt (bases) and <key>.meta.json
      val/shard-000000.tar.gz

Shards hold raw bases, not tokens, so one shard set serves every tokenizer of an ablation.
Nothing in a shard is ever unpickled: readers decode `seq.txt` as ASCII and `meta.json` as JSON.
Writing a shard set: megadna.data.shard_writer. Streaming batches from one: megadna.data.stream.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from pathlib import Path
from typing import Iterator

from megadna.data.remote import fetch, is_url, locate
from megadna.errors import InputError
from megadna.integrity import sha256_file
from megadna.jsonfile import parse_json, read_versioned_json

MANIFEST = "manifest.json"
FORMAT = "megadna-shards/1"
SPLITS = ("train", "val")


# --------------------------------------------------------------------------------------------------
# Tar members
# --------------------------------------------------------------------------------------------------


def _ustar_template() -> bytes:
    """A 512-byte POSIX ustar header with every field fixed but name, size and checksum."""
    h = bytearray(512)
    h[100:108] = b"0000444\x00"  # mode r--r--r--
    h[108:116] = b"0000000\x00"  # uid
    h[116:124] = b"0000000\x00"  # gid
    h[136:148] = b"00000000000\x00"  # mtime 0: shards are byte-reproducible
    h[156:157] = b"0"  # regular file
    h[257:265] = b"ustar\x0000"
    h[265:272] = b"megadna"  # uname
    h[297:304] = b"megadna"  # gname
    return bytes(h)


_USTAR = _ustar_template()
# Only the name (bytes 0-100) and size (124-136) fields vary; they are zero in the template, so the
# header checksum is the template's own (its checksum field counted as spaces) plus their bytes.
_USTAR_SUM = sum(_USTAR) + sum(b" " * 8)
_USTAR_MID, _USTAR_TAIL = _USTAR[100:124], _USTAR[136:148]
_USTAR_END = _USTAR[156:]


def tar_member(name: bytes, data: bytes) -> bytes:
    """One tar member (header + data + padding), the same ustar format tarfile and webdataset read.

    Python's tarfile builds each header field by field (~100 us a member); this fills a template
    (a few us), which is what lets sharding run at tens of Mbp/s per core (docs/BENCHMARKS.md).
    """
    if len(name) > 100:
        raise ValueError(f"tar member name longer than 100 bytes: {name[:40]!r}...")
    size = b"%011o\x00" % len(data)
    chksum = b"%06o\x00 " % (_USTAR_SUM + sum(name) + sum(size))
    return name.ljust(100, b"\0") + _USTAR_MID + size + _USTAR_TAIL + chksum + _USTAR_END + data + bytes(-len(data) % 512)


# --------------------------------------------------------------------------------------------------
# The manifest and its checks
# --------------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """Hex sha256 of a shard (or FASTA) file: the one implementation in megadna.integrity."""
    return sha256_file(path)


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a complete shard set, or a clear error saying why the directory is not one.
    `shard_dir` is a local directory or a URL form (megadna.data.remote).

    Its layout is checked too: splits are train/val, and every shard name is a plain file name that
    stays inside its split's folder (no '/', no '..', no absolute path, no symlink leading out), so a
    manifest can make a reader open nothing outside the shard directory."""
    if is_url(shard_dir):
        where = locate(shard_dir, MANIFEST)
        manifest = read_versioned_json(where, FORMAT, obj=parse_json(fetch(where), where))
        _check_layout(shard_dir, manifest, where)
        return manifest
    d = Path(shard_dir)
    path = d / MANIFEST
    if d.exists() and not d.is_dir():
        raise InputError(f"{d}: a file, not a shard directory")
    if not path.is_file():
        hint = " (shards without a manifest are an unfinished write: run tools/make_shards.py again)" if any(d.glob("*/shard-*")) else ""
        raise InputError(f"{d}: no {MANIFEST}; not a megadna shard directory{hint}")
    manifest = read_versioned_json(path, FORMAT)
    _check_layout(d, manifest, path)
    return manifest


def _check_layout(d: str | Path, manifest: dict, path) -> None:
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not set(SPLITS) <= set(splits):
        raise InputError(f"{path}: no 'splits' object with {' and '.join(SPLITS)}; re-make the shard set (tools/make_shards.py)")
    root = None if is_url(d) else Path(d).resolve()
    for split, info in splits.items():
        if split not in SPLITS:
            raise InputError(f"{path}: unknown split {split!r} (a shard set has {', '.join(SPLITS)}); re-make the shard set")
        shards = info.get("shards") if isinstance(info, dict) else None
        if not isinstance(shards, list):
            raise InputError(f"{path}: splits.{split} has no 'shards' list; re-make the shard set")
        for i, sh in enumerate(shards):
            where = f"{path}: splits.{split}.shards[{i}]"
            name = sh.get("name") if isinstance(sh, dict) else None
            if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
                raise InputError(f"{where}: name {name!r} is not a plain file name in {split}/; a manifest may name only files inside its shard directory")
            if not all(isinstance(sh.get(k), int) and not isinstance(sh.get(k), bool) and sh[k] >= 0 for k in ("samples", "bytes")) or not isinstance(sh.get("sha256"), str):
                raise InputError(f"{where} ({name}): needs integer 'samples' and 'bytes' and a 'sha256' string; re-make the shard set")
            target = None if root is None else (root / split / name).resolve()
            if target is not None and not target.is_relative_to(root):
                raise InputError(f"{where}: {split}/{name} resolves to {target}, outside the shard directory {root}; a manifest may name only files inside it")


def shard_entries(manifest: dict, split: str) -> dict[str, dict]:
    """{"<split>/<name>": the manifest's entry (samples, bytes, sha256)} for one split, in manifest order."""
    return {f"{split}/{sh['name']}": sh for sh in manifest["splits"].get(split, {}).get("shards", [])}


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Check every shard's size and sha256 against the manifest; returns the problems found."""
    d = Path(shard_dir)
    manifest = read_manifest(d)
    problems = []
    for split in manifest["splits"]:
        for rel, sh in shard_entries(manifest, split).items():
            p = d / rel
            if not p.is_file():
                problems.append(f"{p}: missing")
            elif p.stat().st_size != sh["bytes"]:
                problems.append(f"{p}: {p.stat().st_size} bytes, manifest says {sh['bytes']}")
            elif file_sha256(p) != sh["sha256"]:
                problems.append(f"{p}: sha256 differs from the manifest")
    return problems


# --------------------------------------------------------------------------------------------------
# Reading one shard
# --------------------------------------------------------------------------------------------------

_CORRUPT = (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError, json.JSONDecodeError)
_ZERO_BLOCK = bytes(512)
_CHUNK = 1 << 20
_MAX_MEMBER = 1 << 30  # far above any window's bases or metadata: a larger size is a damaged header


class CorruptShard(InputError):
    """A shard that is not what its writer wrote: the message names it, the sample and what is wrong."""

    def __init__(self, path, index, cause):
        at = f" at sample {index}" if index is not None else ""
        check = ("re-make it where it is stored" if is_url(path) else
                 f"check the set with `tools/make_shards.py --out {Path(path).parent.parent} --verify` and re-make it")
        super().__init__(f"{path}: corrupt or truncated{at}: {cause}. {check[0].upper() + check[1:]}")
        self.path, self.index = path, index


class _Damage(Exception):
    """Raised inside the tar reader; iter_shard turns it into CorruptShard with the sample index."""


class _TarStream:
    """Members of a tar stream, checked where Python's tarfile lets damage through: every header's
    checksum (tarfile's stream mode reads a bad header as the end of the archive), the end of the
    archive (two zero blocks, then nothing but zeros up to the end of the file), zero padding after
    each member. `finish` reads to the end of the file, which is where gzip checks its CRC and length."""

    def __init__(self, f):
        self.f, self.buf, self.pos, self.base = f, b"", 0, 0
        self.index = 0  # the sample being read (kept by _samples, for error messages)

    def _need(self, n: int) -> None:
        while len(self.buf) - self.pos < n:
            chunk = self.f.read(max(_CHUNK, n))
            if not chunk:
                raise _Damage(f"the tar stream ends early, at byte {self.base + len(self.buf)} (truncated)")
            self.base += self.pos
            self.buf, self.pos = self.buf[self.pos:] + chunk, 0

    def next_member(self) -> tuple[str, int] | None:
        """(name, size) of the next member, or None at a real end of archive."""
        self._need(512)
        offset, header = self.base + self.pos, self.buf[self.pos : self.pos + 512]
        self.pos += 512
        if header == _ZERO_BLOCK:
            self._need(512)
            if self.buf[self.pos : self.pos + 512] != _ZERO_BLOCK:
                raise _Damage(f"a zero block at byte {offset} of the tar stream is followed by data (a damaged header?)")
            self.pos += 512
            return None
        return _parse_header(header, offset)

    def data(self, size: int, keep: bool) -> bytes | None:
        padded = size + (-size % 512)
        self._need(padded)
        pad = self.buf[self.pos + size : self.pos + padded]
        if pad.count(0) != len(pad):
            raise _Damage(f"non-zero padding after the member at byte {self.base + self.pos} of the tar stream")
        out = self.buf[self.pos : self.pos + size] if keep else None
        self.pos += padded
        return out

    def finish(self) -> None:
        rest = self.buf[self.pos :]
        while True:
            if rest.count(0) != len(rest):
                raise _Damage("data after the end-of-archive blocks")
            rest = self.f.read(_CHUNK)
            if not rest:
                return


def _parse_header(h: bytes, offset: int) -> tuple[str, int]:
    try:
        stored = int(h[148:156].strip(b" \0") or b"-1", 8)
        size = int(h[124:136].strip(b" \0") or b"0", 8)
    except ValueError:
        raise _Damage(f"tar header at byte {offset} of the tar stream has a non-octal checksum or size") from None
    unsigned = sum(h) - sum(h[148:156]) + 256
    # Some writers sum signed bytes; tarfile accepts both.
    if stored != unsigned and stored != unsigned - 2 * sum(b for i, b in enumerate(h) if b > 127 and not 148 <= i < 156):
        raise _Damage(f"tar header at byte {offset} of the tar stream fails its checksum")
    if not 0 <= size <= _MAX_MEMBER:
        raise _Damage(f"tar header at byte {offset} of the tar stream declares {size} bytes, more than any window")
    if h[156:157] not in (b"0", b"\0"):
        raise _Damage(f"tar header at byte {offset} of the tar stream is not a regular file (type {h[156:157]!r})")
    name, prefix = h[:100].split(b"\0", 1)[0], h[345:500].split(b"\0", 1)[0] if h[257:262] == b"ustar" else b""
    return (prefix + b"/" + name if prefix else name).decode("utf-8"), size


def _check_bytes(where, size: int, digest, expect: dict | None) -> bool:
    """Size and sha256 against the manifest's entry, before a byte is decoded. True when checked.
    `digest` is called only when the size is right."""
    if expect is None:
        return False
    if size != expect["bytes"]:
        raise CorruptShard(where, None, f"{size} bytes, the manifest says {expect['bytes']}")
    if digest() != expect["sha256"]:
        raise CorruptShard(where, None, "its sha256 differs from the manifest's")
    return True


def _open_shard(location, expect: dict | None):
    """(open binary file, verified) of a local shard path or a remote one (fetched whole, then checked)."""
    if is_url(location):
        data = fetch(location)
        verified = _check_bytes(location, len(data), lambda: hashlib.sha256(data).hexdigest(), expect)
        return io.BytesIO(data), verified
    path = Path(location)
    try:
        verified = _check_bytes(path, path.stat().st_size, lambda: file_sha256(path), expect)
        return open(path, "rb"), verified
    except FileNotFoundError:
        raise InputError(f"{path}: no such shard file (listed in {path.parent.parent / MANIFEST}?); re-make the shard set") from None


def iter_split(shard_dir: str | Path, split: str) -> Iterator[bytes]:
    """The bases of every window of one split of a local shard set, in manifest order; each shard is
    read with its manifest entry as `expect`, so a missing, damaged or edited one is an InputError
    naming it, never read. For whole-split readers outside the training stream (BPE corpus, scans)."""
    shard_dir = Path(shard_dir)
    for rel, entry in shard_entries(read_manifest(shard_dir), split).items():
        for seq, _ in iter_shard(shard_dir / rel, expect=entry):
            yield seq


def iter_shard(path, start: int = 0, stop: int | None = None, *, with_meta: bool = False, expect: dict | None = None,
               gz: bool | None = None) -> Iterator[tuple[bytes, dict | None]]:
    """Yield (bases, meta) for samples start..stop of one shard (a local path, or a URL form:
    megadna.data.remote). Samples before `start` are skipped without decoding. Raises CorruptShard,
    naming the shard and sample, when the shard is damaged.

    `expect` is the shard's manifest entry: its size and sha256 are checked before anything is yielded,
    and its sample count too when the whole shard is read. Without it the reader goes on to the end
    of the file after `stop`, so gzip's CRC and length, every tar header and the end of the archive are
    checked before it returns; a flipped bit none of these catch can only be in the member data of an
    uncompressed `.tar` shard (the sha256 catches that one). `gz`: whether it is gzipped (default: the
    path ends in .gz; a URL form passes it from the shard's name, as a pipe: command may end in anything)."""
    path = path if is_url(path) else Path(path)
    gz = str(path).endswith(".gz") if gz is None else gz
    f, verified = _open_shard(path, expect)
    tar = None
    try:
        with f:
            tar = _TarStream(gzip.GzipFile(fileobj=f, mode="rb") if gz else f)
            for sample in _samples(tar, start, stop, with_meta):
                if sample is not None:
                    yield _decode(sample, with_meta)
                elif verified and stop is not None and tar.index >= stop:
                    return  # the bytes are the manifest's: nothing past `stop` is left to check
            tar.finish()
        if expect is not None and tar.index != expect["samples"]:
            raise _Damage(f"it holds {tar.index} samples, the manifest says {expect['samples']}")
        if stop is not None and tar.index < stop:
            raise _Damage(f"it holds {tar.index} samples, samples up to {stop} were asked for")
    except (_Damage, *_CORRUPT) as e:
        raise CorruptShard(path, tar.index if tar else None, e) from None


def _samples(tar: _TarStream, start: int, stop: int | None, with_meta: bool) -> Iterator[dict | None]:
    """{ext: data} for every sample, or None for one outside start..stop (read, checked, not kept).
    Members of one sample are adjacent (<key>.seq.txt, <key>.meta.json): grouped by key. `tar.index`
    is the sample being read (after the last one: the number of samples)."""
    key, sample, exts = None, None, set()
    while True:
        try:
            member = tar.next_member()
        except _Damage:
            tar.index += exts >= {"seq.txt", "meta.json"}  # a whole sample was read: the damage is in the next one
            raise
        k = member[0].partition(".")[0] if member else None
        if k != key and key is not None:
            if "seq.txt" not in exts or (sample is not None and with_meta and "meta.json" not in exts):
                raise _Damage(f"sample {key!r} lacks its seq.txt{' or meta.json' if with_meta else ''} member")
            yield sample
            tar.index += 1
        if member is None:
            return
        name, size = member
        if k != key:
            key, exts = k, set()
            sample = {} if start <= tar.index and (stop is None or tar.index < stop) else None
        ext = name.partition(".")[2]
        exts.add(ext)
        keep = sample is not None and (ext == "seq.txt" or (with_meta and ext == "meta.json"))
        data = tar.data(size, keep)
        if keep:
            sample[ext] = data


def _decode(sample: dict, with_meta: bool) -> tuple[bytes, dict | None]:
    seq = sample["seq.txt"]
    meta = json.loads(sample["meta.json"]) if with_meta else None
    return seq, meta
