"""The linear probe: hidden states, pooled features, the feature cache, and C chosen on dev only."""

import json

import numpy as np
import pytest
import torch

from megadna.errors import InputError
from megadna.eval import probe
from megadna.eval.config import GUEConfig
from megadna.eval.data import Encoded, encode_split, load_dataset, plan_tokens
from megadna.eval.finetune import load_backbone
from megadna.eval.probe import cache_name, cached_features, features, fit_probe, hidden_states
from megadna.model import BertForMLM, model_config

VOCAB = 4**6 + 5
CPU = torch.device("cpu")


def _bert(seed=0):
    torch.manual_seed(seed)
    return BertForMLM(model_config("tiny", VOCAB)).bert.eval()


def _ids(lengths, width, seed=1):
    """Rows of [CLS] tokens [SEP] then padding (id 0), with their lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, VOCAB, (n,), generator=g)
        ids[i, 0], ids[i, n - 1] = 2, 3
    return ids, torch.tensor(lengths)


def test_hidden_states_last_is_forward_and_match_hf(one_torch_thread):
    transformers = pytest.importorskip("transformers")
    bert = _bert()
    ids, lengths = _ids([20, 12, 20], 20)
    mask = (torch.arange(20)[None] < lengths[:, None]).long()
    with torch.no_grad():
        hs = hidden_states(bert, ids, mask)
        assert len(hs) == len(bert.encoder.layer) + 1
        assert torch.equal(hs[-1], bert(ids, mask))
        assert torch.equal(hs[0], bert.embeddings(ids))
        assert torch.equal(bert.hidden_states(ids)[-1], bert(ids))  # no mask at all
        model = BertForMLM(model_config("tiny", VOCAB))
        model.bert.load_state_dict(bert.state_dict())
        hf = transformers.BertForMaskedLM._from_config(model.config.to_hf_config(), attn_implementation="sdpa")
        hf.load_state_dict(model.state_dict())
        ref = hf.eval()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(ref) == len(hs)
    for ours, theirs in zip(hs, ref):
        real = mask.bool()
        torch.testing.assert_close(ours[real], theirs[real], atol=1e-5, rtol=1e-5)


def test_mean_pooling_ignores_padding(one_torch_thread):
    bert = _bert()
    ids, lengths = _ids([9, 30], 40)
    # Row 0 alone (trimmed to its own 9 tokens), and beside a longer row (padded to 30), and with
    # its stored padding changed: the same feature every time.
    both = Encoded(ids, lengths, torch.zeros(2, dtype=torch.long))
    alone = Encoded(ids[:1], lengths[:1], torch.zeros(1, dtype=torch.long))
    junk = ids.clone()
    junk[0, 9:] = 7  # whatever sits past the length must not count
    for layer in (0, 1, -1):
        f_both = features(bert, both, layer, "mean", CPU, 2, "fp32")
        f_alone = features(bert, alone, layer, "mean", CPU, 1, "fp32")
        f_junk = features(bert, Encoded(junk, lengths, both.labels), layer, "mean", CPU, 2, "fp32")
        assert f_both.dtype == np.float32 and f_both.shape == (2, 64)
        np.testing.assert_allclose(f_both[0], f_alone[0], atol=1e-5)
        np.testing.assert_allclose(f_junk[0], f_alone[0], atol=1e-5)
    # It is the plain mean over the 9 real tokens ([CLS] and [SEP] included); cls is token 0.
    with torch.no_grad():
        h = bert.hidden_states(ids[:1, :9])[-1][0]
    np.testing.assert_allclose(f_alone[0], h.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(features(bert, both, -1, "cls", CPU, 2, "fp32")[0], h[0].numpy(), atol=1e-5)
    assert not np.allclose(features(bert, both, 0, "mean", CPU, 2, "fp32"), f_both)


def test_features_restore_training_mode_and_check_layer(one_torch_thread):
    bert = _bert().train()
    ids, lengths = _ids([10, 10], 10)
    data = Encoded(ids, lengths, torch.zeros(2, dtype=torch.long))
    a = features(bert, data, -1, "mean", CPU, 2, "fp32")
    b = features(bert, data, 2, "mean", CPU, 2, "fp32")  # layer 2 of 2 is the last; eval mode: no dropout
    np.testing.assert_array_equal(a, b)
    assert bert.training
    for bad in (3, -4):
        with pytest.raises(InputError, match="probe_layer"):
            features(bert, data, bad, "mean", CPU, 2, "fp32")
    with pytest.raises(InputError, match="pooling"):
        features(bert, data, -1, "max", CPU, 2, "fp32")


def test_cache_hit_miss_and_damage(tmp_path):
    key = {"model": {"path": "x", "random_seed": 1}, "dataset": "tf/0", "split": "dev", "layer": -1}
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(3, 4)

    def never():
        raise AssertionError("recomputed despite a good cache entry")

    first = cached_features(tmp_path, key, compute)
    name = cache_name(key)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{name}.json", f"{name}.npy"]
    assert json.loads((tmp_path / f"{name}.json").read_text()) == key
    hit = cached_features(tmp_path, dict(reversed(list(key.items()))), never)  # key order does not matter
    assert hit.dtype == np.float32 and np.array_equal(hit, first) and len(calls) == 1
    assert cache_name({**key, "layer": 0}) != name

    npy = tmp_path / f"{name}.npy"
    for damage in (lambda: npy.write_bytes(npy.read_bytes()[:-7]),  # truncated
                   lambda: npy.write_bytes(b"not a numpy file at all"),
                   lambda: np.save(npy, np.zeros(5, dtype=np.float32)),  # not 2-D
                   lambda: np.save(npy, np.array([{"a": 1}], dtype=object)),  # pickle: refused
                   lambda: npy.unlink()):
        before = len(calls)
        damage()
        again = cached_features(tmp_path, key, compute)
        assert len(calls) == before + 1 and np.array_equal(again, first)
        assert np.array_equal(cached_features(tmp_path, key, never), again)

    meta = tmp_path / f"{name}.json"
    meta.write_text(json.dumps({**key, "split": "test"}))  # another key under this name
    before = len(calls)
    cached_features(tmp_path, key, compute)
    assert len(calls) == before + 1 and json.loads(meta.read_text()) == key
    meta.write_text("{truncated")
    cached_features(tmp_path, key, compute)
    assert len(calls) == before + 2
    assert not list(tmp_path.glob("*.tmp"))


def test_cache_refuses_a_key_that_is_not_json(tmp_path):
    with pytest.raises(InputError, match="not plain JSON"):
        cached_features(tmp_path, {"p": tmp_path}, lambda: np.zeros((1, 1)))


class _Recording(dict):
    """A split -> array mapping that records which splits are read, in order."""

    def __init__(self, *a, log, tag, **k):
        super().__init__(*a, **k)
        self.log, self.tag = log, tag

    def __getitem__(self, split):
        self.log.append((self.tag, split))
        return super().__getitem__(split)


def _dev_test_disagree():
    """One feature; train is 80% class 1. A strong penalty (tiny C) predicts class 1 everywhere (MCC 0);
    a weak one follows the feature's sign. Dev labels follow the sign (dev prefers the weak penalty);
    test labels are the opposite (test would prefer the strong one: MCC 0 beats -100)."""
    rng = np.random.default_rng(0)

    def split(n, frac_pos):
        y = (rng.random(n) < frac_pos).astype(np.int64)
        x = np.where(y == 1, 1.0, -1.0) * rng.uniform(0.5, 2.0, n)
        return x[:, None].astype(np.float32), y

    (xtr, ytr), (xdv, ydv), (xte, yte) = split(200, 0.8), split(100, 0.5), split(100, 0.5)
    return {"train": xtr, "dev": xdv, "test": xte}, {"train": ytr, "dev": ydv, "test": 1 - yte}


def test_fit_probe_chooses_C_on_dev_and_reads_test_once_after():
    feats, labels = _dev_test_disagree()
    log = []
    out = fit_probe(_Recording(feats, log=log, tag="x"), _Recording(labels, log=log, tag="y"), [1e-6, 10.0], seed=0)
    assert out["dev_by_C"]["1e-06"] == 0.0 and out["dev_by_C"]["10.0"] == 100.0
    assert out["selected"] == {"C": 10.0} and out["best_dev"] == 100.0
    assert out["test"]["mcc"] == -100.0  # the dev choice is scored, although test would have preferred 1e-6
    assert [e for e in log if e[1] == "test"] == [("x", "test"), ("y", "test")]
    assert log[-2:] == [("x", "test"), ("y", "test")]  # test read once, after every fit and dev score
    assert out["probs"].shape == (100, 2) and np.allclose(out["probs"].sum(1), 1, atol=1e-6)
    # Ties go to the smaller C: one feature that separates dev perfectly at every C.
    tie = fit_probe(feats, labels, [10.0, 1.0, 100.0], seed=0)
    assert set(tie["dev_by_C"].values()) == {100.0} and tie["selected"] == {"C": 1.0}


def test_fit_probe_multiclass_rc_average_and_errors():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    centres = rng.normal(0, 3, (3, 5))

    def split(n):
        y = rng.integers(0, 3, n)
        return (centres[y] + rng.normal(0, 1, (n, 5))).astype(np.float32), y

    data = {s: split(n) for s, n in (("train", 300), ("dev", 90), ("test", 90))}
    feats, labels = {s: d[0] for s, d in data.items()}, {s: d[1] for s, d in data.items()}
    out = fit_probe(feats, labels, [0.1, 1.0], seed=3)
    assert out["probs"].shape == (90, 3) and out["test"]["accuracy"] > 80
    assert fit_probe(feats, labels, [0.1, 1.0], seed=3, num_labels=5)["probs"].shape == (90, 5)

    rc = {s: f + rng.normal(0, 1, f.shape).astype(np.float32) for s, f in feats.items()}
    same = fit_probe(feats, labels, [1.0], seed=3, rc_feats=feats)
    np.testing.assert_allclose(same["probs"], fit_probe(feats, labels, [1.0], seed=3)["probs"], atol=1e-6)
    avg = fit_probe(feats, labels, [1.0], seed=3, rc_feats=rc)
    scaler = StandardScaler().fit(feats["train"].astype(np.float64))
    lr = LogisticRegression(C=1.0, max_iter=2000, random_state=3).fit(scaler.transform(feats["train"].astype(np.float64)), labels["train"])
    expect = (lr.predict_proba(scaler.transform(feats["test"].astype(np.float64)))
              + lr.predict_proba(scaler.transform(rc["test"].astype(np.float64)))) / 2
    np.testing.assert_allclose(avg["probs"], expect, atol=1e-6)

    with pytest.raises(InputError, match="one class"):
        fit_probe(feats, {**labels, "train": np.zeros(300, dtype=np.int64)}, [1.0], seed=0)
    with pytest.raises(InputError, match="C values"):
        fit_probe(feats, labels, [], seed=0)


def test_probe_end_to_end_on_real_tf0(shared_data, tmp_path, one_torch_thread):
    cfg = GUEConfig(gue_dir=str(shared_data / "gue"), model="tiny", init="random", tokenizer="kmer6",
                    max_train_samples=400, max_eval_samples=200, progress=False)
    backbone = load_backbone(cfg)
    splits = load_dataset(cfg.gue_dir, "tf/0", cfg)
    max_tokens, _ = plan_tokens(backbone.tokenizer, splits, backbone.config.max_position_embeddings, 0, "tf/0")
    bert = backbone.classifier(2, seed=1).bert
    feats, labels = {}, {}
    for s, sp in splits.items():
        data = encode_split(backbone.tokenizer, sp, max_tokens)
        key = {"model": backbone.info, "dataset": "tf/0", "split": s, "max_tokens": max_tokens}
        feats[s] = cached_features(tmp_path, key, lambda d=data: features(bert, d, -1, "mean", CPU, 64, "fp32"))
        labels[s] = data.labels.numpy()
        assert feats[s].shape == (len(sp), backbone.config.hidden_size) and np.isfinite(feats[s]).all()
    assert len(feats["train"]) == 400 and len(feats["test"]) == 200
    out = fit_probe(feats, labels, [0.01, 1.0], seed=1)
    assert -100 <= out["test"]["mcc"] <= 100 and out["selected"]["C"] in (0.01, 1.0)
    assert set(out["dev_by_C"]) == {"0.01", "1.0"} and out["best_dev"] == max(out["dev_by_C"].values())
    assert out["probs"].shape == (200, 2)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert probe.cache_name(key) in {p.stem for p in tmp_path.glob("*.npy")}
