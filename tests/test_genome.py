"""megadna.data.genome against real genomes, an independent reference parser, and hostile input."""

import gzip
import re
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megadna.data import genome
from megadna.data.genome import Contig, Window, WindowConfig, WindowStats, iter_windows, read_fasta, reverse_complement
from megadna.data.synthetic import write_synthetic_fasta
from megadna.errors import InputError

GENOMES = ["A.thaliana.fa.gz", "D.melanogaster.fa.gz", "C.elegans.fa.gz", "GCF_000005845.2_ASM584v2_genomic.fna.gz"]
_IUPAC_TO_N = str.maketrans("RYKMSWBDHV", "N" * 10)


def reference_fasta(path) -> dict[str, str]:
    """A deliberately naive parser, independent of megadna: gzip.open, strip, upper, IUPAC -> N."""
    records: dict[str, list[str]] = {}
    with gzip.open(path, "rt") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                records[line[1:].split()[0]] = parts = []
            else:
                parts.append(line.upper())
    return {name: "".join(parts).translate(_IUPAC_TO_N) for name, parts in records.items()}


_REFERENCE_CACHE: dict[str, dict[str, str]] = {}


def reference(shared_data, name):
    if name not in _REFERENCE_CACHE:
        _REFERENCE_CACHE[name] = reference_fasta(shared_data / "genomes" / name)
    return _REFERENCE_CACHE[name]


def expected_starts_n_free(seq: str, window: int, stride: int) -> list[int]:
    """With max_n_fraction=0 and stride <= window: tile every N-free stretch from its own start."""
    starts = []
    for run in re.finditer("[^N]+", seq):
        starts.extend(range(run.start(), run.end() - window + 1, stride))
    return starts


# ---------------------------------------------------------------- real genomes


@pytest.mark.parametrize("name", GENOMES)
def test_read_fasta_matches_reference_parser(shared_data, name):
    path = shared_data / "genomes" / name
    contigs = list(read_fasta(path))
    ref = reference(shared_data, name)
    assert [c.name for c in contigs] == list(ref)
    for c in contigs:
        assert c.seq.decode() == ref[c.name], c.name
        assert c.source == str(path)
        assert c.softmask is None


def test_iupac_codes_kept_on_request(shared_data):
    # A. thaliana Chr2 has Y, K, S around 85.8 kbp; by default they become N.
    path = shared_data / "genomes" / "A.thaliana.fa.gz"
    raw = {c.name: c.seq for c in read_fasta(path, iupac_to_n=False)}
    default = {c.name: c.seq for c in read_fasta(path)}
    assert raw["Chr2"][85780:85781] == b"Y" and default["Chr2"][85780:85781] == b"N"
    assert set(raw["Chr2"]) == set(b"ACGTNYKS")
    assert set(default["Chr2"]) == set(b"ACGTN")


@pytest.mark.parametrize("name", ["A.thaliana.fa.gz", "D.melanogaster.fa.gz"])
@pytest.mark.parametrize("stride", [510, 200])
def test_windows_equal_reference_and_skip_n_runs_exactly(shared_data, name, stride):
    path = shared_data / "genomes" / name
    ref = reference(shared_data, name)
    stats = WindowStats()
    windows = list(iter_windows([path], WindowConfig(window=510, stride=stride), stats))
    for w in windows:
        assert w.seq == ref[w.contig][w.start:w.end]
        assert w.end - w.start == 510 and "N" not in w.seq
        assert (w.strand, w.split, w.source) == ("+", "train", str(path))
    # No good window lost to an N run, none invented: exactly the tiling of each N-free stretch.
    for contig, seq in ref.items():
        got = [w.start for w in windows if w.contig == contig]
        assert got == expected_starts_n_free(seq, 510, stride), contig
    assert stats.windows == {"train": len(windows), "val": 0}
    assert stats.window_bp["train"] == 510 * len(windows)
    assert stats.contigs == len(ref) and stats.contig_bp == sum(map(len, ref.values()))
    assert stats.dropped_for_n > 0  # both genomes have N runs
    if stride == 510:  # every bp of every contig is in a window, skipped after an N, or in a tail
        assert stats.contig_bp == stats.window_bp["train"] + stats.skipped_bp + stats.tail_bp


def test_ecoli_single_record(shared_data):
    name = "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    seq = reference(shared_data, name)["NC_000913.3"]
    stats = WindowStats()
    windows = list(iter_windows([shared_data / "genomes" / name], WindowConfig(), stats))
    assert len(seq) == 4_641_652
    assert [w.start for w in windows] == list(range(0, len(seq) - 509, 510))
    assert all(w.seq == seq[w.start:w.end] for w in windows)
    assert stats.tail_bp == len(seq) % 510 and stats.dropped_for_n == 0


def test_n_fraction_tolerated_and_grid_realigns(shared_data):
    path = shared_data / "genomes" / "D.melanogaster.fa.gz"
    ref = reference(shared_data, "D.melanogaster.fa.gz")
    cfg = WindowConfig(window=510, stride=300, max_n_fraction=0.25)
    stats = WindowStats()
    windows = list(iter_windows([path], cfg, stats))
    assert all(w.seq.count("N") <= 0.25 * 510 for w in windows)
    assert any("N" in w.seq for w in windows)  # the 100 bp gaps fit under 25 %
    assert stats.dropped_for_n > 0  # the 3-7 kbp gaps do not
    realigned = 0
    for contig, seq in ref.items():
        starts = [w.start for w in windows if w.contig == contig]
        for prev, start in zip([None] + starts, starts):
            on_grid = start == 0 if prev is None else start == prev + cfg.stride
            if not on_grid:  # off the grid only by restarting just after an N
                assert seq[start - 1] == "N", (contig, start)
                realigned += 1
    assert realigned > 0


def test_realignment_rule_on_a_small_contig(tmp_path):
    fa = tmp_path / "g.fa"
    fa.write_text(">c\n" + "A" * 30 + "N" * 5 + "C" * 32 + "\n")
    stats = WindowStats()
    windows = list(iter_windows([fa], WindowConfig(window=10, stride=10), stats))
    assert [w.start for w in windows] == [0, 10, 20, 35, 45, 55]
    assert (stats.dropped_for_n, stats.skipped_bp, stats.tails, stats.tail_bp) == (1, 5, 1, 2)


def test_short_contigs_skipped_and_counted(shared_data):
    path = shared_data / "genomes" / "A.thaliana.fa.gz"
    stats = WindowStats()
    windows = list(iter_windows([path], WindowConfig(window=5000, stride=5000, max_n_fraction=1.0), stats))
    assert stats.short_contigs == 2  # ChrM (3669 bp) and ChrC (1544 bp)
    assert {w.contig for w in windows} == {"Chr1", "Chr2", "Chr3", "Chr4", "Chr5"}
    assert all(len(w.seq) == 5000 for w in windows)


def test_val_contigs_held_out_whole(shared_data):
    path = shared_data / "genomes" / "A.thaliana.fa.gz"
    stats = WindowStats()
    windows = list(iter_windows([path], WindowConfig(val_contigs=("Chr3", "ChrM")), stats))
    assert {w.contig for w in windows if w.split == "val"} == {"Chr3", "ChrM"}
    assert {w.contig for w in windows if w.split == "train"} == {"Chr1", "Chr2", "Chr4", "Chr5", "ChrC"}
    assert stats.windows["val"] == sum(w.split == "val" for w in windows) > 0


def test_val_contig_missing_from_every_file(shared_data):
    path = shared_data / "genomes" / "A.thaliana.fa.gz"
    with pytest.raises(InputError, match=r"chr3.*A\.thaliana\.fa\.gz"):
        list(iter_windows([path], WindowConfig(val_contigs=("chr3",))))


def test_val_fraction_takes_the_tail_of_every_contig(shared_data):
    path = shared_data / "genomes" / "C.elegans.fa.gz"
    ref = reference(shared_data, "C.elegans.fa.gz")
    cfg = WindowConfig(window=500, stride=250, val_fraction=0.2)
    windows = list(iter_windows([path], cfg))
    for contig, seq in ref.items():
        boundary = len(seq) - int(len(seq) * 0.2)
        mine = [w for w in windows if w.contig == contig]
        assert all(w.end <= boundary for w in mine if w.split == "train")
        assert all(w.start >= boundary for w in mine if w.split == "val")
        if len(seq) >= 5000:
            assert [w.start for w in mine if w.split == "val"][0] == boundary
    assert {w.split for w in windows} == {"train", "val"}


def test_same_names_in_different_genomes_are_told_apart_by_source(shared_data, tmp_path):
    # C. elegans and D. melanogaster both have a contig "X": several genomes in one shard set is normal.
    ce, dm = shared_data / "genomes" / "C.elegans.fa.gz", shared_data / "genomes" / "D.melanogaster.fa.gz"
    windows = [w for w in iter_windows([ce, dm], WindowConfig(window=1000)) if w.contig == "X"]
    assert {w.source for w in windows} == {str(ce), str(dm)}


def _two_genomes(tmp_path) -> tuple[Path, Path]:
    """Two small genomes that both have a chrX (and, with a colon in it, an HLA-style name)."""
    (tmp_path / "a").mkdir()
    a = _write(tmp_path / "a" / "genome.fa", b">chrX\n" + b"ACGT" * 50 + b"\n>chr1\n" + b"GGCC" * 50 + b"\n>HLA:01\n" + b"AC" * 100 + b"\n")
    b = _write(tmp_path / "b.fa.gz", b">chrX\n" + b"TTGA" * 50 + b"\n>chr2\n" + b"CATG" * 50 + b"\n")
    return a, b


def test_val_contigs_file_colon_name_picks_one_files_contig(tmp_path):
    a, b = _two_genomes(tmp_path)
    cfg = WindowConfig(window=100, stride=100, val_contigs=("b.fa.gz:chrX", "HLA:01"))
    val = {(w.source, w.contig) for w in iter_windows([a, b], cfg) if w.split == "val"}
    assert val == {(str(b), "chrX"), (str(a), "HLA:01")}  # a name with a colon and no file part stays a name
    # The path as given works too, and lists both files' contigs when both are wanted.
    cfg = WindowConfig(window=100, stride=100, val_contigs=(f"{a}:chrX", "b.fa.gz:chrX"))
    assert {w.source for w in iter_windows([a, b], cfg) if w.split == "val"} == {str(a), str(b)}


def test_val_contigs_bare_name_in_several_files_is_an_error(tmp_path):
    a, b = _two_genomes(tmp_path)
    with pytest.raises(InputError, match=r"'chrX'.*genome\.fa and .*b\.fa\.gz.*FILE:NAME.*genome\.fa:chrX or b\.fa\.gz:chrX"):
        list(iter_windows([a, b], WindowConfig(window=100, stride=100, val_contigs=("chrX",))))
    # A bare name found in one file only is still that contig.
    assert {w.contig for w in iter_windows([a, b], WindowConfig(window=100, stride=100, val_contigs=("chr2",))) if w.split == "val"} == {"chr2"}


def test_val_contigs_file_colon_name_missing_from_that_file(tmp_path):
    a, b = _two_genomes(tmp_path)
    with pytest.raises(InputError, match=r"\['genome\.fa:chr2'\] are in none"):
        list(iter_windows([a, b], WindowConfig(window=100, stride=100, val_contigs=("genome.fa:chr2",))))


def test_the_same_file_twice_is_an_error(shared_data):
    a = shared_data / "genomes" / "A.thaliana.fa.gz"
    with pytest.raises(InputError, match=r"A\.thaliana\.fa\.gz: given twice"):
        list(iter_windows([a, a], WindowConfig()))


# ---------------------------------------------------------------- formats


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    return path


RECORDS = {"r1": "ACGTNNACGTTGCA" * 13, "r2 desc here": "GATTACA" * 31, "r3": "C"}


@pytest.mark.parametrize("variant", ["wrapped60", "single", "crlf", "lower", "blank_lines", "gz", "no_final_newline"])
def test_layouts_read_the_same(tmp_path, variant):
    def fasta(width=60, eol="\n", lower=False, blank=False):
        out = []
        for header, seq in RECORDS.items():
            seq = seq.lower() if lower else seq
            out.append(">" + header)
            out.extend(seq[i:i + width] for i in range(0, len(seq), width))
            if blank:
                out.append("")
        return (eol.join(out) + eol).encode()

    data = {
        "wrapped60": fasta(), "single": fasta(width=10**6), "crlf": fasta(eol="\r\n"), "lower": fasta(lower=True),
        "blank_lines": b"\n\n" + fasta(width=7, blank=True), "gz": fasta(width=50), "no_final_newline": fasta()[:-1],
    }[variant]
    path = _write(tmp_path / ("x.fa.gz" if variant == "gz" else "x.fa"), data)
    contigs = list(read_fasta(path, keep_softmask=True))
    assert [(c.name, c.seq.decode()) for c in contigs] == [(h.split()[0], s) for h, s in RECORDS.items()]
    for c in contigs:
        assert c.softmask.dtype == bool and len(c.softmask) == len(c.seq)
        assert c.softmask.all() == (variant == "lower") and c.softmask.any() == (variant == "lower")


def test_gzip_detected_by_magic_not_extension(tmp_path):
    hidden = _write(tmp_path / "x.gz", b">a\nACGT\n").rename(tmp_path / "plain_name.fa")
    assert [c.seq for c in read_fasta(hidden)] == [b"ACGT"]
    looks_gz = _write(tmp_path / "y.fa.gz.txt", b">a\nACGT\n")  # plain text whatever the name says
    (tmp_path / "z.fa.gz").write_bytes(b">a\nACGT\n")
    assert [c.seq for c in read_fasta(looks_gz)] == [c.seq for c in read_fasta(tmp_path / "z.fa.gz")] == [b"ACGT"]


def test_softmask_fraction_of_windows(tmp_path):
    fa = write_synthetic_fasta(tmp_path / "syn.fa", n_contigs=1, length=20_000, seed=3)
    seq = "".join(line for line in fa.read_text().splitlines()[1:])
    windows = list(iter_windows([fa], WindowConfig(window=500, stride=500, max_n_fraction=1.0, keep_softmask=True)))
    assert windows
    for w in windows:
        lower = sum(ch.islower() for ch in seq[w.start:w.end])
        assert w.softmask_fraction == pytest.approx(lower / 500)
    assert any(0 < w.softmask_fraction < 1 for w in windows)
    assert all(w.softmask_fraction is None for w in iter_windows([fa], WindowConfig(max_n_fraction=1.0)))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "data, place",
    [
        (b"ACGT\n>a\nACGT\n", r"line 1\b.*before the first"),
        (b"", r"no FASTA records"),
        (b"\n\n  \n", r"no FASTA records"),
        (b">a\n>b\nACGT\n", r"record 'a', line 1\b.*no sequence"),
        (b">a\nACGT\n\n>b\n", r"record 'b', line 4\b.*no sequence"),
        (b">a\nACGT\n>a\nGG\n", r"record 'a', line 3\b.*duplicate.*line 1\b"),
        (b">\nACGT\n", r"line 1\b.*no record name"),
        (b">\xff\xfeabc\nACGT\n", r"line 1\b.*not UTF-8"),
        (b">seq1\nACGT\nACGU\n", r"record 'seq1', line 3, column 4: 'U'"),
        (b">seq1\nAC GT\n", r"record 'seq1', line 2, column 3: byte 0x20"),
        (b">seq1\r\nAC\rGT\r\n", r"record 'seq1', line 2, column 3: byte 0x0d"),  # CR only as CRLF
        (b"\x00\x01\x02\x03binary\xff", r"line 1\b"),
        (b"BZh91AY&SY", r"bzip2"),
    ],
)
def test_bad_input_names_file_record_and_line(tmp_path, data, place):
    path = _write(tmp_path / "bad_input.fa", data)
    with pytest.raises(InputError, match=r"bad_input\.fa.*" + place):
        list(read_fasta(path))


@pytest.mark.parametrize("char", list("EFIJLOPQXZ0129*-.>"))
def test_protein_or_junk_character(tmp_path, char):
    path = _write(tmp_path / "prot.fa.gz", f">p1\nACGT\nAC{char}GT\n".encode())
    with pytest.raises(InputError, match=rf"prot\.fa\.gz, record 'p1', line 3, column 3: {re.escape(repr(char))}"):
        list(read_fasta(path))


def test_protein_fasta_is_rejected(tmp_path):
    path = _write(tmp_path / "protein.fa", b">sp|P69905|HBA_HUMAN\nMVLSPADKTNVKAAWGKVGAHAGEYGAEALERMFLSF\n")
    with pytest.raises(InputError, match=r"protein\.fa, record 'sp\|P69905\|HBA_HUMAN', line 2, column 3: 'L'"):
        list(read_fasta(path))


def test_truncated_and_corrupt_gzip(tmp_path):
    body = (">a\n" + "ACGT" * 50_000 + "\n").encode()
    packed = gzip.compress(body, mtime=0)
    cut = tmp_path / "cut.fa.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(InputError, match=r"cut\.fa\.gz.*(corrupt|truncated)"):
        list(read_fasta(cut))
    flipped = bytearray(packed)
    flipped[-6] ^= 0xFF  # inside the CRC32 trailer
    bad_crc = tmp_path / "crc.fa.gz"
    bad_crc.write_bytes(bytes(flipped))
    with pytest.raises(InputError, match=r"crc\.fa\.gz.*corrupt"):
        list(read_fasta(bad_crc))


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nowhere\.fa"):
        list(read_fasta(tmp_path / "nowhere.fa"))
    with pytest.raises(InputError, match=r"no FASTA files"):
        list(iter_windows([], WindowConfig()))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0}, {"window": -5}, {"window": 51.0}, {"window": True}, {"stride": 0},
        {"max_n_fraction": -0.1}, {"max_n_fraction": 1.5}, {"val_fraction": 1.0}, {"val_fraction": -0.2},
        {"val_contigs": ("chr1",), "val_fraction": 0.1}, {"val_contigs": "chr1"},
    ],
)
def test_window_config_rejects(kwargs):
    with pytest.raises(InputError, match="WindowConfig"):
        WindowConfig(**kwargs)


def test_window_config_to_dict_is_json():
    import json

    cfg = WindowConfig(window=100, stride=50, val_contigs=["chrX"])
    assert cfg.val_contigs == ("chrX",)
    assert json.loads(json.dumps(cfg.to_dict())) == {
        "window": 100, "stride": 50, "max_n_fraction": 0.0, "val_contigs": ["chrX"], "val_fraction": 0.0,
        "keep_softmask": False}
    assert json.loads(json.dumps(WindowStats().to_dict()))["windows"] == {"train": 0, "val": 0}


_FASTA_TOKENS = st.sampled_from([b">", b">r1", b">r2 x", b"\n", b"\r\n", b"ACGT", b"acgtn", b"RYKN", b"E", b"*",
                                 b" ", b"\t", b"\x00", b"\xff", b"\xc3\xa9", b"\x1f\x8b", b"U", b">\n"])
_ARBITRARY = st.one_of(st.binary(max_size=200), st.lists(_FASTA_TOKENS, max_size=40).map(b"".join))


def _check_reader_on(path: Path):
    try:
        contigs = list(read_fasta(path, keep_softmask=True))
    except InputError as e:
        assert str(path) in str(e)
        return
    assert contigs, "a file that reads without error has at least one record"
    for c in contigs:
        assert isinstance(c, Contig) and c.seq and set(c.seq) <= set(b"ACGTN") and len(c.softmask) == len(c.seq)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_ARBITRARY, gzipped=st.booleans(), cut=st.integers(0, 400))
def test_reader_raises_only_input_error_on_arbitrary_bytes(data, gzipped, cut):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.fa"
        if gzipped:
            packed = gzip.compress(data, mtime=0)
            data = packed[:cut] if cut < len(packed) else packed  # truncated or whole
        path.write_bytes(data)
        _check_reader_on(path)


def _outcome(path: Path, **kwargs) -> list:
    """What read_fasta makes of a file: its records (name, bases, softmask), then the error message if any."""
    out: list = []
    try:
        for c in read_fasta(path, **kwargs):
            out.append((c.name, c.seq, None if c.softmask is None else c.softmask.tolist()))
    except InputError as e:
        out.append(str(e))
    return out


def _straddling_fasta() -> bytes:
    """Records of 1 bp to 1 kbp, wrapped at 7, 60 and 80 bp or not at all; LF and CRLF; blank lines."""
    bases = "ACGTNacgtnRYKMSWBDHV"
    seqs = {f"rec{i} desc {i}": "".join(bases[(i * 7 + j * j) % len(bases)] for j in range(n))
            for i, n in enumerate([1, 333, 1000, 250, 97, 61])}
    out = []
    for (header, seq), width, eol in zip(seqs.items(), [60, 60, 10**6, 7, 80, 60], ["\n", "\r\n"] * 3):
        out.append(">" + header + eol + eol.join(seq[i:i + width] for i in range(0, len(seq), width)) + eol)
        out.append("\n" if width == 7 else "")
    return "".join(out).rstrip("\n").encode()  # and no line end after the last line


@pytest.mark.parametrize("block", [1, 2, 3, 7, 64, 1000])
def test_records_and_lines_straddling_read_blocks(tmp_path, monkeypatch, block):
    # read_fasta reads _BLOCK_BYTES at a time: with small blocks every header, line, CRLF pair and record
    # boundary is split between blocks somewhere, and must read as with one block for the whole file.
    data = _straddling_fasta()
    gz, plain = _write(tmp_path / "s.fa.gz", data), _write(tmp_path / "s.fa", data)
    whole = _outcome(plain, keep_softmask=True)
    monkeypatch.setattr(genome, "_BLOCK_BYTES", block)
    assert _outcome(plain, keep_softmask=True) == _outcome(gz, keep_softmask=True) == whole
    assert [(name, seq.decode()) for name, seq, _ in whole] == list(reference_fasta(gz).items())
    # An error's line and column do not depend on where the blocks fall.
    at = data.index(b"\n", data.index(b">rec3")) + 6  # in rec3's first 7-bp line
    bad = _write(tmp_path / "bad.fa", data[:at] + b"U" + data[at:])
    dup = _write(tmp_path / "dup.fa", data + b"\n>rec3\nACGT\n")
    monkeypatch.setattr(genome, "_BLOCK_BYTES", 1 << 20)
    expected = [_outcome(bad), _outcome(dup)]
    monkeypatch.setattr(genome, "_BLOCK_BYTES", block)
    assert [_outcome(bad), _outcome(dup)] == expected
    assert re.search(r"line \d+, column \d+: 'U'", expected[0][-1]) and "duplicate" in expected[1][-1]


def test_real_genome_in_small_blocks(shared_data, monkeypatch):
    monkeypatch.setattr(genome, "_BLOCK_BYTES", 4099)  # ~300 blocks, records crossing them
    path = shared_data / "genomes" / "A.thaliana.fa.gz"
    assert {c.name: c.seq.decode() for c in read_fasta(path)} == reference(shared_data, "A.thaliana.fa.gz")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_ARBITRARY, block=st.integers(1, 9), keep_softmask=st.booleans())
def test_block_size_never_changes_the_outcome(data, block, keep_softmask):
    # Records, bases, softmask and error messages (line, column) are the same whatever the block size.
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "blocks.fa"
        path.write_bytes(data)
        whole = _outcome(path, keep_softmask=keep_softmask)
        with mock.patch.object(genome, "_BLOCK_BYTES", block):
            assert _outcome(path, keep_softmask=keep_softmask) == whole


# ---------------------------------------------------------------- reverse complement


@given(st.text(alphabet="ACGTNRYKMSWBDHVacgtn", max_size=300))
def test_reverse_complement_is_an_involution(seq):
    rc = reverse_complement(seq)
    assert len(rc) == len(seq) and reverse_complement(rc) == seq


def test_reverse_complement_values():
    assert reverse_complement("AACGTN") == "NACGTT"
    assert reverse_complement("acgR") == "Ycgt"
    assert reverse_complement("") == ""


def test_window_is_frozen():
    w = Window("c", 0, 4, "+", "ACGT", "train", "x.fa")
    with pytest.raises(AttributeError):
        w.start = 1  # type: ignore[misc]
