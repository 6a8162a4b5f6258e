"""`megadna score-variants`: masked-LM log-likelihood ratios of SNVs, checked against a hand computation.

Tiny random models (kmer3 and nkmer3, 64 positions) written as exports; the expected scores are
computed here from the model's own forward pass: mask the tokens holding the base, read the
log-softmax at each, sum alt minus ref.
"""

import csv
import gzip
import re

import numpy as np
import pytest
import torch

from megadna.cli.main import main as megadna_main
from megadna.data.genome import read_fasta
from megadna.infer.variants import Context, masked_tokens, window
from megadna.model.pretrained import load_pretrained
from megadna.tokenizers import MASK_ID, get_tokenizer

POSITIONS = 64


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def _export(tmp_path_factory, spec):
    from megadna.model import BertForMLM, model_config
    from megadna.model.export import write_hf_dir

    tok = get_tokenizer(spec)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp(f"variants_{spec}") / "model"
    write_hf_dir(BertForMLM(model_config("tiny", tok.vocab_size, max_position_embeddings=POSITIONS)), tok, out)
    return out


@pytest.fixture(scope="module")
def kmer3(tmp_path_factory):
    return _export(tmp_path_factory, "kmer3")


@pytest.fixture(scope="module")
def nkmer3(tmp_path_factory):
    return _export(tmp_path_factory, "nkmer3")


def _random_dna(n, seed):
    return "".join(np.random.default_rng(seed).choice(list("ACGT"), n))


def _score(tmp_path, model, rows, *flags, header=("sequence", "pos", "ref", "alt"), name="variants.csv"):
    with open(tmp_path / name, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    out = tmp_path / f"scored_{name}"
    assert megadna_main(["score-variants", "--model", str(model), "--input", str(tmp_path / name), "--out", str(out),
                         "--progress", "false", "--overwrite", *flags]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


def _fails(tmp_path, model, text, *flags, name="bad.csv"):
    (tmp_path / name).write_text(text)
    with pytest.raises(SystemExit) as exc:
        megadna_main(["score-variants", "--model", str(model), "--input", str(tmp_path / name), "--out", str(tmp_path / "o.csv"),
                      "--progress", "false", *flags])
    assert exc.value.code == 2
    assert not (tmp_path / "o.csv").exists()


@torch.no_grad()
def _by_hand(model_dir, seq, pos, ref, alt):
    """Mask every token holding base pos (1-based) of seq, sum log p(alt token) - log p(ref token) over them."""
    model, tok, _ = load_pretrained(model_dir)
    p = pos - 1
    alt_seq = seq[:p] + alt + seq[p + 1 :]
    ref_ids, alt_ids = tok.encode(seq), tok.encode(alt_seq)
    if tok.overlapping:  # k-mer i holds bases i .. i + k - 1
        masked = [i for i in range(len(ref_ids)) if i <= p <= i + tok.k - 1]
    else:  # chunks of k from the start (no N here), then the tail's single bases
        chunks = len(seq) // tok.k
        masked = [p // tok.k if p < chunks * tok.k else chunks + p - chunks * tok.k]
    ids = torch.tensor([[2, *ref_ids.tolist(), 3]])
    ids[0, [i + 1 for i in masked]] = MASK_ID
    logp = torch.log_softmax(model(ids)["logits"][0].float(), -1)
    lp_ref = sum(float(logp[i + 1, ref_ids[i]]) for i in masked)
    lp_alt = sum(float(logp[i + 1, alt_ids[i]]) for i in masked)
    return lp_alt - lp_ref, lp_ref, lp_alt, len(masked)


@pytest.mark.parametrize("which", ["kmer3", "nkmer3"])
def test_llr_equals_the_hand_computation_and_ref_equal_alt_is_exactly_zero(tmp_path, which, request):
    model = request.getfixturevalue(which)
    seq = _random_dna(50, seed=1)
    rows = [(seq, pos, seq[pos - 1].lower(), alt) for pos in (1, 2, 20, 50) for alt in "ACGT"]
    scored = _score(tmp_path, model, rows)
    assert len(scored) == len(rows)
    for row, (s, pos, ref, alt) in zip(scored, rows):
        assert row["sequence"] == s and row["pos"] == str(pos) and row["ref"] == ref and row["alt"] == alt  # input columns kept as written
        if alt == ref.upper():
            assert float(row["llr"]) == 0.0 and np.isfinite(float(row["logp_ref"]))
            continue
        llr, lp_ref, lp_alt, n_masked = _by_hand(model, s, pos, ref.upper(), alt)
        assert n_masked == ({1: 1, 2: 2, 20: 3, 50: 1}[pos] if which == "kmer3" else 1)  # fewer k-mers at the ends
        assert float(row["llr"]) == pytest.approx(llr, rel=1e-5, abs=1e-5)
        assert float(row["logp_ref"]) == pytest.approx(lp_ref, rel=1e-5, abs=1e-5)
        assert float(row["logp_alt"]) == pytest.approx(lp_alt, rel=1e-5, abs=1e-5)


def test_masked_tokens_cover_exactly_the_base():
    tok = get_tokenizer("kmer6")
    seq = _random_dna(40, seed=2)
    ids = tok.encode(seq)
    for p, expected in ((0, [0]), (3, [0, 1, 2, 3]), (20, list(range(15, 21))), (39, [34])):
        positions, ref_ids, alt_ids = masked_tokens(tok, Context(seq, p), "A", ids, {})
        assert positions.tolist() == expected
        assert ref_ids.tolist() == ids[expected].tolist()
        alt = tok.encode(seq[:p] + "A" + seq[p + 1 :])
        assert alt_ids.tolist() == alt[expected].tolist()
    assert window(100, 10, 30) == slice(0, 30) and window(100, 50, 30) == slice(36, 66) and window(100, 98, 30) == slice(70, 100)


def test_a_long_sequence_is_scored_in_a_window_centred_on_the_variant(tmp_path, kmer3):
    seq = _random_dna(300, seed=3)
    rows = [(seq, 150, seq[149], "T" if seq[149] != "T" else "A")]
    full = _score(tmp_path, kmer3, rows)  # default context: 62 + 2 = 64 bp, bases 118..181 (0-based)
    w = window(300, 149, 64)
    assert w == slice(118, 182)
    inner = _score(tmp_path, kmer3, [(seq[w], 150 - w.start, rows[0][2], rows[0][3])], name="inner.csv")
    assert full[0]["llr"] == inner[0]["llr"]
    ctx20 = _score(tmp_path, kmer3, rows, "--context_bp", "20", name="ctx20.csv")
    assert ctx20[0]["llr"] == _score(tmp_path, kmer3, [(seq[140:160], 10, rows[0][2], rows[0][3])], name="c.csv")[0]["llr"]
    _fails(tmp_path, kmer3, "sequence,pos,ref,alt\nACGT,1,A,C\n", "--context_bp", "65")


def test_fasta_mode_reads_the_context_from_the_genome(tmp_path, kmer3):
    a, b = _random_dna(500, seed=4), _random_dna(80, seed=5)
    with gzip.open(tmp_path / "genome.fa.gz", "wt") as f:
        f.write(f">chrA some description\n{a[:250].lower()}\n{a[250:]}\n>chrB\n{b}\n")
    rows = [("chrB", 5, b[4], "G"), ("chrA", 300, a[299], "C"), ("chrA", 1, a[0], "T")]
    by_fasta = _score(tmp_path, kmer3, rows, "--fasta", str(tmp_path / "genome.fa.gz"), header=("chrom", "pos", "ref", "alt"))
    by_sequence = _score(tmp_path, kmer3, [({"chrA": a, "chrB": b}[c], p, r, x) for c, p, r, x in rows], name="seq.csv")
    assert [r["llr"] for r in by_fasta] == [r["llr"] for r in by_sequence]
    assert [r["chrom"] for r in by_fasta] == ["chrB", "chrA", "chrA"]


def test_fasta_mode_on_a_real_genome(tmp_path, kmer3, shared_data, capsys):
    genome = shared_data / "genomes" / "C.elegans.fa.gz"
    first = next(iter(read_fasta(genome)))
    base = chr(first.seq[9999])
    rows = [(first.name, 10000, base, alt) for alt in "ACGT"]
    scored = _score(tmp_path, kmer3, rows, "--fasta", str(genome), header=("chrom", "pos", "ref", "alt"))
    assert [float(r["llr"]) == 0.0 for r in scored] == [alt == base for alt in "ACGT"]
    wrong = "ACGT".replace(base, "")[0]
    _fails(tmp_path, kmer3, f"chrom,pos,ref,alt\n{first.name},10000,{wrong},{base}\n", "--fasta", str(genome))
    assert f"bad.csv, line 2: ref is {wrong} but record {first.name!r} of {genome} has {base!r} at pos 10000 (1-based)" in capsys.readouterr().err
    _fails(tmp_path, kmer3, "chrom,pos,ref,alt\nchrZ,5,A,C\n", "--fasta", str(genome))
    assert re.search(r"bad\.csv, line 2: chrom 'chrZ' is not a record of .*C\.elegans\.fa\.gz \(its records: I, ", capsys.readouterr().err)


@pytest.mark.parametrize("text, flags, message", [
    ("sequence,pos,ref,alt\nACGTACGT,3,G,T\nACGTACGT,3,A,T\n", (), r"bad\.csv, line 3: ref is A but the row's sequence has 'G' at pos 3 \(1-based\)"),
    ("sequence,pos,ref,alt\nACGTACGT,3,GT,T\n", (), r"line 2: ref 'GT': only single-base substitutions \(SNVs\)"),
    ("sequence,pos,ref,alt\nACGTACGT,3,G,N\n", (), r"line 2: alt 'N': only single-base"),
    ("sequence,pos,ref,alt\nACGTACGT,0,A,C\n", (), r"line 2: pos '0' is not a 1-based position"),
    ("sequence,pos,ref,alt\nACGTACGT,9,A,C\n", (), r"line 2: pos 9 is beyond the end of the row's sequence \(8 bp"),
    ("sequence,pos,ref,alt\nACGJACGT,1,A,C\n", (), r"line 2: 'J' at base 4 is not a nucleotide code"),
    ("sequence,pos,alt\nACGT,1,C\n", (), r"line 1: no 'ref' column"),
    ("chrom,pos,ref,alt\nchr1,1,A,C\n", (), r"line 1: no 'sequence' column; its chrom column needs --fasta GENOME"),
    ("sequence,pos,ref,alt,llr\nACGT,1,A,C,0\n", (), r"the input already has column\(s\) llr"),
    ("", (), r"bad\.csv, line 1: the file is empty"),
])
def test_bad_input_names_the_row_and_exits_2(tmp_path, kmer3, capsys, text, flags, message):
    _fails(tmp_path, kmer3, text, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0]), err


def test_existing_output_is_refused_without_overwrite(tmp_path, kmer3, capsys):
    (tmp_path / "v.csv").write_text("sequence,pos,ref,alt\nACGTACGT,3,G,T\n")
    (tmp_path / "o.csv").write_text("keep\n")
    args = ["score-variants", "--model", str(kmer3), "--input", str(tmp_path / "v.csv"), "--out", str(tmp_path / "o.csv"), "--progress", "false"]
    with pytest.raises(SystemExit):
        megadna_main(args)
    assert "o.csv: already exists; pass --overwrite" in capsys.readouterr().err and (tmp_path / "o.csv").read_text() == "keep\n"
    assert megadna_main(args + ["--overwrite"]) == 0
    assert (tmp_path / "o.csv").read_text().startswith("sequence,pos,ref,alt,llr,logp_ref,logp_alt\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv", "v.csv"]
    with pytest.raises(SystemExit):  # the input itself, never, even with --overwrite
        megadna_main(["score-variants", "--model", str(kmer3), "--input", str(tmp_path / "v.csv"), "--out", str(tmp_path / "v.csv"), "--overwrite"])
    assert "v.csv: is also an input; choose another output name" in capsys.readouterr().err
