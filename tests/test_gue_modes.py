"""Evaluation modes: lr sweep chosen on dev (test read once), nested low-data subsets, tokenizer swap,
reverse-complement averaging, frozen-feature probe with its cache, and paired arm comparison."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import megadna.eval.gue as gue
from megadna.errors import InputError
from megadna.eval import compare as cmp
from megadna.eval.config import GUEConfig
from megadna.eval.data import encode_split, read_split
from megadna.eval.finetune import load_backbone, logits, predict
from megadna.eval.task import prepare_task, swap_tokenizer
from megadna.tokenizers import get_tokenizer


def _cfg(shared_data, tmp_path, **kw) -> GUEConfig:
    base = dict(gue_dir=str(shared_data / "gue"), model="tiny", init="random", tokenizer="kmer6", output_dir=str(tmp_path / "out"),
                datasets="tf/0", seeds="1", max_train_samples=64, max_eval_samples=48, max_steps=2, batch_size=16, eval_steps=1, progress=False)
    return GUEConfig(**(base | kw))


def test_lr_sweep_selects_on_dev_and_scores_test_once_for_the_choice(shared_data, tmp_path, monkeypatch, one_torch_thread):
    dev_mcc = {1e-4: 10.0, 3e-4: 30.0, 1e-3: 20.0}
    seen, scored = [], []

    def fake_finetune(backbone, data, num_labels, recipe, cfg, seed, device, desc, lr=None, rc_data=None, problem="classification"):
        assert set(data) == {"train", "dev"}, "fine-tuning must not see test"
        seen.append(lr)
        return {"model": f"model@{lr}", "lr": lr, "metric": "mcc", "best_dev": dev_mcc[lr], "best_step": 1, "steps": 2, "epochs_run": 0.5,
                "history": [], "train_seconds": 0.0}

    def fake_score(model, data, cfg, device, rc=None, problem="classification"):
        scored.append((model, len(data.labels)))
        return {"mcc": 1.0, "f1": 2.0, "accuracy": 3.0}, np.full((len(data.labels), 2), 0.5)

    monkeypatch.setattr(gue, "finetune", fake_finetune)
    monkeypatch.setattr(gue, "score", fake_score)
    gue.run_gue(_cfg(shared_data, tmp_path, lr="1e-4,3e-4,1e-3", seeds="1,2", save_models="none"))  # the models are fakes
    assert seen == [1e-4, 3e-4, 1e-3] * 2
    assert scored == [("model@0.0003", 48)] * 2  # once per seed, the dev winner, on the test split
    record = json.loads((tmp_path / "out" / "runs" / "tf__0__n64__seed1.json").read_text())
    assert record["selected"] == {"lr": 3e-4} and record["dev_by_lr"] == {"0.0001": 10.0, "0.0003": 30.0, "0.001": 20.0}
    assert "lr 0.0003 x2" in (tmp_path / "out" / "results.md").read_text()


def test_low_data_subsets_are_nested_seeded_and_shared(shared_data, tmp_path):
    cfg = _cfg(shared_data, tmp_path, max_train_samples="20,100,0", max_eval_samples=40)
    tok = get_tokenizer("kmer6")
    task = prepare_task("tf/0", cfg, tok, 512)
    small, mid, full = (task.unit(n, 0) for n in (20, 100, 0))
    assert len(small) == 20 and len(mid) == 100 and len(full) == len(task.splits["train"]) == 32378
    assert set(small) <= set(mid) <= set(full)
    assert np.array_equal(small, prepare_task("tf/0", cfg, tok, 512).unit(20, 0))  # the same rows for every arm
    assert not np.array_equal(small, task.unit(20, 1))  # another --subsample_seed, other rows


def test_low_data_curve_end_to_end(shared_data, tmp_path, one_torch_thread):
    results = gue.run_gue(_cfg(shared_data, tmp_path, max_train_samples="32,64"))
    assert set(results["low_data"]) == {"32", "64"}
    sizes = {json.loads(p.read_text())["sizes"]["train"] for p in (tmp_path / "out" / "runs").glob("*.json")}
    assert sizes == {32, 64}
    assert "Low-data curve" in (tmp_path / "out" / "results.md").read_text()


def test_tokenizer_swap_needs_the_same_vocabulary(shared_data, tmp_path, capsys):
    kmer6 = get_tokenizer("kmer6")
    assert swap_tokenizer(kmer6, "nkmer6").name == "nkmer6"
    assert swap_tokenizer(get_tokenizer("nkmer6"), "kmer6").name == "kmer6"
    with pytest.raises(InputError, match="differs from the model's \\(kmer6\\) at id 5"):
        swap_tokenizer(kmer6, "base")
    from megadna.cli.finetune_gue import main

    with pytest.raises(SystemExit) as exc:
        main(["--gue_dir", str(shared_data / "gue"), "--model", "tiny", "--init", "random", "--tokenizer", "kmer6",
              "--finetune_tokenizer", "base", "--output_dir", str(tmp_path / "o"), "--datasets", "tf/0", "--progress", "false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --finetune_tokenizer base") and "\n" not in err


def test_a_token_the_model_lacks_is_read_as_unk(shared_data, tmp_path):
    from megadna.tokenizers import UNK_ID

    cfg = _cfg(shared_data, tmp_path, max_eval_samples=20)
    nkmer6, kmer6 = get_tokenizer("nkmer6"), get_tokenizer("kmer6")
    task = prepare_task("tf/0", cfg, swap_tokenizer(kmer6, "nkmer6"), 512, vocab_size=kmer6.vocab_size)
    ids = task.encoded["test"].input_ids
    assert int(ids.max()) < kmer6.vocab_size and (ids == UNK_ID).any()  # 101 bp = 16 6-mers + a 5-base tail
    raw = prepare_task("tf/0", cfg, nkmer6, 512).encoded["test"].input_ids
    assert torch.equal(ids[raw < kmer6.vocab_size], raw[raw < kmer6.vocab_size])


def test_rc_average_is_the_mean_of_the_two_passes(shared_data, tmp_path, one_torch_thread):
    from megadna.data.genome import reverse_complement
    from megadna.eval.data import Split

    cfg = _cfg(shared_data, tmp_path)
    backbone = load_backbone(cfg)
    model = backbone.classifier(2, seed=0).eval()
    split = read_split(shared_data / "gue" / "tf" / "0" / "dev.csv")
    split = Split(split.sequences[:12], split.labels[:12], split.index[:12])
    rc_split = Split([reverse_complement(s) for s in split.sequences], split.labels, split.index)
    data, rc = encode_split(backbone.tokenizer, split, 101), encode_split(backbone.tokenizer, rc_split, 101)
    device = torch.device("cpu")
    both = predict(model, data, 5, device, "fp32", rc=rc)
    expected = F.softmax((logits(model, data, 5, device, "fp32") + logits(model, rc, 5, device, "fp32")) / 2, dim=-1).numpy()
    np.testing.assert_allclose(both, expected, rtol=1e-6)
    assert not np.allclose(both, predict(model, data, 5, device, "fp32"))


def test_probe_mode_runs_a_random_control_and_reuses_cached_features(shared_data, tmp_path, monkeypatch, one_torch_thread):
    import megadna.eval.probe as probe

    cfg = _cfg(shared_data, tmp_path, mode="probe", seeds="1,2", max_train_samples=200, max_eval_samples=100, probe_C="0.1,1")
    results = gue.run_gue(cfg)
    row = results["datasets"][0]
    assert row["n_seeds"] == 2 and -100 <= row["mcc_mean"] <= 100
    record = json.loads((tmp_path / "out" / "runs" / "tf__0__n200__seed1.json").read_text())
    assert record["mode"] == "probe" and record["selected"]["C"] in (0.1, 1.0)
    cached = list((tmp_path / "out" / "embeddings").glob("*.npy"))
    assert len(cached) == 6  # 3 splits x 2 seeds (a random encoder is drawn per seed)
    for marker in (tmp_path / "out" / "runs").glob("*.json"):
        marker.unlink()  # force the units to run again: features must come from the cache

    def no_compute(*a, **k):
        raise AssertionError("features recomputed despite the cache")

    monkeypatch.setattr(probe, "features", no_compute)
    again = gue.run_gue(cfg)
    assert again["datasets"][0]["mcc_mean"] == pytest.approx(row["mcc_mean"])


def _arm(tmp_path, name, labels, preds_by_seed, index=None):
    d = tmp_path / name
    (d / "runs").mkdir(parents=True)
    (d / "predictions").mkdir()
    index = np.arange(len(labels)) if index is None else index
    for seed, preds in preds_by_seed.items():
        rn = f"t__0__seed{seed}"
        lines = ["index,label,prediction,prob_0,prob_1"] + [f"{i},{y},{p},0.5,0.5" for i, y, p in zip(index, labels, preds)]
        (d / "predictions" / f"{rn}.csv").write_text("\n".join(lines) + "\n")
        mcc = float(cmp.mcc_matrix(labels[None], np.asarray(preds)[None], 2)[0])
        (d / "runs" / f"{rn}.json").write_text(json.dumps({"dataset": "t/0", "seed": seed, "train_size": 0, "test": {"mcc": mcc}}))
    return d


def test_paired_interval_on_constructed_cases(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    noise = {s: rng.integers(0, 2, 400) for s in (1, 2)}
    good = {s: np.where(rng.random(400) < 0.9, labels, 1 - labels) for s in (1, 2)}  # ~80 MCC
    ctrl = _arm(tmp_path, "ctrl", labels, noise)
    res = cmp.compare({"good": _arm(tmp_path, "good", labels, good), "same": _arm(tmp_path, "same", labels, noise), "ctrl": ctrl},
                      "ctrl", tmp_path / "cmp", n_boot=500)
    rows = {r["arm"]: r for r in res["rows"] if r["dataset"] == "t/0"}
    assert rows["good"]["ci_low"] > 60 and rows["good"]["ci_low"] < rows["good"]["diff"] < rows["good"]["ci_high"]
    assert rows["same"]["diff"] == rows["same"]["ci_low"] == rows["same"]["ci_high"] == 0.0
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 0 and "Δ vs ctrl" in (tmp_path / "cmp" / "comparison.md").read_text()
    shifted = _arm(tmp_path, "shifted", labels, noise, index=np.arange(400) + 1)
    with pytest.raises(InputError, match="different test rows"):
        cmp.compare({"shifted": shifted, "ctrl": ctrl}, "ctrl", tmp_path / "cmp2", n_boot=10)


def test_fast_mcc_matches_scikit_learn():
    from sklearn.metrics import matthews_corrcoef

    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 3, (5, 200)), rng.integers(0, 3, (5, 200))
    p[0] = y[0]
    ours = cmp.mcc_matrix(y, p, 3)
    np.testing.assert_allclose(ours, [100 * matthews_corrcoef(a, b) for a, b in zip(y, p)], atol=1e-9)


@pytest.mark.parametrize("head_init", ["standardize", "probe"])
def test_head_init_reads_standardised_train_features_and_frozen_steps_leave_the_encoder(shared_data, tmp_path, head_init, monkeypatch, one_torch_thread):
    import megadna.eval.finetune as ft
    from megadna.eval.probe import features

    cfg = _cfg(shared_data, tmp_path, head_init=head_init, freeze_encoder_steps=2, max_steps=3, head_pooling="mean", lr=1e-2)
    backbone = load_backbone(cfg)
    task = prepare_task("tf/0", cfg, backbone.tokenizer, 512)
    data = {"train": task.train_rows(task.unit(64, 0)), "dev": task.encoded["dev"]}
    start = backbone.classifier(task.num_labels, 1, "mean")
    feats = features(start.bert, data["train"], -1, "mean", torch.device("cpu"), 64, "fp32")
    seen = []
    real_step = ft._train_step

    def spy(model, *args):  # the encoder as each optimizer step starts
        seen.append({k: v.clone() for k, v in model.bert.state_dict().items()})
        return real_step(model, *args)

    monkeypatch.setattr(ft, "_train_step", spy)
    result = ft.finetune(backbone, data, task.num_labels, task.recipe, cfg, 1, torch.device("cpu"), desc="t", lr=1e-2)
    model = result["model"]
    assert np.allclose(model.feature_mean.numpy(), feats.mean(0), atol=1e-5)
    assert np.allclose(model.feature_std.numpy(), feats.std(0), atol=1e-5)
    # steps 1-2 train the head only: the encoder is unchanged when step 3 starts; step 3 moves it
    assert all(torch.equal(seen[0][k], seen[2][k]) for k in seen[0])
    assert any(not torch.equal(seen[2][k], v) for k, v in result["model"].bert.state_dict().items()) or result["best_step"] < 3
    if head_init == "probe":
        assert result["history"][0]["step"] == 0  # the probe's own state is a candidate, scored on dev first


def test_head_features_are_computed_once_per_seed_and_change_nothing(shared_data, tmp_path, monkeypatch, one_torch_thread):
    """--head_init standardize with an lr sweep: the frozen features are computed once per (dataset,
    seed), not per lr, and the results are those of computing them per lr."""
    calls = []
    real = gue.head_features
    monkeypatch.setattr(gue, "head_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = dict(head_init="standardize", head_pooling="mean", lr="1e-3,2e-3", seeds="1,2", save_models="none")
    once = gue.run_gue(_cfg(shared_data, tmp_path / "once", **cfg))
    assert len(calls) == 2  # two seeds, one dataset
    monkeypatch.setattr(gue, "head_features", lambda *a, **k: None)  # finetune then computes them per lr
    per_lr = gue.run_gue(_cfg(shared_data, tmp_path / "per_lr", **cfg))
    assert once["datasets"][0]["per_seed"] == per_lr["datasets"][0]["per_seed"]
