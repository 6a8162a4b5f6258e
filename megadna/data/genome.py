"""FASTA in, genome windows out: the first step of the data path.

A FASTA file (plain or gzipped, told apart by its magic bytes, not its name) is streamed in blocks;
one record is held at a time, so memory is bounded by the largest record, never the genome. Bases are
upper-cased and the IUPAC ambiguity codes (R, Y, K, M, S, W, B, D, H, V) become N, so downstream code
sees only A, C, G, T and N. Lower case (soft-masked repeats) can be kept as a per-base flag.

Each contig is then tiled into fixed-size windows (bp) with a stride; windows with too many N are
dropped and counted, and whole contigs or the tail of every contig are set aside for validation.
Anything wrong with the input raises `InputError` naming the file, the record and the line.
"""

from __future__ import annotations

import gzip
import io
import zlib
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from megadna.errors import InputError, where

_GZIP_MAGIC = b"\x1f\x8b"
# Compressions we do not read; named so that the error says "decompress it" rather than "bad base".
_OTHER_MAGIC = {b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz"}

_IUPAC_AMBIGUOUS = b"RYKMSWBDHV"
_NUCLEOTIDES = b"ACGTN" + _IUPAC_AMBIGUOUS
NUCLEOTIDE_CODES = _NUCLEOTIDES + _NUCLEOTIDES.lower()  # the bytes a sequence may hold, either case (public: the infer readers share it)
_TO_UPPER = bytes.maketrans(NUCLEOTIDE_CODES, NUCLEOTIDE_CODES.upper())
_TO_UPPER_N = bytes.maketrans(NUCLEOTIDE_CODES, b"ACGTN" + b"N" * len(_IUPAC_AMBIGUOUS) + b"ACGTN" + b"N" * len(_IUPAC_AMBIGUOUS))
_VALID_OR_LF = NUCLEOTIDE_CODES + b"\n"
# Decompressed bytes read at a time. Lines and records straddle blocks freely (tests shrink it to a few
# bytes); large blocks make the per-block Python cost negligible. Gzip returns less, ~25 kB per read.
_BLOCK_BYTES = 1 << 20
# Complements, IUPAC codes included (R=A/G <-> Y=C/T, K <-> M, B <-> V, D <-> H; S, W, N are their own).
_COMPLEMENT = str.maketrans("ACGTNRYKMSWBDHVacgtnrykmswbdhv", "TGCANYRMKSWVHDBtgcanyrmkswvhdb")


@dataclass(frozen=True)
class Contig:
    """One FASTA record."""

    name: str  # first word of the header
    seq: bytes  # upper-case bases; IUPAC ambiguity codes mapped to N unless read with iupac_to_n=False
    # True where the FASTA had lower case (soft-masked); only when read with keep_softmask=True.
    softmask: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: str = ""  # the file path as given

    def __len__(self) -> int:
        return len(self.seq)


def reverse_complement(seq: str) -> str:
    """Reverse complement of a DNA string (A<->T, C<->G, N->N, IUPAC codes too; case kept)."""
    return seq.translate(_COMPLEMENT)[::-1]


@contextmanager
def _open_fasta(path: Path, shown: str) -> Iterator[tuple[io.BufferedIOBase, bool]]:
    """Open a plain or gzipped file (told by magic bytes): yield (binary reader, gzipped)."""
    try:
        raw = open(path, "rb")
    except OSError as e:
        raise InputError(f"{shown}: cannot open FASTA file ({e.strerror or e}).") from None
    with raw:  # GzipFile.close() leaves the file object it wraps open: close it here
        try:
            head = raw.read(6)
            raw.seek(0)
        except OSError as e:
            raise InputError(f"{shown}: cannot read FASTA file ({e.strerror or e}).") from None
        for magic, kind in _OTHER_MAGIC.items():
            if head.startswith(magic):
                raise InputError(f"{shown}: looks {kind}-compressed; only plain or gzipped FASTA is read. "
                                 f"Decompress it (or recompress it with gzip) first.")
        if not head.startswith(_GZIP_MAGIC):
            yield raw, False
            return
        with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
            yield fh, True


def _bad_char_error(line: bytes, bad: bytes, shown: str, record: str, lineno: int) -> InputError:
    column = line.index(bad[:1]) + 1
    byte = bad[0]
    char = repr(chr(byte)) if 32 < byte < 127 else f"byte 0x{byte:02x}"
    return InputError(f"{where(shown, line=lineno, record=record)}, column {column}: {char} is not a "
                      f"nucleotide code (A, C, G, T, N or IUPAC R Y K M S W B D H V). Is this a protein "
                      f"FASTA or a corrupt file?")


class _FastaParser:
    """Turns whole lines of FASTA, fed in chunks, into Contigs; one record is held at a time.

    The meaning of a line is fixed: strip its whitespace, skip it if empty, a header if it starts
    with '>', else sequence. A run of lines holding no '>' is sequence: when it has nothing but
    nucleotide codes and LF or CRLF line ends (nearly always), it is validated, upper-cased and
    stripped of line ends by two `bytes.translate` calls over the whole run. Anything else (stray
    whitespace, a bad byte, sequence before a header) goes line by line, which finds the exact line
    and column to report. Line numbers come from counting LFs, once over the data.
    """

    def __init__(self, shown: str, table: bytes, keep_softmask: bool):
        self.shown, self.table, self.keep_softmask = shown, table, keep_softmask
        self.line = 1  # line number of the next byte to be fed
        self.seen: dict[str, int] = {}  # record name -> its header line
        self.name: str | None = None
        self.header_line = 0
        self.parts: list[bytes] = []  # the record's bases so far, upper-cased
        self.masks: list[np.ndarray] = []  # and where they were lower case, with keep_softmask

    def feed(self, chunk: bytes) -> Iterator[Contig]:
        """Parse `chunk`: whole lines (ending in LF, bar the file's last line). Yield finished records."""
        pos, n = 0, len(chunk)
        line, counted = self.line, 0  # `line` is the number of the line holding chunk[counted]
        while pos < n:
            gt = chunk.find(b">", pos)
            # Lines before the one holding the next '>' are all sequence (or blank, or junk).
            end = n if gt < 0 else (chunk.rfind(b"\n", pos, gt) + 1 or pos)
            if end > pos:
                line += chunk.count(b"\n", counted, pos)
                counted = pos
                self._sequence(chunk[pos:end], line)
            if gt < 0:
                break
            pos = chunk.find(b"\n", gt) + 1 or n
            line += chunk.count(b"\n", counted, end)
            counted = end
            header = chunk[end:pos].strip()
            if header[:1] != b">":  # a '>' inside a sequence line, such as "AC>GT": reported as a bad byte
                self._sequence(chunk[end:pos], line)
                continue
            if self.name is not None:
                yield self._finish()  # before any error in this header: earlier records come first
            self._header(header, line)
        self.line = line + chunk.count(b"\n", counted)

    def end(self) -> Contig:
        if self.name is None:
            raise InputError(f"{self.shown}: no FASTA records (the file is empty or has no '>' header).")
        return self._finish()

    def _header(self, header: bytes, lineno: int) -> None:
        shown = self.shown
        try:
            words = header[1:].decode("utf-8").split()
        except UnicodeDecodeError as e:
            raise InputError(f"{where(shown, line=lineno)}: the header is not UTF-8 text (byte "
                             f"0x{header[1 + e.start]:02x}); is this a FASTA file?") from None
        if not words:
            raise InputError(f"{where(shown, line=lineno)}: the header '>' has no record name.")
        name = words[0]
        if name in self.seen:
            raise InputError(f"{where(shown, line=lineno, record=name)}: duplicate record name (first "
                             f"at line {self.seen[name]}). Record names must be unique.")
        self.seen[name] = self.header_line = lineno
        self.name = name

    def _sequence(self, lines: bytes, lineno: int) -> None:
        """Add whole lines holding no header (the first is line `lineno`) to the current record."""
        if self.name is not None:
            bad = lines.translate(None, _VALID_OR_LF)
            # CR is fine only as part of CRLF; a lone CR (or CRCRLF) is left to the line-by-line path.
            if not bad or (not bad.translate(None, b"\r") and lines.count(b"\r") == lines.count(b"\r\n")):
                self._add(lines.translate(None, b"\r\n") if self.keep_softmask else lines)
                return
        stripped = []
        for i, line in enumerate(lines.split(b"\n")):
            line = line.strip()
            if not line:
                continue
            if self.name is None:
                raise InputError(f"{where(self.shown, line=lineno + i)}: sequence before the first '>' "
                                 f"header; a FASTA file must start with a '>name' line.")
            bad = line.translate(None, NUCLEOTIDE_CODES)
            if bad:
                raise _bad_char_error(line, bad, self.shown, self.name, lineno + i)
            stripped.append(line)
        self._add(b"".join(stripped))

    def _add(self, bases: bytes) -> None:
        """Add validated bases (line ends may remain when softmask is not kept; they are dropped here)."""
        if self.keep_softmask:
            # Lower-case letters are exactly the bytes >= ord('a') among the validated codes.
            self.masks.append(np.frombuffer(bases, dtype=np.uint8) >= ord("a"))
        upper = bases.translate(self.table, b"\r\n")
        if upper:
            self.parts.append(upper)

    def _finish(self) -> Contig:
        assert self.name is not None  # _finish() is only called once a header was read
        if not self.parts:
            raise InputError(f"{where(self.shown, line=self.header_line, record=self.name)}: the record has a "
                             f"header but no sequence.")
        seq = b"".join(self.parts)
        softmask = np.concatenate(self.masks) if self.keep_softmask else None
        self.parts, self.masks = [], []
        return Contig(name=self.name, seq=seq, softmask=softmask, source=self.shown)


def read_fasta(path: str | Path, *, keep_softmask: bool = False, iupac_to_n: bool = True) -> Iterator[Contig]:
    """Stream the records of a plain or gzipped FASTA file, one `Contig` at a time.

    Wrapped or single-line sequences, CRLF line ends, blank lines and lower case are accepted; leading
    and trailing whitespace of a line is ignored. Raises `InputError` (naming file, record and line) for
    a file with no records, sequence before the first header, a header without a name or without
    sequence, a non-nucleotide character, a duplicate record name, a non-UTF-8 header, or a corrupt
    or truncated gzip stream. Records before the bad place have already been yielded.
    """
    shown = str(path)
    parser = _FastaParser(shown, _TO_UPPER_N if iupac_to_n else _TO_UPPER, keep_softmask)
    with _open_fasta(Path(path), shown) as (fh, gzipped):
        tail: list[bytes] = []  # the last, unfinished line read so far, in pieces
        while True:
            try:
                block = fh.read1(_BLOCK_BYTES)  # at most one raw read: a gzip error is near the line named
            except (EOFError, OSError, zlib.error) as e:
                # EOFError: truncated gzip; BadGzipFile (an OSError): bad header or CRC; zlib.error: bad data.
                what = "the gzip stream is corrupt or truncated" if gzipped else "reading failed"
                raise InputError(f"{where(shown, line=parser.line)}: {what} ({type(e).__name__}: {e}). "
                                 f"Re-download or re-compress the file.") from None
            if not block:
                break
            cut = block.rfind(b"\n") + 1
            if not cut:  # a line longer than a block (a single-line chromosome)
                tail.append(block)
                continue
            tail.append(block[:cut])
            yield from parser.feed(b"".join(tail))
            tail = [block[cut:]]
        yield from parser.feed(b"".join(tail))  # the last line, when it has no line end
    yield parser.end()


@dataclass(frozen=True)
class WindowConfig:
    """How contigs are cut into windows and split into train/val. All lengths in bp."""

    window: int = 510  # window length, bp
    stride: int = 510  # distance between window starts, bp (< window overlaps, > window skips)
    max_n_fraction: float = 0.0  # windows with a larger share of N are dropped (and counted)
    val_contigs: tuple[str, ...] = ()  # contigs held out whole for validation: NAME, or FILE:NAME for one file's
    val_fraction: float = 0.0  # else: the last fraction (bp) of every contig goes to val
    keep_softmask: bool = False  # record each window's share of lower-case (soft-masked) bases

    def __post_init__(self):
        for name in ("window", "stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise InputError(f"WindowConfig.{name} must be a positive integer (bp), got {value!r}.")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise InputError(f"WindowConfig.max_n_fraction must be in [0, 1], got {self.max_n_fraction!r}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InputError(f"WindowConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}.")
        if isinstance(self.val_contigs, str):
            # A bare string would silently become a tuple of one-letter contig names.
            raise InputError(f"WindowConfig.val_contigs must be a list of contig names, got the string "
                             f"{self.val_contigs!r}; write ({self.val_contigs!r},).")
        object.__setattr__(self, "val_contigs", tuple(self.val_contigs))
        if self.val_contigs and self.val_fraction:
            raise InputError("WindowConfig: give either val_contigs (whole contigs held out) or "
                             "val_fraction (the tail of every contig), not both.")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["val_contigs"] = list(self.val_contigs)
        return d


@dataclass(frozen=True, slots=True)
class Window:
    """One window of a contig, on the + strand (reverse complement is applied at load time)."""

    contig: str
    start: int  # 0-based, bp
    end: int  # exclusive, bp
    strand: str  # always "+"
    seq: str  # upper-case bases, exactly contig.seq[start:end]
    split: str  # "train" or "val"
    source: str  # FASTA path
    softmask_fraction: float | None = None  # share of lower-case bases, only with keep_softmask


@dataclass
class WindowStats:
    """What `iter_windows` kept and dropped; recorded in the shard manifest."""

    files: int = 0
    contigs: int = 0  # contigs read
    contig_bp: int = 0  # their total length
    short_contigs: int = 0  # contigs shorter than one window, skipped whole
    windows: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    window_bp: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    dropped_for_n: int = 0  # windows dropped because their N share exceeded max_n_fraction
    skipped_bp: int = 0  # bp the grid jumped over when realigning after those windows
    tails: int = 0  # segment ends shorter than a window, dropped
    tail_bp: int = 0  # bp in those ends not covered by any window

    def to_dict(self) -> dict:
        return asdict(self)


def _tile(contig: Contig, seg_start: int, seg_end: int, split: str, cfg: WindowConfig,
          stats: WindowStats, softmask_cumsum: np.ndarray | None) -> Iterator[Window]:
    """Tile contig.seq[seg_start:seg_end]; see `iter_windows` for the rule."""
    seq, w = contig.seq, cfg.window
    max_n = cfg.max_n_fraction * w  # compare counts, not fractions, to avoid float rounding at the edge
    pos, covered_end = seg_start, seg_start
    while pos + w <= seg_end:
        end = pos + w
        if seq.count(b"N", pos, end) > max_n:
            stats.dropped_for_n += 1
            realigned = seq.rfind(b"N", pos, end) + 1  # just after the window's last N
            stats.skipped_bp += realigned - pos
            pos = realigned
            continue
        softmask_fraction = None
        if softmask_cumsum is not None:
            softmask_fraction = float(softmask_cumsum[end] - softmask_cumsum[pos]) / w
        stats.windows[split] += 1
        stats.window_bp[split] += w
        yield Window(contig=contig.name, start=pos, end=end, strand="+", seq=seq[pos:end].decode("ascii"),
                     split=split, source=contig.source, softmask_fraction=softmask_fraction)
        covered_end = end
        pos += cfg.stride
    tail = seg_end - max(pos, covered_end)
    if tail > 0:
        stats.tails += 1
        stats.tail_bp += tail


def iter_windows(paths: Sequence[str | Path], cfg: WindowConfig,
                 stats: WindowStats | None = None) -> Iterator[Window]:
    """Yield the windows of every contig of the FASTA files, in file and contig order.

    The tiling rule. Each contig is one segment, or with `val_fraction` two: its first
    `len - floor(len * val_fraction)` bp (train) and the rest (val); a window never crosses a split
    boundary, so no base is in both. A segment is tiled from its first base: a window starts at
    `pos`, and the next at `pos + stride`. A window whose share of N exceeds `max_n_fraction` is
    dropped (counted in `stats.dropped_for_n`) and the grid realigns to start just after the last N
    of that window. With `max_n_fraction=0` and `stride <= window` this keeps exactly the windows a
    tiling of each N-free stretch from its own start would keep: no good sequence is lost to an N run
    beyond the part of the grid that cannot fit before it. A window is never shorter than `window`;
    a segment end too short for one is dropped and counted (`stats.tails`, `stats.tail_bp`), and a
    contig shorter than one window is skipped whole (`stats.short_contigs`). With `stride == window`
    every bp of a tiled segment is counted once: in a window, in `skipped_bp` or in `tail_bp`.

    Record names must be unique within a file; across files (several genomes, each with its chrX)
    they may repeat, and each window's `source` tells them apart. The same file given twice is an error.
    `val_contigs` holds whole contigs out for validation, each named `NAME` or `FILE:NAME` (FILE: the
    file's name, or its path as given), which picks that file's contig only. A bare NAME that turns out
    to be a contig of two files is an `InputError` when the second one is read (say which with
    FILE:NAME); a NAME or FILE:NAME that no file contains is one once all files are read.
    `stats`, when given, is updated in place.
    """
    if stats is None:
        stats = WindowStats()
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise InputError("iter_windows: no FASTA files given.")
    seen_files: dict[Path, str] = {}
    for path in paths:
        key = Path(path).resolve()
        if key in seen_files:
            raise InputError(f"{path}: given twice (also as {seen_files[key]}); each FASTA file must be listed once")
        seen_files[key] = str(path)
    val = _ValContigs(paths, cfg.val_contigs)
    for i, path in enumerate(paths):
        stats.files += 1
        for contig in read_fasta(path, keep_softmask=cfg.keep_softmask):
            is_val = val.holds(i, contig.name)
            n = len(contig.seq)
            stats.contigs += 1
            stats.contig_bp += n
            if n < cfg.window:
                stats.short_contigs += 1
                continue
            cumsum = None
            if contig.softmask is not None:
                cumsum = np.concatenate(([0], np.cumsum(contig.softmask, dtype=np.int64)))
            if is_val:
                yield from _tile(contig, 0, n, "val", cfg, stats, cumsum)
            elif cfg.val_fraction:
                boundary = n - int(n * cfg.val_fraction)
                yield from _tile(contig, 0, boundary, "train", cfg, stats, cumsum)
                yield from _tile(contig, boundary, n, "val", cfg, stats, cumsum)
            else:
                yield from _tile(contig, 0, n, "train", cfg, stats, cumsum)
    val.check_all_found()


class _ValContigs:
    """`WindowConfig.val_contigs` resolved against the files: bare names, and FILE:NAME pinned to one file."""

    def __init__(self, paths: Sequence[str | Path], specs: Sequence[str]):
        self.paths = [str(p) for p in paths]
        self.bare: dict[str, int | None] = {}  # name -> index of the file it was found in
        self.pinned: dict[tuple[int, str], str] = {}  # (file index, name) -> the spec as given
        self.seen: set[str] = set()
        for spec in specs:
            files = {i for i, p in enumerate(self.paths) for f in (Path(p).name, p) if spec.startswith(f + ":") and len(spec) > len(f) + 1}
            if len(files) > 1:
                raise InputError(f"val_contigs {spec!r}: its FILE part names {len(files)} of the files given "
                                 f"({', '.join(self.paths[i] for i in sorted(files))}); write the path as given")
            if files:
                (i,) = files
                name = spec[next(len(f) for f in (self.paths[i], Path(self.paths[i]).name) if spec.startswith(f + ":")) + 1 :]
                self.pinned[(i, name)] = spec
            else:
                self.bare[spec] = None

    def holds(self, i: int, name: str) -> bool:
        self.seen.add(name)
        if (i, name) in self.pinned:
            del self.pinned[(i, name)]  # found
            return True
        if name not in self.bare:
            return False
        first = self.bare[name]
        if first is not None and first != i:
            a, b = self.paths[first], self.paths[i]
            raise InputError(f"val_contigs {name!r}: a contig of both {a} and {b}; say which with FILE:NAME "
                             f"({Path(a).name}:{name} or {Path(b).name}:{name}), or list both that way")
        self.bare[name] = i
        return True

    def check_all_found(self) -> None:
        missing = sorted([n for n, i in self.bare.items() if i is None] + list(self.pinned.values()))
        if missing:
            raise InputError(f"val_contigs {missing} are in none of the FASTA files given "
                             f"({', '.join(self.paths)}); contigs seen: {sorted(self.seen)[:20]}.")
