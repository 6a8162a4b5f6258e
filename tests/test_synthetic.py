"""The synthetic genome looks like a genome, is deterministic, and its demo GUE task is well formed."""

import csv
import gzip
import re

import pytest

from megadna.data.genome import read_fasta
from megadna.data.synthetic import DEMO_MOTIFS, motif_tolerance, synthetic_genome, write_demo_gue, write_synthetic_fasta
from megadna.errors import InputError


@pytest.fixture(scope="module")
def genome():
    return synthetic_genome()


def test_same_seed_same_genome_other_seed_other_genome(genome):
    assert synthetic_genome() == genome
    assert synthetic_genome(seed=1) != genome
    # Contig i does not depend on how many contigs were asked for.
    assert synthetic_genome(n_contigs=1, length=300_000) == genome[:1]


def test_shape_and_alphabet(genome):
    assert [name for name, _ in genome] == ["syn1", "syn2", "syn3"]
    for _, seq in genome:
        assert len(seq) == 300_000
        assert set(seq) <= set("ACGTNRYKacgt")


def gc(s: str) -> float:
    s = s.upper()
    acgt = sum(s.count(b) for b in "ACGT")
    return (s.count("G") + s.count("C")) / acgt


def test_composition_looks_like_a_genome(genome):
    for name, seq in genome:
        upper = seq.upper()
        assert 0.35 <= gc(seq) <= 0.60, name
        # Isochore-like: GC differs along the contig, within a plausible band.
        blocks = [gc(seq[i:i + 10_000]) for i in range(0, len(seq), 10_000)]
        assert 0.30 <= min(blocks) and max(blocks) <= 0.65, name
        assert max(blocks) - min(blocks) > 0.05, name
        # CpG depleted: observed / expected well below 1 (about 0.2-0.4 in mammals).
        c, g = upper.count("C") / len(seq), upper.count("G") / len(seq)
        assert upper.count("CG") / len(seq) / (c * g) < 0.6, name
        # Soft-masked repeats: a real share, not everything.
        lower = sum(ch.islower() for ch in seq) / len(seq)
        assert 0.05 < lower < 0.40, name
        # 2-3 runs of 100-2000 N, never soft-masked; a few IUPAC codes.
        runs = [len(m.group()) for m in re.finditer("N+", seq)]
        assert "n" not in seq
        assert 1 <= len(runs) <= 3 and all(100 <= r <= 4_000 for r in runs), runs  # runs may abut
        assert 3 <= sum(seq.count(ch) for ch in "RYK") <= 10
        # Motifs are planted (either strand), upper case.
        for motif in DEMO_MOTIFS.values():
            assert motif in seq or motif[::-1].translate(str.maketrans("ACGT", "TGCA")) in seq


def test_fasta_round_trip_and_bytes_deterministic(tmp_path, genome):
    plain = write_synthetic_fasta(tmp_path / "a" / "syn.fa", line_width=60)
    packed = write_synthetic_fasta(tmp_path / "syn.fa.gz")
    again = write_synthetic_fasta(tmp_path / "again.fa.gz")
    assert packed.read_bytes() == again.read_bytes()
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and gzip.decompress(packed.read_bytes()).startswith(b">syn1 ")
    assert max(len(line) for line in plain.read_text().splitlines()) == 60
    for path in (plain, packed):
        contigs = list(read_fasta(path, keep_softmask=True))
        assert [c.name for c in contigs] == [name for name, _ in genome]
        for c, (_, seq) in zip(contigs, genome):
            assert c.seq.decode() == re.sub("[RYK]", "N", seq.upper())
            assert c.softmask.tolist() == [ch.islower() for ch in seq]


def test_bad_arguments():
    with pytest.raises(InputError):
        synthetic_genome(length=10)
    with pytest.raises(InputError):
        synthetic_genome(seed=-1)


def _rc(s: str) -> str:
    return s[::-1].translate(str.maketrans("ACGT", "TGCA"))


def _has_motif(seq: str) -> bool:
    """Independent of the module: any motif, either strand, within its tolerance of mismatches."""
    for motif in DEMO_MOTIFS.values():
        for m in (motif, _rc(motif)):
            for i in range(len(seq) - len(m) + 1):
                if sum(a != b for a, b in zip(seq[i:i + len(m)], m)) <= motif_tolerance(motif):
                    return True
    return False


def read_split(path):
    with open(path, newline="") as f:
        reader = csv.reader(f)
        assert next(reader) == ["sequence", "label"]
        return [(s, int(label)) for s, label in reader]


def test_demo_gue_layout_labels_and_determinism(tmp_path):
    sizes = {"train": 200, "dev": 40, "test": 40}
    out = write_demo_gue(tmp_path / "GUE", seed=5, n_train=200, n_dev=40, n_test=40, length=80)
    assert out == tmp_path / "GUE" / "demo" / "motif"
    assert sorted(p.name for p in out.iterdir()) == ["dev.csv", "test.csv", "train.csv"]
    splits = {name: read_split(out / f"{name}.csv") for name in sizes}
    for name, rows in splits.items():
        assert len(rows) == sizes[name]
        labels = [label for _, label in rows]
        assert labels.count(1) == labels.count(0) == sizes[name] // 2
        assert labels != sorted(labels) and labels != sorted(labels, reverse=True)  # shuffled
        for seq, label in rows:
            assert len(seq) == 80 and set(seq) <= set("ACGT")
            assert _has_motif(seq) == bool(label), (name, seq, label)
    seqs = [{s for s, _ in rows} for rows in splits.values()]
    assert not (seqs[0] & seqs[1] or seqs[0] & seqs[2] or seqs[1] & seqs[2])
    # Not separable by GC content alone: both classes share the genome's background.
    pos = [gc(s) for s, label in splits["train"] if label]
    neg = [gc(s) for s, label in splits["train"] if not label]
    assert abs(sum(pos) / len(pos) - sum(neg) / len(neg)) < 0.04
    again = write_demo_gue(tmp_path / "again", seed=5, n_train=200, n_dev=40, n_test=40, length=80)
    assert all((again / f).read_bytes() == (out / f).read_bytes() for f in ("train.csv", "dev.csv", "test.csv"))
    other = write_demo_gue(tmp_path / "other", seed=6, n_train=200, n_dev=40, n_test=40, length=80)
    assert (other / "train.csv").read_bytes() != (out / "train.csv").read_bytes()


def test_demo_gue_rejects_impossible_sizes(tmp_path):
    with pytest.raises(InputError):
        write_demo_gue(tmp_path, length=10)
    with pytest.raises(InputError):
        write_demo_gue(tmp_path, n_dev=1)
