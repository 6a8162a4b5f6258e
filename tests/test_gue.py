"""The GUE harness: real GUE subsets end to end, metrics recomputable from the saved predictions,
restarts, input validation, the recipe and the published baselines."""

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

import megadna.eval.data as gue_data
import megadna.eval.finetune as gue_finetune
import megadna.eval.gue as gue
from megadna.errors import InputError
from megadna.eval.config import GUEConfig, Recipe, recipe_for
from megadna.eval.data import read_split
from megadna.eval.gue import run_gue
from megadna.eval.report import format_table, load_baselines

pytest.importorskip("transformers")

SEEDS = [42, 43]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


def _quick(**overrides) -> GUEConfig:
    """A few steps of a tiny random-init model on small subsets; lr high enough that predictions vary."""
    fields = dict(init="random", model="tiny", tokenizer="kmer6", seeds=",".join(map(str, SEEDS)),
                  max_train_samples=64, max_eval_samples=48, max_steps=3, batch_size=16, lr=2e-3,
                  warmup_steps=0, eval_steps=0, progress=False)
    return GUEConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def real_run(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("gue")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = _quick(gue_dir=str(shared_data / "gue"), output_dir=str(out))
        return cfg, run_gue(cfg)
    finally:
        torch.set_num_threads(n)


def _read_predictions(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    index = np.array([int(r["index"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["prediction"]) for r in rows])
    probs = np.array([[float(r[k]) for k in r if k.startswith("prob_")] for r in rows])
    return index, labels, preds, probs


def _check_reported_metrics_against_saved_predictions(out: Path, results: dict, gue_dir: Path, n_test: int) -> list[float]:
    """Every reported figure is scikit-learn's on the saved predictions; returns the per-run MCCs."""
    all_mccs = []
    for row in results["datasets"]:
        name = row["name"]
        test_rows = list(csv.reader(open(gue_dir / name / "test.csv")))[1:]
        mccs = []
        for seed in results["seeds"]:
            task, dataset = name.split("/")
            index, labels, preds, probs = _read_predictions(out / "predictions" / f"{task}__{dataset}__n64__seed{seed}.csv")
            assert len(index) == n_test and len(set(index)) == n_test
            # index is the row in test.csv: the saved label is that row's label
            assert labels.tolist() == [int(test_rows[i][1]) for i in index]
            assert np.allclose(probs.sum(1), 1, atol=1e-4) and (probs.argmax(1) == preds).all()
            reported = row["per_seed"][str(seed)]
            assert reported["mcc"] == pytest.approx(100 * matthews_corrcoef(labels, preds), abs=1e-9)
            assert reported["f1"] == pytest.approx(100 * f1_score(labels, preds, average="macro", zero_division=0), abs=1e-9)
            assert reported["accuracy"] == pytest.approx(100 * accuracy_score(labels, preds), abs=1e-9)
            mccs.append(reported["mcc"])
            assert (out / "runs" / f"{task}__{dataset}__n64__seed{seed}.json").is_file()
        assert row["mcc_mean"] == pytest.approx(np.mean(mccs))
        assert row["mcc_std"] == pytest.approx(np.std(mccs, ddof=1) if len(mccs) > 1 else 0.0)
        all_mccs += mccs
    return all_mccs


def test_real_gue_end_to_end_and_reported_metrics_equal_sklearn_on_saved_predictions(real_run, shared_data):
    cfg, results = real_run
    out = Path(cfg.output_dir)
    names = ["mouse/0", "prom/prom_core_notata", "tf/0"]
    assert [r["name"] for r in results["datasets"]] == names  # discovered, sorted
    for f in ("results.json", "results.csv", "results.md", "config.json"):
        assert (out / f).is_file(), f
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == cfg.lr
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["datasets"] == json.loads(json.dumps(results["datasets"]))
    _check_reported_metrics_against_saved_predictions(out, results, shared_data / "gue", n_test=48)
    for row in results["datasets"]:
        assert row["sizes"] == {"train": 64, "dev": 48, "test": 48}
    # the published figures sit beside ours
    tf0 = next(r for r in results["datasets"] if r["name"] == "tf/0")
    assert tf0["baselines"] == {"dnabert2": 71.99, "dnabert_6mer": 66.84, "nt_2500m_multi": 66.64}
    assert results["overall"]["baselines"]["dnabert2"] == pytest.approx((56.76 + 68.04 + 71.99) / 3)
    md = (out / "results.md").read_text()
    assert md == format_table(results) and "| tf/0 |" in md and "DNABERT-2" in md and "NT-2500M-multi" in md
    with open(out / "results.csv", newline="") as f:
        csv_rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["tf/0"]["mcc_mean"]) == pytest.approx(tf0["mcc_mean"], abs=1e-4)
    assert csv_rows["all"]["level"] == "all"


def test_metrics_follow_varied_predictions(shared_data, tmp_path, monkeypatch):
    """A few CPU steps leave a random-init model predicting one class (MCC 0 whatever the bookkeeping);
    here the predictions vary, so a score computed on the wrong rows or split would show."""
    real_predict = gue_finetune.predict

    def varied(model, data, *args, **kwargs):
        probs = real_predict(model, data, *args, **kwargs)
        rng = np.random.default_rng(len(data.labels) + int(data.labels.sum()))
        noisy = np.clip(probs + rng.normal(0, 0.3, probs.shape), 1e-3, None)
        return noisy / noisy.sum(1, keepdims=True)

    monkeypatch.setattr(gue_finetune, "predict", varied)  # finetune scores dev and test through it
    cfg = _quick(gue_dir=str(shared_data / "gue"), output_dir=str(tmp_path), datasets="tf/0", max_steps=1)
    results = run_gue(cfg)
    mccs = _check_reported_metrics_against_saved_predictions(tmp_path, results, shared_data / "gue", n_test=48)
    assert all(m != 0 for m in mccs)


def test_restart_skips_finished_runs_and_refuses_a_changed_config(real_run, monkeypatch):
    cfg, results = real_run
    out = Path(cfg.output_dir)
    calls = []
    real_finetune = gue.finetune

    def counting(*args, **kwargs):
        calls.append(kwargs["desc"])
        return real_finetune(*args, **kwargs)

    monkeypatch.setattr(gue, "finetune", counting)
    again = run_gue(cfg)
    assert calls == []  # everything was finished
    assert again["datasets"] == results["datasets"]

    # an interrupted run: one (dataset, seed) without its completion marker is redone, alone
    (out / "runs" / "tf__0__n64__seed43.json").unlink()
    redone = run_gue(cfg)
    assert calls == ["tf/0 n=64 seed 43 lr 0.002"]
    tf0 = next(r for r in redone["datasets"] if r["name"] == "tf/0")
    assert tf0["per_seed"]["43"]["mcc"] == pytest.approx(results["datasets"][2]["per_seed"]["43"]["mcc"])  # deterministic

    with pytest.raises(InputError, match=r"seed42\.json: this run finished under a different config \(lr"):
        run_gue(_quick(gue_dir=cfg.gue_dir, output_dir=cfg.output_dir, lr=1e-3))


def test_pretrained_model_on_the_demo_task_with_truncation(tmp_path, caplog):
    from megadna.data.synthetic import write_demo_gue
    from megadna.model import BertForMLM, model_config
    from megadna.model.export import write_hf_dir
    from megadna.tokenizers import get_tokenizer

    write_demo_gue(tmp_path / "gue", seed=0, n_train=40, n_dev=20, n_test=20, length=60)
    tok = get_tokenizer("kmer3")
    torch.manual_seed(0)
    write_hf_dir(BertForMLM(model_config("tiny", tok.vocab_size, max_position_embeddings=64)), tok, tmp_path / "model")
    cfg = GUEConfig(gue_dir=str(tmp_path / "gue"), model=str(tmp_path / "model"), output_dir=str(tmp_path / "out"),
                    seeds="7", max_tokens=32, max_steps=2, batch_size=8, micro_batch_size=4, eval_steps=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="megadna.eval.data"):
        results = run_gue(cfg)
    # 60 bp give 58 3-mers; 32 tokens leave room for 30: every sequence is cut to its first bases
    assert "demo/motif: 40 of 40 train, 20 of 20 dev, 20 of 20 test sequences are longer than 30 tokens" in caplog.text
    row = results["datasets"][0]
    assert row["name"] == "demo/motif" and row["max_tokens"] == 32 and row["baselines"]["dnabert2"] is None
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model"]["kind"] == "export"
    assert "| demo/motif |" in format_table(results)


def test_truncation_keeps_the_first_bases():
    from megadna.tokenizers import get_tokenizer

    tok = get_tokenizer("kmer6")
    split = gue_data.Split(["ACGTACGGTCAGTTGACCATGACA", "ACGTAC" * 2], np.array([0, 1]), np.array([0, 1]))
    enc = gue_data.encode_split(tok, split, max_tokens=10)
    assert enc.input_ids[0, 1:9].tolist() == tok.encode(split.sequences[0][:13]).tolist()  # 8 6-mers = 13 bp
    assert enc.lengths.tolist() == [10, 9]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("", r"line 1: the file is empty"),
    ("seq,label\nACGT,0\n", r"line 1: header is 'seq,label', expected 'sequence,label'"),
    ("ACGT,0\nACGT,1\n", r"line 1: header is 'ACGT,0'"),
    ("sequence,label\nACGT,0\nACGT,one\n", r"line 3: label 'one' is not a non-negative integer"),
    ("sequence,label\nACGT,0\nACGT,1.0\n", r"line 3: label '1.0'"),
    ("sequence,label\nACGT,0\n\nACGT,1\n", r"line 3: empty row"),
    ("sequence,label\nACGT,0\nACXGT,1\n", r"line 3: non-DNA character 'X'"),
    ("sequence,label\n,0\n", r"line 2: an empty sequence"),
    ("sequence,label\nACGT,0,1\n", r"line 2: 3 fields, expected 2"),
    ("sequence,label\n", r"no rows after the header"),
])
def test_bad_csv_errors_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path / "train.csv", text)
    with pytest.raises(InputError, match=message) as e:
        read_split(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("label", ["\u0663", "\uff11", "\u00b2", "1\u0660"])
def test_labels_are_ascii_digits_only(tmp_path, label):
    """\\d, str.isdigit and int() accept Arabic-Indic, full-width and superscript digits: a label is 0-9 only."""
    path = _write(tmp_path / "train.csv", f"sequence,label\nACGT,0\nACGT,{label}\n")
    with pytest.raises(InputError, match=r"line 3: label .* is not a non-negative integer \(ASCII digits 0-9\)"):
        read_split(path)


def test_a_huge_label_is_refused_before_it_overflows(tmp_path):
    path = _write(tmp_path / "train.csv", "sequence,label\nACGT,0\nACGT,99999999999999999999999\n")
    with pytest.raises(InputError, match=r"train\.csv, line 3: label 99999999999999999999999 is not a class number"):
        read_split(path)


def test_non_utf8_error_names_the_line_and_the_byte_in_it(tmp_path):
    """The reader decodes in chunks, so the codec's offset was not the file's; the line was not named."""
    rows = "".join(f"{'ACGT' * 50},{i % 2}\n" for i in range(3000))  # ~600 kB: past any read buffer
    path = tmp_path / "train.csv"
    path.write_bytes(b"sequence,label\n" + rows.encode() + b"ACG\xffT,1\n")
    with pytest.raises(InputError, match=r"train\.csv, line 3002, byte 4: not UTF-8 text \(invalid start byte, byte 0xff\)"):
        read_split(path)


def _dataset(root: Path, train: str, dev: str = "0\n1\n", test: str = "0\n1\n") -> Path:
    for split, labels in (("train", train), ("dev", dev), ("test", test)):
        rows = "".join(f"ACGTACGTAC,{x}\n" for x in labels.split())
        _write(root / "tf" / "0" / f"{split}.csv", "sequence,label\n" + rows)
    return root


@pytest.mark.parametrize("train, dev, test, message", [
    ("0 1 0 1", "0 1 2", "0 1", r"dev\.csv, line 4: label 2 never occurs in train\.csv \(classes 0\.\.1\)"),
    ("0 1 0 1", "0 1", "1 100000", r"test\.csv, line 3: label 100000 never occurs in train\.csv"),
    ("0 1 100000 1", "0 1", "0 1", r"train\.csv, line 4: label 100000, but class 2 never occurs in train\.csv"),
    ("1 2 1 2", "1 2", "1 2", r"train\.csv, line 2: label 1, but class 0 never occurs in train\.csv"),
    ("0 2 2 0", "0 2", "0 2", r"train\.csv, line 3: label 2, but class 1 never occurs"),
    ("1 1 1", "1", "1", r"train\.csv, line 2: label 1, but class 0"),
    ("0 0 0", "0", "0", r"train\.csv: every row has label 0; a classification task needs at least 2 classes"),
])
def test_classes_come_from_train_and_are_0_to_c_minus_1(tmp_path, train, dev, test, message):
    """A label only in dev/test, or one of 100000, used to add empty classes silently (accuracy 0, exit 0)."""
    _dataset(tmp_path, train, dev, test)
    with pytest.raises(InputError, match=message):
        gue_data.load_dataset(tmp_path, "tf/0", _quick(gue_dir=str(tmp_path), max_train_samples=0, max_eval_samples=0))


def test_valid_labels_give_the_class_count(tmp_path):
    _dataset(tmp_path, "2 0 1 1 0 2", "0 2", "1")
    splits = gue_data.load_dataset(tmp_path, "tf/0", _quick(gue_dir=str(tmp_path), max_train_samples=0, max_eval_samples=0))
    assert gue_data.check_labels(splits, tmp_path / "tf" / "0") == 3
    assert splits["train"].labels.tolist() == [2, 0, 1, 1, 0, 2]


def test_missing_split_and_unknown_dataset_are_clear(tmp_path, capsys):
    good = "sequence,label\nACGTACGTAC,0\nTTGACCATGA,1\n"
    _write(tmp_path / "GUE" / "tf" / "0" / "train.csv", good)
    _write(tmp_path / "GUE" / "tf" / "0" / "test.csv", good)
    assert gue_data.discover_datasets(tmp_path) == ["tf/0"]  # the folder holding GUE/ works too
    with pytest.raises(InputError, match=r"tf/0/dev\.csv: missing"):
        gue_data.load_dataset(tmp_path, "tf/0", _quick(gue_dir=str(tmp_path)))
    with pytest.raises(InputError, match=r"--datasets: tf/9 not found .* available: tf/0"):
        gue_data.select_datasets(tmp_path, "tf/9")

    from megadna.cli.finetune_gue import main

    with pytest.raises(SystemExit) as e:
        main(["--gue_dir", str(tmp_path), "--init", "random", "--model", "tiny", "--tokenizer", "kmer6",
              "--output_dir", str(tmp_path / "out"), "--progress", "false"])
    assert e.value.code == 2
    assert "dev.csv: missing" in capsys.readouterr().err


def test_subsample_is_deterministic_and_independent_of_the_training_seed(shared_data):
    a = gue_data.load_dataset(shared_data / "gue", "tf/0", _quick(seeds="1"))
    b = gue_data.load_dataset(shared_data / "gue", "tf/0", _quick(seeds="2"))
    c = gue_data.load_dataset(shared_data / "gue", "tf/0", _quick(subsample_seed=1))
    assert a["train"].index.tolist() == b["train"].index.tolist() != c["train"].index.tolist()
    assert len(a["train"]) == 64 and len(a["test"]) == 48 and (np.diff(a["test"].index) > 0).all()


def test_recipe_follows_dnabert2_scripts_and_flags_override_it():
    assert recipe_for("prom/prom_core_notata") == Recipe(epochs=4, warmup_steps=50, eval_steps=400)
    assert recipe_for("prom/prom_core_tata").epochs == 10 and recipe_for("prom/prom_300_tata").epochs == 10
    assert recipe_for("mouse/3") == Recipe(epochs=5, warmup_steps=30, eval_steps=200, max_steps=1000)
    assert recipe_for("tf/0").epochs == 3 and recipe_for("EMP/H3").epochs == 3
    assert recipe_for("splice/reconstructed").epochs == 5 and recipe_for("virus/covid").epochs == 8
    assert recipe_for("demo/motif").epochs == 3
    cfg = GUEConfig(gue_dir="x", model="tiny", init="random", tokenizer="kmer6", epochs=1, max_steps=0)
    assert cfg.resolved_recipe("mouse/0") == Recipe(epochs=1, warmup_steps=30, eval_steps=200, max_steps=0)
    default = GUEConfig(gue_dir="x", model="run")
    assert (default.lr_list(), default.weight_decay, default.batch_size, default.seed_list()) == ([3e-5], 0.01, 32, [42, 43, 44])


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="tiny", init="random"), "needs --tokenizer"),
    (dict(model="runs/x", init="random", tokenizer="kmer6"), "--tokenizer is for --init random with a preset only"),
    (dict(model="runs/x", tokenizer="kmer6"), "a model path brings its tokenizer"),
    (dict(model="runs/x", batch_size=32, micro_batch_size=5), "multiple of --micro_batch_size"),
    (dict(model="runs/x", seeds="42,x"), "comma-separated integers"),
])
def test_config_rejects_contradictions(kwargs, message):
    with pytest.raises(InputError, match=message):
        GUEConfig(gue_dir="x", **kwargs)


def test_baselines_table_reproduces_the_papers_averages():
    table = load_baselines()
    assert len(table) == 28 and table["prom/prom_core_notata"]["dnabert2"] == 68.04
    for column, headline in (("dnabert2", 66.80), ("nt_2500m_multi", 66.93), ("dnabert_6mer", 60.51)):
        assert np.mean([row[column] for row in table.values()]) == pytest.approx(headline, abs=0.01)


def _probs_csv(path: Path) -> np.ndarray:
    return _read_predictions(path)[3]


def _test_batch(tokenizer, gue_dir: Path, name: str, index: np.ndarray, max_tokens: int):
    rows = list(csv.reader(open(gue_dir / name / "test.csv")))[1:]
    batch = tokenizer.encode_batch([rows[i][0] for i in index], max_tokens=max_tokens)
    return torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])


@pytest.mark.parametrize("head_init,pooling", [("random", "cls"), ("standardize", "cls"), ("probe", "mean")])
def test_saved_classifier_reproduces_the_harness_predictions(shared_data, tmp_path, head_init, pooling):
    """Each (dataset, seed) leaves its selected classifier in models/; reloaded (plain transformers for a
    [CLS] head, megadna for a mean-pooled one) it gives the test probabilities the harness saved."""
    from transformers import AutoModelForSequenceClassification

    from megadna.model.classifier_export import load_classifier

    cfg = _quick(gue_dir=str(shared_data / "gue"), output_dir=str(tmp_path), datasets="tf/0", seeds="42",
                 head_init=head_init, head_pooling=pooling)
    run_gue(cfg)
    d = tmp_path / "models" / "tf__0__n64__seed42"
    record = json.loads((tmp_path / "runs" / "tf__0__n64__seed42.json").read_text())
    assert record["saved_model"] == str(d)
    index, _, _, saved = _read_predictions(tmp_path / "predictions" / "tf__0__n64__seed42.csv")
    model, tok, meta = load_classifier(d)
    assert meta["dataset"] == "tf/0" and meta["seed"] == 42 and meta["test"] == record["test"] and meta["pooling"] == pooling
    ids, mask = _test_batch(tok, shared_data / "gue", "tf/0", index, record["max_tokens"])
    with torch.no_grad():
        ours = torch.softmax(model(ids, mask), -1).numpy()
    assert np.allclose(ours, saved, atol=1e-5)
    card = (d / "README.md").read_text()
    if pooling == "cls":
        hf = AutoModelForSequenceClassification.from_pretrained(str(d)).eval()
        with torch.no_grad():
            theirs = torch.softmax(hf(input_ids=ids, attention_mask=mask).logits, -1).numpy()
        assert np.allclose(theirs, saved, atol=1e-5)
        assert "without custom code" in card
    else:
        assert "gives *other* predictions" in card and meta["plain_transformers"] is False


def test_save_models_best_keeps_the_seed_with_the_best_dev_mcc(shared_data, tmp_path):
    run_gue(_quick(gue_dir=str(shared_data / "gue"), output_dir=str(tmp_path), datasets="tf/0", save_models="best"))
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["tf__0__n64__seedbest"]
    devs = {s: json.loads((tmp_path / "runs" / f"tf__0__n64__seed{s}.json").read_text())["best_dev_mcc"] for s in SEEDS}
    kept = json.loads((tmp_path / "models" / "tf__0__n64__seedbest" / "megadna_classifier.json").read_text())
    assert kept["best_dev"] == max(devs.values()) and kept["metric"] == "mcc" and devs[kept["seed"]] == max(devs.values())
    run_gue(_quick(gue_dir=str(shared_data / "gue"), output_dir=str(tmp_path / "none"), datasets="tf/0", seeds="42", save_models="none"))
    assert not (tmp_path / "none" / "models").exists()


def test_a_folder_written_before_the_newer_fields_is_read_back(real_run, monkeypatch):
    """Run keys written before head_pooling/problem/head_init/freeze_encoder_steps existed are read as
    having the values those runs used (eval.config.ADDED_FIELDS): reused, not refused."""
    from megadna.eval.config import ADDED_FIELDS

    cfg, results = real_run
    out = Path(cfg.output_dir)
    for marker in (out / "runs").glob("*.json"):
        record = json.loads(marker.read_text())
        record["run_key"] = {k: v for k, v in record["run_key"].items() if k not in ADDED_FIELDS}
        marker.write_text(json.dumps(record))
    monkeypatch.setattr(gue, "finetune", lambda *a, **k: pytest.fail("a finished run was redone"))
    assert run_gue(cfg)["datasets"] == results["datasets"]
