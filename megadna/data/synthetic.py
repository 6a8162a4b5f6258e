"""A synthetic genome and a GUE-style task: the offline, deterministic default for the demo and tests.

The genome is not random letters: it has what a real one would put in front of the window and
tokenizer code. GC content changes along each contig in isochore-like segments (35-60 %); CpG is
depleted, as methylated C deaminates to T in real genomes; tandem repeats and mutated copies of a few
interspersed repeat families are written in lower case (soft-masked, as RepeatMasker output is);
promoter-like motifs are planted; a few N runs and scattered IUPAC codes (R, Y, K) exercise the N
policy. Everything is vectorized numpy and a pure function of the seed: same seed, same bytes.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from megadna.errors import InputError

# Base codes used inside this module: 0..3 are A C G T, so the complement of code c is 3 - c.
_UPPER = np.frombuffer(b"ACGTNRYK", dtype=np.uint8)
_LOWER = np.frombuffer(b"acgtnryk", dtype=np.uint8)
_N, _IUPAC = 4, (5, 6, 7)  # N; R, Y, K
_CODE = np.full(256, 255, dtype=np.uint8)
_CODE[np.frombuffer(b"ACGT", dtype=np.uint8)] = np.arange(4)

DEMO_MOTIFS: dict[str, str] = {
    "TATA": "TATAAA",  # TATA box
    "CAAT": "GGCCAATCT",  # CCAAT box
    "GC": "GGGGCGGGG",  # Sp1 GC box
    "CTCF": "CCGCGAGGTGGCAG",  # CTCF core CCGCGNGGNGGCAG, with the N made concrete
}

# Interspersed repeat families: (consensus length bp, relative copy number, may be 5'-truncated).
_REPEAT_FAMILIES = {"SINE": (300, 6, False), "LINE": (2000, 2, True), "DNA": (800, 1, False)}
_REPEAT_SHARE = 0.12  # target share of each contig in interspersed copies (before overlaps)


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, key): contig i is the same whatever n_contigs is."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _as_codes(seq: str) -> np.ndarray:
    return _CODE[np.frombuffer(seq.encode("ascii"), dtype=np.uint8)]


def _mutate(codes: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Point mutations: each base changes with probability `rate`, always to a different base."""
    out = codes.copy()
    hit = rng.random(len(out)) < rate
    out[hit] = (out[hit] + rng.integers(1, 4, size=int(hit.sum()))) % 4
    return out


def _background(length: int, rng: np.random.Generator) -> np.ndarray:
    """Isochore-like GC segments, then CpG depletion (C->T or G->A at 3 of 4 CpGs)."""
    seg_lengths = np.maximum(5_000, rng.exponential(30_000, size=length // 5_000 + 2)).astype(np.int64)
    target = rng.uniform(0.35, 0.60, size=len(seg_lengths))
    # Depleting 3/4 of CpGs removes 0.1875 * gc^2 of G+C per base: draw richer so the result is on target.
    gc = np.repeat((1 - np.sqrt(1 - 0.75 * target)) / 0.375, seg_lengths)[:length]
    strong = rng.random(length) < gc
    pick = rng.integers(0, 2, size=length)
    codes = np.where(strong, 1 + pick, 3 * pick).astype(np.uint8)  # C/G when strong, else A/T
    cpg = np.flatnonzero((codes[:-1] == 1) & (codes[1:] == 2))
    cpg = cpg[rng.random(len(cpg)) < 0.75]
    to_t = rng.random(len(cpg)) < 0.5
    codes[cpg[to_t]] = 3  # C -> T on this strand
    codes[cpg[~to_t] + 1] = 0  # G -> A: the C -> T of the other strand
    return codes


def _repeat_consensi(seed: int) -> dict[str, np.ndarray]:
    rng = _rng(seed, 1_000_000)  # shared by all contigs of a genome, like real repeat families
    return {name: _background(size, rng) for name, (size, _, _) in _REPEAT_FAMILIES.items()}


def _contig(length: int, seed: int, index: int, consensi: dict[str, np.ndarray]) -> str:
    rng = _rng(seed, index)
    codes = _background(length, rng)
    soft = np.zeros(length, dtype=bool)
    max_copy = max(10, length // 10)

    def place(piece: np.ndarray, lower: bool) -> None:
        piece = piece[:length]
        start = int(rng.integers(0, length - len(piece) + 1))
        codes[start:start + len(piece)] = piece
        soft[start:start + len(piece)] = lower

    # Interspersed copies: mutated (2-20 % divergence), either strand, LINEs often 5'-truncated.
    names = list(_REPEAT_FAMILIES)
    weights = np.array([_REPEAT_FAMILIES[n][1] for n in names], dtype=float)
    mean_len = float(np.dot(weights, [_REPEAT_FAMILIES[n][0] for n in names]) / weights.sum())
    for _ in range(int(_REPEAT_SHARE * length / mean_len)):
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        copy = consensi[name]
        if _REPEAT_FAMILIES[name][2]:
            copy = copy[int(rng.integers(0, len(copy) - 200)):]
        copy = _mutate(copy[:max_copy], rng.uniform(0.02, 0.20), rng)
        place(copy if rng.random() < 0.5 else 3 - copy[::-1], lower=True)
    # Tandem repeats: microsatellites (1-6 bp units) and a few satellites (50-180 bp units).
    for _ in range(length // 5_000):
        unit = rng.integers(0, 4, size=int(rng.integers(1, 7)), dtype=np.uint8)
        place(_mutate(np.tile(unit, int(rng.integers(20, 151)) // len(unit) + 1), 0.03, rng), lower=True)
    for _ in range(max(1, length // 100_000)):
        unit = _background(int(rng.integers(50, 181)), rng)
        place(_mutate(np.tile(unit, int(rng.integers(5, 21))), 0.05, rng)[:max_copy], lower=True)
    # Motifs, upper case, either strand.
    for motif in DEMO_MOTIFS.values():
        m = _as_codes(motif)
        for _ in range(max(1, length // 20_000)):
            place(m if rng.random() < 0.5 else 3 - m[::-1], lower=False)
    # A few ambiguity codes and 2-3 runs of N (assembly gaps are upper case, never soft-masked).
    iupac_at = rng.integers(0, length, size=int(rng.integers(5, 11)))
    codes[iupac_at] = rng.choice(_IUPAC, size=len(iupac_at))
    soft[iupac_at] = False
    longest = max(10, min(2_000, length // 20))
    for _ in range(int(rng.integers(2, 4))):
        place(np.full(int(rng.integers(min(100, longest), longest + 1)), _N, dtype=np.uint8), lower=False)
    return np.where(soft, _LOWER[codes], _UPPER[codes]).tobytes().decode("ascii")


def synthetic_genome(n_contigs: int = 3, length: int = 300_000, seed: int = 0) -> list[tuple[str, str]]:
    """`n_contigs` contigs of `length` bp each, as (name, sequence); repeats in lower case."""
    if n_contigs < 1 or length < 1_000 or seed < 0:
        raise InputError(f"synthetic_genome: need n_contigs >= 1, length >= 1000 bp and seed >= 0; got "
                         f"n_contigs={n_contigs}, length={length}, seed={seed}.")
    consensi = _repeat_consensi(seed)
    return [(f"syn{i + 1}", _contig(length, seed, i, consensi)) for i in range(n_contigs)]


def write_synthetic_fasta(path: str | Path, n_contigs: int = 3, length: int = 300_000, seed: int = 0,
                          line_width: int = 80) -> Path:
    """Write `synthetic_genome(...)` as FASTA, gzipped when `path` ends in .gz; same seed, same bytes."""
    if line_width < 1:
        raise InputError(f"write_synthetic_fasta: line_width must be >= 1, got {line_width}.")
    path = Path(path)
    parts = []
    for name, seq in synthetic_genome(n_contigs, length, seed):
        parts.append(f">{name} synthetic seed={seed} length={len(seq)}\n")
        parts.extend(seq[i:i + line_width] + "\n" for i in range(0, len(seq), line_width))
    data = "".join(parts).encode("ascii")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)  # no name and mtime 0 in the gzip header: the bytes depend on the seed only
    else:
        path.write_bytes(data)
    return path


def motif_tolerance(motif: str) -> int:
    """Point mutations a planted motif may carry and still count as present.

    Scaled with length so that chance near-matches in 100 bp of background stay rare: a 6-mer must be
    exact, a 9-mer may differ at 1 base, a 12-mer or longer at 2.
    """
    return 2 if len(motif) >= 12 else 1 if len(motif) >= 9 else 0


def _min_mismatches(windows: np.ndarray, motif: np.ndarray) -> np.ndarray:
    """Per row of `windows` (n, L codes), the fewest mismatches of `motif` at any offset."""
    views = np.lib.stride_tricks.sliding_window_view(windows, len(motif), axis=1)
    return (views != motif).sum(axis=2).min(axis=1)


def _has_motif(windows: np.ndarray) -> np.ndarray:
    """True per row where any demo motif occurs, on either strand, within its tolerance."""
    found = np.zeros(len(windows), dtype=bool)
    for motif in DEMO_MOTIFS.values():
        m = _as_codes(motif)
        for strand in (m, 3 - m[::-1]):
            found |= _min_mismatches(windows, strand) <= motif_tolerance(motif)
    return found


def _demo_split(contig: str, n: int, length: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    codes = _CODE[np.frombuffer(contig.upper().encode("ascii"), dtype=np.uint8)]
    windows = codes[: len(codes) // length * length].reshape(-1, length)
    windows = windows[(windows < 4).all(axis=1)]  # A/C/G/T only, as GUE sequences are
    windows = windows[rng.permutation(len(windows))]
    n_pos = n // 2
    motifs = [_as_codes(m) for m in DEMO_MOTIFS.values()]
    tolerances = [motif_tolerance(m) for m in DEMO_MOTIFS.values()]

    def plant(window: np.ndarray, extra: int) -> np.ndarray:
        """Plant a motif with its tolerance + `extra` mutations at most (a decoy when extra > 0)."""
        i = int(rng.integers(len(motifs)))
        m = motifs[i] if rng.random() < 0.5 else 3 - motifs[i][::-1]
        low = tolerances[i] + 1 if extra else 0
        k = int(rng.integers(low, tolerances[i] + extra + 1))
        m = m.copy()
        at = rng.choice(len(m), size=k, replace=False)
        m[at] = (m[at] + rng.integers(1, 4, size=k)) % 4
        out = window.copy()
        start = int(rng.integers(0, length - len(m) + 1))
        out[start:start + len(m)] = m
        return out

    positives = np.stack([plant(w, 0) for w in windows[:n_pos]]) if n_pos else windows[:0]
    # Negatives: a third carry a decoy (a motif mutated past its tolerance), so that the task needs
    # the motif itself, not just its k-mers; any with a motif by chance are rejected.
    rest = windows[n_pos:]
    decoy = rng.random(len(rest)) < 1 / 3
    rest = np.stack([plant(w, 2) if d else w for w, d in zip(rest, decoy)]) if len(rest) else rest
    negatives = rest[~_has_motif(rest)][: n - n_pos]
    if len(negatives) < n - n_pos:
        raise InputError(f"write_demo_gue: the synthetic contig holds too few clean {length} bp windows "
                         f"for {n} rows; lower n or length.")
    rows = [(w, 1) for w in positives] + [(w, 0) for w in negatives]
    order = rng.permutation(len(rows))
    return [(_UPPER[rows[i][0]].tobytes().decode("ascii"), rows[i][1]) for i in order]


def write_demo_gue(out_dir: str | Path, seed: int = 0, n_train: int = 2000, n_dev: int = 300,
                   n_test: int = 300, length: int = 100) -> Path:
    """Write a GUE-style motif task: out_dir/demo/motif/{train,dev,test}.csv, header `sequence,label`.

    Label 1: a demo motif (`DEMO_MOTIFS`, either strand, with up to `motif_tolerance` point mutations)
    is planted in the sequence; label 0: none is present. Sequences (`length` bp, A/C/G/T) are windows
    of the synthetic genome, so both classes share its composition; train, dev and test come from
    different contigs, so no window is in two splits. Half of each split is positive. Returns the
    dataset folder (out_dir/demo/motif).
    """
    longest = max(len(m) for m in DEMO_MOTIFS.values())
    if length < longest or min(n_train, n_dev, n_test) < 2:
        raise InputError(f"write_demo_gue: need length >= {longest} bp and at least 2 rows per split; got "
                         f"length={length}, n_train={n_train}, n_dev={n_dev}, n_test={n_test}.")
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    # Room for ~1.6 candidate windows per row: N runs, IUPAC codes and chance motifs cost a few.
    contig_length = max(300_000, int(1.6 * max(sizes.values()) * length))
    genome = synthetic_genome(n_contigs=3, length=contig_length, seed=seed)
    out = Path(out_dir) / "demo" / "motif"
    out.mkdir(parents=True, exist_ok=True)
    for k, (split, n) in enumerate(sizes.items()):
        rows = _demo_split(genome[k][1], n, length, _rng(seed, 2_000_000 + k))
        text = "sequence,label\n" + "".join(f"{s},{label}\n" for s, label in rows)
        (out / f"{split}.csv").write_text(text)
    return out
