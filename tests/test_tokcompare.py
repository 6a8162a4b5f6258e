"""The tokenizer comparison: its figures on sequences whose answer is known by hand, sane ranges on the
real genomes, the report and plots written, and the command line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from megadna.cli.compare_tokenizers import main as compare_main
from megadna.errors import InputError
from megadna.experiments.tokcompare import CompareConfig, changed_tokens, compare, measure, mutation_probe, run_comparison, sample_windows
from megadna.tokenizers import get_tokenizer, train_bpe

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
QUICK = dict(speed_seconds=0.0, mutations=200)


def _random_dna(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(n))


def de_bruijn(k: int) -> str:
    """A linear de Bruijn sequence over ACGT: every k-mer exactly once (length 4^k + k - 1)."""
    a = [0] * (k + 1)
    seq: list[int] = []

    def db(t, p):
        if t > k:
            if k % p == 0:
                seq.extend(a[1 : p + 1])
        else:
            a[t] = a[t - p]
            db(t + 1, p)
            for j in range(a[t - p] + 1, 4):
                a[t] = j
                db(t + 1, t)

    db(1, 1)
    cyclic = "".join("ACGT"[i] for i in seq)
    return cyclic + cyclic[: k - 1]


def _measure(spec: str, windows: list[str], **cfg) -> dict:
    cfg = CompareConfig(**{**QUICK, **cfg})
    return measure(get_tokenizer(spec), windows, mutation_probe(windows, cfg.mutations, cfg.mutation_margin_bp, cfg.seed), cfg)


@pytest.mark.parametrize("n", [20, 510, 5000])
@pytest.mark.parametrize("k", [3, 6])
def test_bp_per_token_known_by_hand(n, k):
    windows = [_random_dna(n, seed) for seed in range(3)]
    over = _measure(f"kmer{k}", windows)
    assert over["bp_per_token"] == pytest.approx(n / (n - k + 1), rel=1e-12)
    assert over["tokens_per_window"]["mean"] == n - k + 1 == over["tokens_per_window"]["p5"] == over["tokens_per_window"]["p95"]
    non = _measure(f"nkmer{k}", windows)
    assert non["bp_per_token"] == pytest.approx(n / (n // k + n % k), rel=1e-12)
    assert _measure("base", windows)["bp_per_token"] == 1.0
    if n % k == 0:
        assert non["bp_per_token"] == k
    # overlapping k-mers go to 1 bp/token for long windows, non-overlapping to k
    if n == 5000:
        assert over["bp_per_token"] < 1.002


def test_mutation_spread_is_k_for_overlapping_and_one_otherwise():
    windows = [_random_dna(510, seed) for seed in range(5)]
    for k in (3, 6):
        over = _measure(f"kmer{k}", windows, mutations=300)
        assert over["mutation_spread"]["min"] == over["mutation_spread"]["max"] == k
        assert over["mutation_spread_hist"] == {str(k): 300}
        non = _measure(f"nkmer{k}", windows, mutations=300)
        assert non["mutation_spread"]["min"] == non["mutation_spread"]["max"] == 1
    assert _measure("base", windows)["mutation_spread"]["max"] == 1


def test_bpe_mutation_spread_is_at_least_one(tmp_path):
    windows = [_random_dna(510, seed) for seed in range(40)]
    bpe = train_bpe(windows, 300, tmp_path / "bpe")
    spread = measure(bpe, windows, mutation_probe(windows, 300, 16, 0), CompareConfig(**QUICK))["mutation_spread"]
    assert 1 <= spread["min"] and spread["mean"] >= 1 and spread["max"] <= 40


def test_changed_tokens():
    a = np.array([1, 2, 3, 4, 5])
    assert changed_tokens(a, a.copy()) == 0
    assert changed_tokens(a, np.array([1, 2, 9, 4, 5])) == 1
    assert changed_tokens(a, np.array([1, 9, 9, 9, 5])) == 3
    assert changed_tokens(a, np.array([1, 2, 7, 8, 4, 5])) == 2  # 3 -> 7 8: a re-segmentation counts the longer side
    assert changed_tokens(np.array([1, 1, 1]), np.array([1, 1])) == 1  # repeats: prefix and suffix never overlap


def test_unk_and_fallback_rates_with_known_n():
    n, k = 600, 6
    seq = list(_random_dna(n, 7))
    n_positions = [60, 200, 333, 480]  # in different 6-bp chunks, >= k apart, away from the ends
    for p in n_positions:
        seq[p] = "N"
    window = "".join(seq)
    m = len(n_positions)
    over = _measure("kmer6", [window])
    assert over["unk_rate"] == pytest.approx(m * k / (n - k + 1))  # an N poisons the k k-mers that cover it
    assert over["fallback_rate"] == over["unk_rate"]
    non = _measure("nkmer6", [window])
    tokens = n // k - m + m * k  # each chunk with an N becomes k single bases
    assert non["tokens"] == tokens
    assert non["fallback_rate"] == pytest.approx(m * k / tokens) and non["unk_rate"] == 0
    base = _measure("base", [window])
    assert base["fallback_rate"] == pytest.approx(m / n) and base["unk_rate"] == 0


def test_vocabulary_utilisation_on_known_kmer_sets():
    # Every 3-mer exactly once: the whole vocabulary, uniformly: 6 bits, normalized entropy 1.
    r = _measure("kmer3", [de_bruijn(3)], mutations=0)
    assert r["vocab_seen"] == 64 and r["vocab_utilisation"] == 1.0
    assert r["entropy_bits"] == pytest.approx(6.0) and r["entropy_normalized"] == pytest.approx(1.0)
    assert r["vocab_curve"]["share"][-1] == pytest.approx(1.0)
    # ACGT repeated: four 3-mers (ACG CGT GTA TAC), equally often: 4/64 of the vocabulary, 2 bits.
    r = _measure("kmer3", ["ACGT" * 25 + "AC"], mutations=0)
    assert r["vocab_seen"] == 4 and r["vocab_utilisation"] == pytest.approx(4 / 64)
    assert r["entropy_bits"] == pytest.approx(2.0) and r["effective_vocab"] == pytest.approx(4.0)
    assert r["top_entries_for_90pct"] == 4
    # Non-overlapping 3-mers of the same sequence: ACG TAC GTA CGT repeat with period 12 bp.
    r = _measure("nkmer3", ["ACGT" * 24], mutations=0)
    assert r["vocab_seen"] == 4 and r["token_span_bp"] == {"3": 1.0}
    assert _measure("base", ["ACGT" * 10], mutations=0)["vocab_seen"] == 4  # N is never seen: 4 of 5


def test_sample_is_deterministic_and_bounded(shared_data):
    fasta = [shared_data / "genomes" / "C.elegans.fa.gz"]
    cfg = CompareConfig(window=200, max_bp=50_000, seed=3)
    a, info = sample_windows(fasta=fasta, cfg=cfg)
    b, _ = sample_windows(fasta=fasta, cfg=cfg)
    assert a == b and len(a) == 250 and info["bp"] == 50_000 and all(len(w) == 200 for w in a)
    c, _ = sample_windows(fasta=fasta, cfg=CompareConfig(window=200, max_bp=50_000, seed=4))
    assert c != a
    with pytest.raises(InputError, match="one of the two"):
        sample_windows(cfg=cfg)


def test_shards_window_must_match(real_shards):
    windows, info = sample_windows(shards=real_shards, cfg=CompareConfig(window=0, max_bp=20_000))
    assert info["window_bp"] == 510 and len(windows) == 20_000 // 510
    with pytest.raises(InputError, match="510-bp windows"):
        sample_windows(shards=real_shards, cfg=CompareConfig(window=100))


def test_real_genomes_sane_ranges_and_plots(shared_data, tmp_path):
    g = shared_data / "genomes"
    fasta = [g / "C.elegans.fa.gz", g / "D.melanogaster.fa.gz", g / "A.thaliana.fa.gz"]
    cfg = CompareConfig(max_bp=150_000, mutations=300, speed_seconds=0.02)
    report = run_comparison(["kmer6", "nkmer6", "base"], tmp_path, fasta=fasta, train_bpe_sizes=[512], cfg=cfg)
    rows = report["tokenizers"]
    assert list(rows) == ["kmer6", "nkmer6", "base", "bpe512"]
    assert rows["kmer6"]["bp_per_token"] == pytest.approx(510 / 505)
    assert 5.9 < rows["nkmer6"]["bp_per_token"] <= 6.0
    assert rows["base"]["bp_per_token"] == 1.0
    assert 2.5 < rows["bpe512"]["bp_per_token"] < 6.0
    assert rows["kmer6"]["vocab_utilisation"] > 0.9 and 0.85 < rows["kmer6"]["entropy_normalized"] < 1.0
    assert 1.8 < rows["base"]["entropy_bits"] <= 2.0 + 1e-9  # four bases, nearly uniform; N is rare
    assert rows["kmer6"]["mutation_spread"]["mean"] == 6 and rows["nkmer6"]["mutation_spread"]["mean"] == 1
    assert 1 <= rows["bpe512"]["mutation_spread"]["mean"] < 4
    for r in rows.values():
        assert 0 <= r["fallback_rate"] < 0.02 and r["speed"]["tokens_per_s"] > 0 and r["speed"]["bp_per_s"] > 0
    for name in ("token_length.png", "bp_per_token.png", "vocab_use.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    md = (tmp_path / "report.md").read_text()
    assert "| kmer6 | 4,101 | 1.010 |" in md and "## Reading" in md
    assert json.loads((tmp_path / "report.json").read_text())["tokenizers"]["bpe512"]["vocab_size"] == 512
    assert (tmp_path / "bpe512" / "megadna_tokenizer.json").is_file()


def test_cli(shared_data, tmp_path, capsys):
    fa = str(shared_data / "genomes" / "C.elegans.fa.gz")
    assert compare_main(["--fasta", fa, "--tokenizers", "kmer4,base", "--max_bp", "20000", "--speed_seconds", "0",
                         "--mutations", "50", "--out", str(tmp_path)]) == 0
    assert "| kmer4 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        compare_main(["--fasta", fa, "--tokenizers", "kmer99", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "kmer99" in capsys.readouterr().err


def test_compare_uses_the_same_windows_for_every_tokenizer():
    windows = [_random_dna(300, s) for s in range(4)]
    report = compare({"kmer6": get_tokenizer("kmer6"), "nkmer6": get_tokenizer("nkmer6")}, windows, CompareConfig(**QUICK))
    assert report["mutation_probes"] == 200
    assert {r["tokens"] for r in report["tokenizers"].values()} == {4 * 295, 4 * 50}
