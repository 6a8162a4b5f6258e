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
import json
import tarfile
import zlib
from pathlib import Path
from typing import Iterator

from megadna.errors import InputError
from megadna.jsonfile import read_versioned_json

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


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(shard_dir: str | Path) -> dict:
    """The manifest of a complete shard set, or a clear error saying why the directory is not one."""
    d = Path(shard_dir)
    path = d / MANIFEST
    if not path.is_file():
        hint = " (shards without a manifest are an unfinished write: run tools/make_shards.py again)" if any(d.glob("*/shard-*")) else ""
        raise InputError(f"{d}: no {MANIFEST}; not a megadna shard directory{hint}")
    return read_versioned_json(path, FORMAT)


def verify_shards(shard_dir: str | Path) -> list[str]:
    """Check every shard's size and sha256 against the manifest; returns the problems found."""
    d = Path(shard_dir)
    manifest = read_manifest(d)
    problems = []
    for split, info in manifest["splits"].items():
        for sh in info["shards"]:
            p = d / split / sh["name"]
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

_CORRUPT = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError, UnicodeDecodeError, KeyError, json.JSONDecodeError)


class CorruptShard(Exception):
    def __init__(self, path, index, cause):
        super().__init__(f"{path}: corrupt or truncated at sample {index}: {cause}")
        self.path, self.index = path, index


def iter_shard(path: Path, start: int = 0, stop: int | None = None, *, with_meta: bool = False) -> Iterator[tuple[bytes, dict | None]]:
    """Yield (bases, meta) for samples start..stop of one shard. Samples before `start` are skipped
    without decoding. Raises CorruptShard, naming the shard and sample, when the tar is damaged."""
    from webdataset.tariterators import tar_file_iterator  # tar stream parsing: webdataset's

    index, key, sample = 0, None, {}
    try:
        with open(path, "rb") as f:
            # Members of one sample are adjacent (<key>.seq.txt, <key>.meta.json): group by key prefix.
            for member in tar_file_iterator(f):
                k, _, ext = member["fname"].partition(".")
                if k != key:
                    if key is not None:
                        if index >= start:
                            yield _decode(sample, with_meta)
                        index += 1
                        if stop is not None and index >= stop:
                            return
                    key, sample = k, {}
                if index >= start and (ext == "seq.txt" or (with_meta and ext == "meta.json")):
                    sample[ext] = member["data"]
            if key is not None and index >= start and (stop is None or index < stop):
                yield _decode(sample, with_meta)
    except _CORRUPT as e:
        raise CorruptShard(path, index, e) from None


def _decode(sample: dict, with_meta: bool) -> tuple[bytes, dict | None]:
    seq = sample["seq.txt"]
    meta = json.loads(sample["meta.json"]) if with_meta else None
    return seq, meta
