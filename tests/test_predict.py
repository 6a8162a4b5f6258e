"""`megadna predict`: a classifier saved by `megadna gue`, run on FASTA/CSV input, equals the harness's
own test predictions; long sequences are tiled; bad input is one line naming file and line."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch

from megadna.cli.predict import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny kmer3 model with 64 positions, fine-tuned 3 steps on the synthetic demo task; its saved
    classifier directory and the GUE output folder."""
    from megadna.data.synthetic import write_demo_gue
    from megadna.eval.gue import run_gue
    from megadna.model import BertForMLM, model_config
    from megadna.model.export import write_hf_dir
    from megadna.tokenizers import get_tokenizer

    root = tmp_path_factory.mktemp("predict")
    write_demo_gue(root / "gue", seed=0, n_train=40, n_dev=20, n_test=20, length=50)
    tok = get_tokenizer("kmer3")
    torch.manual_seed(0)
    write_hf_dir(BertForMLM(model_config("tiny", tok.vocab_size, max_position_embeddings=64)), tok, root / "model")
    run_gue(gue_dir=str(root / "gue"), model=str(root / "model"), output_dir=str(root / "out"), seeds="7", max_steps=3,
            batch_size=8, eval_steps=1, lr="1e-2", head_pooling="mean", head_init="standardize", progress=False)
    return root / "out" / "models" / "demo__motif__seed7", root


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_equals_the_harness_test_predictions(saved, tmp_path, capsys):
    model_dir, root = saved
    test = list(csv.reader(open(root / "gue" / "demo" / "motif" / "test.csv")))[1:]
    (tmp_path / "in.csv").write_text("id,sequence\n" + "".join(f"s{i},{seq.lower()}\n" for i, (seq, _) in enumerate(test)))
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv"), "--progress", "false"]) == 0
    assert json.loads(capsys.readouterr().out)["sequences"] == len(test)
    ours = _rows(tmp_path / "p.csv")
    harness = {int(r["index"]): r for r in _rows(root / "out" / "predictions" / "demo__motif__seed7.csv")}
    assert [r["id"] for r in ours] == [f"s{i}" for i in range(len(test))]
    for i, r in enumerate(ours):
        assert r["prediction"] == harness[i]["prediction"] and r["n_windows"] == "1"
        assert np.allclose([float(r["prob_0"]), float(r["prob_1"])], [float(harness[i]["prob_0"]), float(harness[i]["prob_1"])], atol=1e-5)
    # the same sequences as FASTA give the same rows (ids from the records)
    (tmp_path / "in.fa").write_text("".join(f">s{i}\n{seq}\n" for i, (seq, _) in enumerate(test)))
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "in.fa"), "--out", str(tmp_path / "q.csv"), "--progress", "false"]) == 0
    assert _rows(tmp_path / "q.csv") == ours


def test_long_sequences_are_tiled_and_averaged(saved, tmp_path):
    from megadna.model.classifier_export import load_classifier

    model_dir, _ = saved
    rng = np.random.default_rng(0)
    seq = "".join(rng.choice(list("ACGT"), size=200))  # 198 3-mers, the model holds 62 per input
    (tmp_path / "long.fa").write_text(f">long\n{seq}\n")
    assert main(["--model", str(model_dir), "--input", str(tmp_path / "long.fa"), "--out", str(tmp_path / "p.csv"),
                 "--window_overlap_bp", "12", "--progress", "false"]) == 0
    row = _rows(tmp_path / "p.csv")[0]
    model, tok, _ = load_classifier(model_dir)
    ids = tok.encode(seq)
    starts = [0, 52, 104, 136]  # windows of 62 tokens sharing 12 - 3 + 1 = 10, the last flush with the end
    assert row["n_windows"] == str(len(starts))
    with torch.no_grad():
        z = torch.stack([model(torch.tensor([[2, *ids[a:a + 62], 3]]))[0] for a in starts]).mean(0)
    assert np.allclose(torch.softmax(z, -1).numpy(), [float(row["prob_0"]), float(row["prob_1"])], atol=1e-5)


@pytest.mark.parametrize("text,message", [
    ("id,sequence\na,ACGT\nb,ACXT\n", r"in.csv, line 3: 'X' at base 3 is not a nucleotide code"),
    ("", r"in.csv, line 1: the file is empty"),
    ("id,seq\na,ACGT\n", r"in.csv, line 1: no 'sequence' column"),
])
def test_bad_input_is_one_line_naming_file_and_line(saved, tmp_path, capsys, text, message):
    model_dir, _ = saved
    (tmp_path / "in.csv").write_text(text)
    with pytest.raises(SystemExit) as e:
        main(["--model", str(model_dir), "--input", str(tmp_path / "in.csv"), "--out", str(tmp_path / "p.csv"), "--progress", "false"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert re.search(message, err), err
    assert not (tmp_path / "p.csv").exists()


def test_a_directory_that_is_not_a_saved_classifier_is_refused(saved, tmp_path, capsys):
    _, root = saved
    (tmp_path / "in.fa").write_text(">a\nACGTACGT\n")
    with pytest.raises(SystemExit):
        main(["--model", str(root / "model"), "--input", str(tmp_path / "in.fa"), "--out", str(tmp_path / "p.csv")])
    assert "no megadna_classifier.json; not a classifier megadna saved" in capsys.readouterr().err
