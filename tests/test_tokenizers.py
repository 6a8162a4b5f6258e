"""Tokenizers: ids against plain-Python references, round trips, batch layout, save/load, HF parity, BPE.

The references below (`ref_*`) are deliberately naive loops over the sequence: the library's
vectorized code must agree with them, which is what can break when the numpy gets clever.
"""

from __future__ import annotations

import gzip
import re
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megadna.errors import InputError
from megadna.tokenizers import (
    CLS_ID,
    N_SPECIAL,
    PAD_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    UNK_ID,
    DNATokenizer,
    get_tokenizer,
    load_tokenizer,
    train_bpe,
    training_chunks,
)

KS = range(1, 9)
SETTINGS = settings(max_examples=60, deadline=None)


@lru_cache(maxsize=None)
def tok(spec: str) -> DNATokenizer:
    return get_tokenizer(spec)


def acgt(min_size=0, max_size=200):
    return st.text(alphabet="ACGT", min_size=min_size, max_size=max_size)


def acgtn(min_size=0, max_size=200):
    # N-heavy on purpose so that chunks and k-mers with N actually occur
    return st.text(alphabet="ACGTNN", min_size=min_size, max_size=max_size)


# ---------------------------------------------------------------------------------------------
# Plain-Python references
# ---------------------------------------------------------------------------------------------


def ref_overlapping(seq: str, k: int, vocab: list[str]) -> list[int]:
    index = {t: i for i, t in enumerate(vocab)}
    return [index.get(seq[i : i + k], UNK_ID) for i in range(len(seq) - k + 1)]


def ref_non_overlapping(seq: str, k: int, vocab: list[str]) -> list[int]:
    index = {t: i for i, t in enumerate(vocab)}
    ids = []
    for start in range(0, len(seq), k):
        chunk = seq[start : start + k]
        if len(chunk) == k and "N" not in chunk:
            ids.append(index[chunk])
        else:
            ids.extend(index[b] for b in chunk)
    return ids


# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------


def test_kmer6_vocab_is_dnabert_layout():
    t = tok("kmer6")
    assert t.vocab_size == len(t.vocab) == 4101
    assert t.vocab[:N_SPECIAL] == list(SPECIAL_TOKENS)
    assert t.vocab[5:8] == ["AAAAAA", "AAAAAC", "AAAAAG"] and t.vocab[-1] == "TTTTTT"
    assert t.vocab[5:] == sorted(t.vocab[5:])
    assert (t.k, t.overlapping, t.name) == (6, True, "kmer6")


@pytest.mark.parametrize("k", KS)
def test_vocab_sizes_and_no_duplicates(k):
    over, non = tok(f"kmer{k}"), tok(f"nkmer{k}")
    assert over.vocab_size == N_SPECIAL + 4**k
    assert non.vocab_size == N_SPECIAL + 4**k + (5 if k > 1 else 1)  # k = 1 shares A/C/G/T
    for t in (over, non):
        assert len(set(t.vocab)) == t.vocab_size
        assert t.vocab[:N_SPECIAL] == list(SPECIAL_TOKENS)


def test_single_base_vocab():
    t = tok("base")
    assert t.vocab == list(SPECIAL_TOKENS) + list("ACGTN")
    assert (t.k, t.overlapping) == (1, False)
    assert t.encode("ACGTN").tolist() == [5, 6, 7, 8, 9]


# ---------------------------------------------------------------------------------------------
# Overlapping k-mers
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(k=st.sampled_from(KS), data=st.data())
def test_overlapping_round_trip_and_count(k, data):
    seq = data.draw(acgt(min_size=k))
    t = tok(f"kmer{k}")
    ids = t.encode(seq)
    assert ids.dtype == np.int32
    assert len(ids) == len(seq) - k + 1 == t.num_tokens(len(seq))
    assert t.decode(ids) == seq


@SETTINGS
@given(k=st.sampled_from(KS), data=st.data())
def test_overlapping_matches_reference_with_n(k, data):
    seq = data.draw(acgtn())
    t = tok(f"kmer{k}")
    assert t.encode(seq).tolist() == ref_overlapping(seq, k, t.vocab)


@SETTINGS
@given(k=st.sampled_from(KS), data=st.data())
def test_overlapping_decode_keeps_bases_that_a_clean_kmer_covers(k, data):
    seq = data.draw(acgtn(min_size=k))
    t = tok(f"kmer{k}")
    decoded = t.decode(t.encode(seq))
    assert len(decoded) == len(seq)  # [UNK] k-mers hold their place
    for i, base in enumerate(decoded):
        covered = any("N" not in seq[j : j + k] for j in range(max(0, i - k + 1), min(i, len(seq) - k) + 1))
        assert base == (seq[i] if covered else "N")


def test_overlapping_n_gives_unk_and_short_input_gives_nothing():
    t = tok("kmer6")
    ids = t.encode("ACGTACNACGTAC")
    assert ids.tolist() == [t.vocab.index("ACGTAC")] + [UNK_ID] * 6 + [t.vocab.index("ACGTAC")]
    assert t.encode("ACGTA").size == 0 and t.num_tokens(5) == 0


# ---------------------------------------------------------------------------------------------
# Non-overlapping k-mers and single bases
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(k=st.sampled_from(KS), data=st.data())
def test_non_overlapping_matches_reference_and_round_trips(k, data):
    seq = data.draw(acgtn())
    t = tok(f"nkmer{k}")
    ids = t.encode(seq)
    assert ids.tolist() == ref_non_overlapping(seq, k, t.vocab)
    assert t.decode(ids) == seq


@SETTINGS
@given(k=st.sampled_from(KS), data=st.data())
def test_non_overlapping_count_without_n(k, data):
    seq = data.draw(acgt())
    t = tok(f"nkmer{k}")
    # full k-mers, then the tail as single bases
    assert len(t.encode(seq)) == t.num_tokens(len(seq)) == len(seq) // k + len(seq) % k


@SETTINGS
@given(seq=acgtn())
def test_single_base_round_trip(seq):
    t = tok("base")
    ids = t.encode(seq)
    assert len(ids) == len(seq) == t.num_tokens(len(seq))
    assert t.decode(ids) == seq


@pytest.mark.parametrize("spec", ["kmer6", "nkmer6", "base"])
def test_lower_case_and_iupac_read_as_upper_case_and_n(spec):
    t = tok(spec)
    assert t.encode("acgtacKSYacgtacgt").tolist() == t.encode("ACGTACNNNACGTACGT").tolist()
    assert t.encode(b"ACGTACNNNACGTACGT").tolist() == t.encode("ACGTACNNNACGTACGT").tolist()


@pytest.mark.parametrize("spec", ["kmer6", "nkmer6", "base"])
def test_decode_skips_pad_cls_sep_and_rejects_foreign_ids(spec):
    t = tok(spec)
    seq = "ACGTACGTTGCA"
    ids = [CLS_ID, *t.encode(seq).tolist(), SEP_ID, PAD_ID, PAD_ID]
    assert t.decode(ids) == seq
    with pytest.raises(InputError, match="outside the vocabulary"):
        t.decode([t.vocab_size])


# ---------------------------------------------------------------------------------------------
# encode_batch
# ---------------------------------------------------------------------------------------------


def expected_rows(t: DNATokenizer, seqs, max_tokens):
    ids = np.zeros((len(seqs), max_tokens), dtype=np.int64)
    mask = np.zeros((len(seqs), max_tokens), dtype=np.int64)
    for i, s in enumerate(seqs):
        row = [CLS_ID, *t.encode(s).tolist()[: max_tokens - 2], SEP_ID]
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


@SETTINGS
@given(
    spec=st.sampled_from(["kmer3", "kmer6", "nkmer3", "nkmer6", "base"]),
    n_bp=st.integers(0, 40),
    batch=st.integers(1, 5),
    max_tokens=st.integers(2, 48),
    data=st.data(),
)
def test_encode_batch_layout_equal_lengths(spec, n_bp, batch, max_tokens, data):
    # Equal lengths take the 2-D fast path; N in some rows makes nkmer fall back to the row path.
    seqs = data.draw(st.lists(acgtn(n_bp, n_bp), min_size=batch, max_size=batch))
    t = tok(spec)
    out = t.encode_batch(seqs, max_tokens)
    ids, mask = expected_rows(t, seqs, max_tokens)
    assert out["input_ids"].dtype == out["attention_mask"].dtype == np.int64
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["attention_mask"], mask)


@pytest.mark.parametrize("spec", ["kmer6", "nkmer6", "base"])
def test_encode_batch_ragged_truncates_and_pads(spec):
    t = tok(spec)
    seqs = ["ACGTACGTACGTAC" * 8, "ACGTACG", "", "acgtNNacgtacgtacgt"]
    out = t.encode_batch(seqs, 12)
    ids, mask = expected_rows(t, seqs, 12)
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["attention_mask"], mask)
    first = out["input_ids"][0]
    assert first[0] == CLS_ID and first[-1] == SEP_ID  # truncated to max_tokens - 2 tokens
    assert (out["input_ids"][2][:3] == [CLS_ID, SEP_ID, PAD_ID]).all()


def test_encode_batch_fast_path_on_real_windows(genome):
    windows = [genome["Chr1"][i : i + 510] for i in range(0, 64 * 510, 510)]
    t = tok("kmer6")
    out = t.encode_batch(windows, 512)
    assert out["input_ids"].shape == (64, 512)
    assert (out["attention_mask"].sum(axis=1) == 507).all()  # [CLS] + 505 k-mers + [SEP]
    ids, _ = expected_rows(t, windows, 512)
    np.testing.assert_array_equal(out["input_ids"], ids)


@pytest.mark.parametrize("max_tokens", [1, 0, 2.5])
def test_encode_batch_rejects_no_room_for_specials(max_tokens):
    with pytest.raises(InputError, match="max_tokens"):
        tok("kmer6").encode_batch(["ACGTACGT"], max_tokens)


# ---------------------------------------------------------------------------------------------
# get_tokenizer, save/load
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["kmer0", "kmer9", "nkmer12", "kmer", "kmer-6", "KMER6", "bpe4096", "bpe", "wordpiece", ""])
def test_get_tokenizer_rejects_bad_specs(spec):
    with pytest.raises(InputError, match=r"kmer<k>.*nkmer<k>.*'base'"):
        get_tokenizer(spec)


def test_load_tokenizer_names_the_problem(tmp_path):
    with pytest.raises(InputError, match="megadna_tokenizer.json"):
        load_tokenizer(tmp_path)
    (tmp_path / "megadna_tokenizer.json").write_text('{"type": "kmer", "k": 6, "overlapping": true, "vocab_size": 99}')
    with pytest.raises(InputError, match="vocab_size 99"):
        load_tokenizer(tmp_path)
    (tmp_path / "megadna_tokenizer.json").write_text('{"type": "kmer", "k": 12, "overlapping": false}')
    with pytest.raises(InputError, match=r"megadna_tokenizer.json: .*k must be an integer from 1 to 8"):
        load_tokenizer(tmp_path)
    (tmp_path / "megadna_tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("spec", ["kmer6", "kmer3", "nkmer6", "nkmer1", "base"])
def test_save_load_round_trip(spec, tmp_path):
    t = tok(spec)
    t.save(tmp_path)
    for loaded in (load_tokenizer(tmp_path), get_tokenizer(str(tmp_path))):
        assert type(loaded) is type(t)
        assert (loaded.name, loaded.k, loaded.overlapping, loaded.vocab) == (t.name, t.k, t.overlapping, t.vocab)
        assert loaded.to_dict() == t.to_dict()
    assert (tmp_path / "vocab.txt").read_text().split("\n")[:-1] == t.vocab


# ---------------------------------------------------------------------------------------------
# Real genome: BPE and Hugging Face parity
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def genome(shared_data):
    """A. thaliana records (first 1% of each): N runs of 1000/120/100 bp and IUPAC K/S/Y in Chr2.

    Read with gzip here, not megadna.data.genome, so these tests stand on their own.
    """
    records, name = {}, None
    with gzip.open(shared_data / "genomes" / "A.thaliana.fa.gz", "rt") as f:
        for line in f:
            if line.startswith(">"):
                name = line[1:].split()[0]
                records[name] = []
            else:
                records[name].append(line.strip())
    return {name: "".join(parts) for name, parts in records.items()}


@pytest.fixture(scope="module")
def test_windows(genome):
    """510-bp windows: every 20 kbp of Chr2/Chr3, and one straddling each non-ACGT run of Chr2."""
    windows = []
    for name in ("Chr2", "Chr3"):
        seq = genome[name]
        windows += [seq[i : i + 510] for i in range(0, len(seq) - 510, 20_000)]
    seq = genome["Chr2"]
    windows += [seq[max(0, m.start() - 255) :][:510] for m in re.finditer("[^ACGT]+", seq)][:40]
    assert any("N" in w for w in windows) and any(set(w) & set("KSY") for w in windows)
    return windows


@pytest.fixture(scope="module")
def bpe(genome, tmp_path_factory):
    """A 256-token BPE trained on 200 kbp of A. thaliana Chr2 (which has N runs and IUPAC codes)."""
    return train_bpe([genome["Chr2"][:200_000]], 256, tmp_path_factory.mktemp("bpe256"))


def test_bpe_vocab_keeps_special_ids(bpe, genome):
    assert bpe.vocab_size == 256 and bpe.name == "bpe256"
    assert bpe.vocab[:N_SPECIAL] == list(SPECIAL_TOKENS)
    assert bpe.vocab[N_SPECIAL] == "N"  # one token per N, never merged
    assert set("".join(bpe.vocab[N_SPECIAL:])) == set("ACGTN")  # no whitespace marker, no IUPAC
    assert bpe.k is None and bpe.num_tokens(510) is None and bpe.overlapping is False
    trained_on = genome["Chr2"][:200_000]
    assert bpe.training["n_bp"] == len(re.sub("[^ACGT]", "", trained_on)) < len(trained_on)  # N/IUPAC left out


def test_bpe_round_trip_on_real_windows(bpe, test_windows):
    normalized = [re.sub("[^ACGT]", "N", w) for w in test_windows]
    for window, expected in zip(test_windows, normalized):
        ids = bpe.encode(window)
        assert ids.min() >= N_SPECIAL  # no [UNK]: every non-ACGT base is an N token
        assert bpe.decode(ids) == expected
        assert len(ids) < len(window) or set(expected) == {"N"}  # it does compress
    out = bpe.encode_batch(test_windows, 128)
    ids, mask = expected_rows(bpe, test_windows, 128)
    np.testing.assert_array_equal(out["input_ids"], ids)
    np.testing.assert_array_equal(out["attention_mask"], mask)


def test_bpe_save_load_round_trip(bpe, test_windows, tmp_path):
    bpe.save(tmp_path)
    loaded = get_tokenizer(str(tmp_path))
    assert loaded.vocab == bpe.vocab and loaded.training == bpe.training
    for w in test_windows[:10]:
        assert loaded.encode(w).tolist() == bpe.encode(w).tolist()


def test_train_bpe_refuses_to_overwrite_and_explains_too_little_data(bpe, tmp_path):
    bpe.save(tmp_path)
    with pytest.raises(InputError, match="already holds a tokenizer"):
        train_bpe(["ACGT" * 1000], 64, tmp_path)
    with pytest.raises(InputError, match="smaller vocab_size"):
        train_bpe(["ACGTTGCA" * 50], 4096, tmp_path / "new")
    with pytest.raises(InputError, match="no A/C/G/T"):
        train_bpe(["NNNN"], 64, tmp_path / "new")


def test_training_chunks_cut_at_n_and_iupac_and_respect_max_bp():
    seq = "ACGTACGTAC" + "N" * 5 + "acgtK" + "TTTTTTT"
    assert list(training_chunks([seq], chunk_bp=4)) == ["ACGT", "ACGT", "AC", "ACGT", "TTTT", "TTT"]
    assert list(training_chunks([seq], chunk_bp=4, max_bp=9)) == ["ACGT", "ACGT", "A"]


@pytest.mark.parametrize("spec", ["kmer6", "nkmer6", "base", "bpe"])
def test_hugging_face_tokenizer_gives_our_ids(spec, bpe, test_windows, tmp_path):
    transformers = pytest.importorskip("transformers")
    t = bpe if spec == "bpe" else tok(spec)
    t.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    hf_ids = hf([t.to_hf_text(w) for w in test_windows])["input_ids"]
    for window, theirs in zip(test_windows, hf_ids):
        assert theirs == [CLS_ID, *t.encode(window).tolist(), SEP_ID]
    assert hf.mask_token_id == 4 and hf.pad_token_id == PAD_ID


def test_to_hf_text_is_the_dnabert_format():
    assert tok("kmer3").to_hf_text("ACGTA") == "ACG CGT GTA"
    assert tok("kmer3").to_hf_text("AC") == ""
    assert tok("nkmer3").to_hf_text("ACGTNAC") == "ACG T N A C"
    assert tok("base").to_hf_text("acgN") == "A C G N"


def test_train_bpe_command_line(shared_data, tmp_path, capsys):
    pytest.importorskip("megadna.data.genome")  # the CLI reads FASTA through the genome reader
    from megadna.cli.train_bpe import main

    fasta = shared_data / "genomes" / "A.thaliana.fa.gz"
    out = tmp_path / "bpe"
    main(["--fasta", str(fasta), "--vocab_size", "128", "--max_bp", "50000", "--out", str(out)])
    assert load_tokenizer(out).training["n_bp"] == 50_000
    with pytest.raises(SystemExit) as exit_info:
        main(["--fasta", str(tmp_path / "missing.fa"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "missing.fa" in capsys.readouterr().err


def test_bpe_corpus_from_shards_refuses_a_shard_the_manifest_does_not_describe(altered_shards):
    from megadna.tokenizers.bpe_corpus import shard_sequences

    shards, altered = altered_shards
    with pytest.raises(InputError, match=altered):
        list(shard_sequences(shards))  # a changed base, in a tar that still parses: only the sha256 tells
