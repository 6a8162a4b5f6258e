"""Regression and multi-label datasets in the GUE harness: read from the CSVs, trained, scored, saved."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from megadna.errors import InputError
from megadna.eval.gue import run_gue

MOTIF = "TATAAA"


def _dataset(root: Path, name: str, problem: str, n: dict, seed: int = 0) -> None:
    """Random 60-bp sequences. regression: label = 10 x GC share + noise (written with decimals);
    multilabel: has_motif (TATAAA planted in half) and gc_high (GC share above the median)."""
    rng = np.random.default_rng(seed)
    for split, count in n.items():
        rows = []
        for _ in range(count):
            gc = rng.uniform(0.2, 0.8)
            seq = "".join(rng.choice(list("GCAT"), size=60, p=[gc / 2, gc / 2, (1 - gc) / 2, (1 - gc) / 2]))
            motif = rng.random() < 0.5
            if motif:
                at = int(rng.integers(0, 60 - len(MOTIF)))
                seq = seq[:at] + MOTIF + seq[at + len(MOTIF):]
            share = (seq.count("G") + seq.count("C")) / len(seq)
            if problem == "regression":
                rows.append([seq, f"{10 * share + rng.normal(0, 0.2):.3f}"])
            else:
                rows.append([seq, int(MOTIF in seq), int(share > 0.5)])
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sequence", "label"] if problem == "regression" else ["sequence", "has_motif", "gc_high"])
            w.writerows(rows)


def _cfg(root: Path, out: Path, **kw) -> dict:
    return dict(gue_dir=str(root), init="random", model="tiny", tokenizer="kmer3", output_dir=str(out), seeds="1", max_steps=150,
                batch_size=32, lr="2e-3", warmup_steps=10, eval_steps=50, head_pooling="mean", progress=False) | kw


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("problems")
    _dataset(root, "expr/gc", "regression", {"train": 400, "dev": 80, "test": 80})
    _dataset(root, "multi/motif_gc", "multilabel", {"train": 400, "dev": 80, "test": 80}, seed=1)
    return root


def test_regression_is_detected_learns_and_is_saved_in_label_units(datasets, tmp_path, one_torch_thread):
    from transformers import AutoModelForSequenceClassification

    from megadna.model.classifier_export import load_classifier

    results = run_gue(**_cfg(datasets, tmp_path, datasets="expr/gc", head_pooling="cls", head_init="standardize"))
    row = results["datasets"][0]
    assert row["problem"] == "regression" and row["spearman_mean"] > 50, row
    record = json.loads((tmp_path / "runs" / "expr__gc__seed1.json").read_text())
    assert record["metric"] == "pearson" and "best_dev_mcc" not in record
    with open(tmp_path / "predictions" / "expr__gc__seed1.csv") as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["index", "label", "prediction"]
    y, p = np.array([float(r["label"]) for r in preds]), np.array([float(r["prediction"]) for r in preds])
    assert np.mean((p - y) ** 2) == pytest.approx(record["test"]["mse"], rel=1e-5)
    assert 3 < p.mean() < 7  # label units (10 x GC share), not standardised ones
    # saved: a plain regression BertForSequenceClassification giving the same values
    d = tmp_path / "models" / "expr__gc__seed1"
    assert json.loads((d / "config.json").read_text())["problem_type"] == "regression"
    model, tok, _ = load_classifier(d)
    hf = AutoModelForSequenceClassification.from_pretrained(str(d)).eval()
    seqs = [r[0] for r in list(csv.reader(open(datasets / "expr/gc/test.csv")))[1:]]
    batch = tok.encode_batch([seqs[int(r["index"])] for r in preds], max_tokens=record["max_tokens"])
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    with torch.no_grad():
        assert np.allclose(model(ids, mask)[:, 0].numpy(), p, atol=1e-4)
        assert np.allclose(hf(input_ids=ids, attention_mask=mask).logits[:, 0].numpy(), p, atol=1e-4)
    assert "Regression datasets:" in (tmp_path / "results.md").read_text() and "Spearman" in (tmp_path / "results.md").read_text()
    again = run_gue(**_cfg(datasets, tmp_path, datasets="expr/gc", head_pooling="cls", head_init="standardize"))  # a restart reads it back
    assert again["datasets"][0]["pearson_mean"] == row["pearson_mean"]


def test_multilabel_is_detected_and_scored_per_label(datasets, tmp_path, one_torch_thread):
    from sklearn.metrics import matthews_corrcoef

    results = run_gue(**_cfg(datasets, tmp_path, datasets="multi/motif_gc"))
    row = results["datasets"][0]
    assert row["problem"] == "multilabel"
    record = json.loads((tmp_path / "runs" / "multi__motif_gc__seed1.json").read_text())
    with open(tmp_path / "predictions" / "multi__motif_gc__seed1.csv") as f:
        preds = list(csv.DictReader(f))
    assert list(preds[0]) == ["index", "label_has_motif", "label_gc_high", "pred_has_motif", "pred_gc_high", "prob_has_motif", "prob_gc_high"]
    per_label = [100 * matthews_corrcoef([int(r[f"label_{n}"]) for r in preds], [int(r[f"pred_{n}"]) for r in preds]) for n in ("has_motif", "gc_high")]
    assert record["test"]["mcc_per_label"] == pytest.approx(per_label) and record["test"]["mcc"] == pytest.approx(np.mean(per_label))
    assert record["test"]["mcc"] > 20  # GC content is learned in 150 steps (the motif may not be)
    cfg = json.loads((tmp_path / "models" / "multi__motif_gc__seed1" / "config.json").read_text())
    assert cfg["problem_type"] == "multi_label_classification" and cfg["id2label"] == {"0": "has_motif", "1": "gc_high"}


def test_problem_errors_name_the_file_and_line(datasets, tmp_path):
    with pytest.raises(InputError, match=r"expr/gc/train.csv, line 2: label '[0-9.]+' is not a non-negative integer .* --problem regression"):
        run_gue(**_cfg(datasets, tmp_path, datasets="expr/gc", problem="classification"))
    bad = tmp_path / "bad"
    _dataset(bad, "multi/x", "multilabel", {"train": 20, "dev": 5, "test": 5})
    text = (bad / "multi/x/dev.csv").read_text().splitlines()
    text[3] = text[3].rsplit(",", 1)[0] + ",2"
    (bad / "multi/x/dev.csv").write_text("\n".join(text) + "\n")
    with pytest.raises(InputError, match=r"multi/x/dev.csv, line 4: label '2' is not 0 or 1"):
        run_gue(**_cfg(bad, tmp_path / "o1"))
    _dataset(bad, "expr/flat", "regression", {"train": 20, "dev": 5, "test": 5})
    rows = (bad / "expr/flat/train.csv").read_text().splitlines()
    (bad / "expr/flat/train.csv").write_text("\n".join([rows[0]] + [r.split(",")[0] + ",1.5" for r in rows[1:]]) + "\n")
    with pytest.raises(InputError, match=r"expr/flat/train.csv: every label is 1.5"):
        run_gue(**_cfg(bad, tmp_path / "o2", datasets="expr/flat"))
    with pytest.raises(InputError, match="--mode probe fits a logistic regression, for classification datasets only"):
        run_gue(**_cfg(datasets, tmp_path / "o3", datasets="expr/gc", mode="probe"))


def test_detection_and_number_syntax():
    from megadna.eval.problems import detect, parse

    assert detect(1, ["0", "1", "2"]) == "classification" and detect(1, ["0.5", "1", "-2e3"]) == "regression"
    assert detect(2, ["0"]) == "multilabel"
    assert detect(1, ["1", "٣"]) == "classification"  # not every label a number: the classification check names it
    with pytest.raises(InputError, match="is not a number"):
        parse("regression", ["٣"], "f.csv, line 2")  # float() would take it; labels are ASCII numbers
    assert parse("regression", [" -1.5e-2 "], "x") == -0.015
