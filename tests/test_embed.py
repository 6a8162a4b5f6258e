"""`megadna embed`: one vector per sequence, long sequences tiled (never cut), bad input refused clearly.

A tiny random model (kmer6, 64 positions: 62 tokens = 67 bp per window) written as an export, so
the command goes through load_pretrained as a user's would; vectors are checked against plain
forward passes of the same model computed here by hand.
"""

import gzip
import re

import numpy as np
import pytest
import torch

from megadna.cli.main import main as megadna_main
from megadna.infer.embed import embed_sequences, window_starts
from megadna.model.heads import pool
from megadna.model.pretrained import load_pretrained
from megadna.tokenizers import get_tokenizer

POSITIONS = 64
MAX_TOKENS = POSITIONS - 2


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from megadna.model import BertForMLM, model_config
    from megadna.model.export import write_hf_dir

    tok = get_tokenizer("kmer6")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("embed_model") / "model"
    write_hf_dir(BertForMLM(model_config("tiny", tok.vocab_size, max_position_embeddings=POSITIONS)), tok, out)
    return out


@pytest.fixture(scope="module")
def loaded(export_dir):
    model, tok, _ = load_pretrained(export_dir)
    return model, tok


def _random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def _embed(tmp_path, export_dir, path, *flags, out="emb"):
    prefix = tmp_path / out
    code = megadna_main(["embed", "--model", str(export_dir), "--input", str(path), "--out", str(prefix), "--progress", "false", *flags])
    assert code == 0
    index = (tmp_path / f"{out}.csv").read_text().splitlines()
    return np.load(tmp_path / f"{out}.npy"), [line.split(",") for line in index]


@torch.no_grad()
def _plain_pass(model, ids_rows, pooling="mean", layer=-1):
    """Rows of token ids -> pooled vectors, one unpadded forward each: [CLS] tokens [SEP]."""
    out = []
    for ids in ids_rows:
        x = torch.tensor([[2, *ids.tolist(), 3]])
        h = model.bert.hidden_states(x, torch.ones_like(x))[layer]
        out.append(pool(h, torch.ones_like(x), pooling)[0].numpy())
    return np.stack(out)


def test_a_short_sequence_is_exactly_one_plain_pass(tmp_path, export_dir, loaded):
    model, tok = loaded
    seq = _random_dna(60, seed=1)  # 55 tokens: fits 62
    (tmp_path / "one.fa").write_text(f">s1\n{seq}\n")
    for pooling, layer in (("mean", -1), ("cls", -1), ("mean", 0), ("mean", 1)):
        vec, index = _embed(tmp_path, export_dir, tmp_path / "one.fa", "--pooling", pooling, "--layer", str(layer), "--overwrite", "true")
        batch = tok.encode_batch([seq], 55 + 2)  # what any user would feed the model
        ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
        with torch.no_grad():
            expected = pool(model.bert.hidden_states(ids, mask)[layer], mask, pooling).numpy()
        np.testing.assert_array_equal(vec, expected)
        assert vec.dtype == np.float32 and vec.shape == (1, 64)
        assert index == [["row", "id", "length_bp", "n_windows"], ["0", "s1", "60", "1"]]


def test_a_long_sequence_is_tiled_into_windows_and_averaged_not_cut(loaded):
    model, tok = loaded
    seq = _random_dna(3 * (MAX_TOKENS + 5), seed=2)  # 201 bp: 196 tokens, three times the model's 62
    ids = tok.encode(seq)
    for pooling in ("mean", "cls"):
        vec, n_windows = embed_sequences(model.bert, tok, [seq], max_tokens=MAX_TOKENS, pooling=pooling, overlap_bp=20)
        # By hand: windows of 62 tokens (67 bp) sharing 20 bp = 15 tokens: a step of 47, the last one flush with the end.
        starts = [0, 47, 94, 134]
        assert n_windows.tolist() == [4] and window_starts(len(ids), MAX_TOKENS, 15).tolist() == starts
        windows = _plain_pass(model, [ids[a : a + MAX_TOKENS] for a in starts], pooling)
        np.testing.assert_allclose(vec[0], windows.mean(0), rtol=1e-5, atol=1e-6)  # equal weights: every window is full
        truncated = _plain_pass(model, [ids[:MAX_TOKENS]], pooling)[0]
        assert not np.allclose(vec[0], truncated, atol=1e-3)
    # Just over one window, with no overlap asked: windows [0, 62) and [3, 65) (flush with the end).
    short = _random_dna(MAX_TOKENS + 5 + 3, seed=3)  # 65 tokens
    vec, n_windows = embed_sequences(model.bert, tok, [short], max_tokens=MAX_TOKENS, overlap_bp=0)
    sids = tok.encode(short)
    assert n_windows.tolist() == [2]
    np.testing.assert_allclose(vec[0], _plain_pass(model, [sids[:62], sids[3:]]).mean(0), rtol=1e-5, atol=1e-6)


def test_batches_sorted_by_length_come_back_in_input_order(loaded):
    model, tok = loaded
    seqs = [_random_dna(n, seed=n) for n in (30, 200, 8, 61, 45, 68)]
    vec, n_windows = embed_sequences(model.bert, tok, seqs, max_tokens=MAX_TOKENS, batch_size=2)
    one_by_one = np.concatenate([embed_sequences(model.bert, tok, [s], max_tokens=MAX_TOKENS)[0] for s in seqs])
    np.testing.assert_allclose(vec, one_by_one, rtol=1e-5, atol=1e-6)  # padding in a batch changes only rounding
    assert n_windows.tolist() == [1, 4, 1, 1, 1, 2]


def test_fasta_gz_and_csv_inputs_give_the_same_vectors_with_case_and_iupac_as_in_pretraining(tmp_path, export_dir, loaded):
    model, tok = loaded
    raw = ["acgtRYKMacgtacgtttgacNNNacgtagctagctagcgcgatcga", _random_dna(150, seed=4)]
    with gzip.open(tmp_path / "in.fa.gz", "wt") as f:
        f.write(f">first desc\n{raw[0][:20]}\n{raw[0][20:]}\n>second\n{raw[1]}\n")
    (tmp_path / "in.csv").write_text("name,sequence\n" + "".join(f"n{i},{s}\n" for i, s in enumerate(raw)))
    (tmp_path / "noid.csv").write_text("sequence\n" + "".join(f"{s}\n" for s in raw))
    fa, fa_index = _embed(tmp_path, export_dir, tmp_path / "in.fa.gz", out="fa_emb")
    cs, cs_index = _embed(tmp_path, export_dir, tmp_path / "in.csv", out="cs_emb")
    _, noid_index = _embed(tmp_path, export_dir, tmp_path / "noid.csv", out="noid_emb")
    np.testing.assert_array_equal(fa, cs)
    normalized = ["ACGTNNNNACGTACGTTTGACNNNACGTAGCTAGCTAGCGCGATCGA", raw[1]]
    np.testing.assert_allclose(fa, embed_sequences(model.bert, tok, normalized, max_tokens=MAX_TOKENS)[0], rtol=1e-5, atol=1e-6)
    assert [r[1] for r in fa_index[1:]] == ["first", "second"]
    assert [r[1] for r in cs_index[1:]] == ["n0", "n1"]
    assert [r[1] for r in noid_index[1:]] == ["0", "1"]
    assert [r[2:] for r in cs_index[1:]] == [["47", "1"], ["150", "3"]]


def test_real_gue_csv(tmp_path, export_dir, shared_data):
    vec, index = _embed(tmp_path, export_dir, shared_data / "gue" / "mouse" / "0" / "dev.csv")  # sequence,label: label ignored
    assert vec.shape == (810, 64) and np.isfinite(vec).all()
    assert index[1][:3] == ["0", "0", "101"] and index[1][3] in ("1", "2")


@pytest.mark.parametrize("name, text, message", [
    ("digit.csv", "id,sequence\na,ACGT\nb,ACG7T\n", r"digit\.csv, line 3: '7' at base 4 is not a nucleotide code"),
    ("j.fa", ">r1\nACGT\n>r2\nACGJT\n", r"j\.fa, record 'r2', line 4, column 4: 'J' is not a nucleotide code"),
    ("empty.fa", "", r"empty\.fa: no FASTA records"),
    ("empty.csv", "", r"empty\.csv, line 1: the file is empty"),
    ("header_only.csv", "sequence\n", r"header_only\.csv: no rows after the header"),
    ("nocol.csv", "seq,label\nACGTACGT,0\n", r"nocol\.csv, line 1: no 'sequence' column"),
    ("blank.csv", "sequence\nACGTACGT\n\"\"\n", r"blank\.csv, line 3: empty row"),
    ("short.csv", "sequence\nACGTACGT\nACG\n", r"short\.csv, line 3: 3 bp gives no token with kmer6"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, export_dir, capsys, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exc:
        megadna_main(["embed", "--model", str(export_dir), "--input", str(tmp_path / name), "--out", str(tmp_path / "e"), "--progress", "false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert re.search(message, err[0]), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing written


def test_bad_options_exit_2(tmp_path, export_dir, capsys):
    (tmp_path / "s.fa").write_text(">s\nACGTACGTACGT\n")
    for flags, message in ((["--layer", "3"], "--layer 3: the model has 2 layers; use 0 (embeddings) to 2"),
                           (["--layer", "-4"], "--layer -4: the model has 2 layers"),
                           (["--pooling", "max"], "--pooling 'max': choose one of cls, mean"),
                           (["--window_overlap_bp", "67"], "--window_overlap_bp 67: windows of 62 tokens (67 bp) cannot share that much")):
        with pytest.raises(SystemExit) as exc:
            megadna_main(["embed", "--model", str(export_dir), "--input", str(tmp_path / "s.fa"), "--out", str(tmp_path / "e"), "--progress", "false", *flags])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.fa"]
    # 66 bp of overlap = 61 shared tokens of 62 (a step of one token): allowed
    vec, index = _embed(tmp_path, export_dir, tmp_path / "s.fa", "--window_overlap_bp", "66")
    assert index[1][3] == "1"


def test_existing_output_is_refused_without_overwrite(tmp_path, export_dir, capsys):
    (tmp_path / "s.fa").write_text(">s\nACGTACGTACGTAAAC\n")
    (tmp_path / "e.csv").write_text("keep me\n")
    with pytest.raises(SystemExit) as exc:
        megadna_main(["embed", "--model", str(export_dir), "--input", str(tmp_path / "s.fa"), "--out", str(tmp_path / "e"), "--progress", "false"])
    assert exc.value.code == 2 and "e.csv: already exists; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "e.csv").read_text() == "keep me\n" and not (tmp_path / "e.npy").exists()
    vec, index = _embed(tmp_path, export_dir, tmp_path / "s.fa", "--overwrite", out="e")
    assert vec.shape == (1, 64) and index[1] == ["0", "s", "16", "1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.csv", "e.npy", "s.fa"]  # no temporary file left
