"""The linear probe (`--mode probe`): what a frozen encoder already knows, with no fine-tuning.

- features: one vector per sequence from a frozen encoder (eval mode, no gradients): the output of
  one layer (`hidden_states` indexing: 0 = embeddings, -1 = last), mean-pooled over the real tokens
  ([CLS] and [SEP] included, padding excluded) or the [CLS] vector.
- cache: features are costly and the same for every C and every seed of a pre-trained encoder, so
  they are kept on disk under a digest of what determines them; an entry that does not read back
  exactly (damaged file, other key, wrong shape) is recomputed, never trusted.
- probe: standardised features (statistics of train only) -> logistic regression for each C; the C
  with the best dev MCC is chosen (ties: the smaller C, the stronger regularisation), and only that
  model is scored on test, once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval.data import Encoded
from megadna.eval.finetune import autocast, batch_rows
from megadna.eval.problems import class_scores as scores
from megadna.jsonfile import read_json_or_none, write_json
from megadna.model import Bert
from megadna.model.heads import POOLINGS, check_layer, pool

log = logging.getLogger(__name__)


def hidden_states(bert: Bert, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
    """The embedding output, then each layer's output: num_layers + 1 tensors [B, L, hidden_size]."""
    return bert.hidden_states(input_ids, attention_mask)


@torch.no_grad()
def features(bert: Bert, data: Encoded, layer: int, pooling: str, device: torch.device, batch_size: int, precision: str) -> np.ndarray:
    """Pooled features [n, hidden_size] float32 of every row of `data`, from hidden_states[layer].

    The encoder is moved to `device` (in place) and run in eval mode; its training flag is restored."""
    if pooling not in POOLINGS:
        raise InputError(f"--pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    check_layer(bert, layer, "--probe_layer")
    n = len(data.labels)
    if n == 0:
        return np.zeros((0, bert.embeddings.word_embeddings.embedding_dim), dtype=np.float32)
    was_training = bert.training
    bert.to(device).eval()
    out = []
    try:
        for start in range(0, n, batch_size):
            ids, mask, _ = batch_rows(data, torch.arange(start, min(start + batch_size, n)), device)
            with autocast(device, precision):
                h = hidden_states(bert, ids, mask)[layer]
            out.append(pool(h, mask, pooling).cpu())
    finally:
        bert.train(was_training)
    return torch.cat(out).numpy().astype(np.float32, copy=False)


def cache_name(key: dict) -> str:
    """The entry's file stem: the first 16 hex digits of the SHA-256 of the key's canonical JSON."""
    return hashlib.sha256(_canonical(key).encode()).hexdigest()[:16]


def _canonical(key: dict) -> str:
    try:
        return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(f"feature cache key is not plain JSON ({e}): {key!r}") from None


def _load_entry(npy: Path, meta: Path, key: dict) -> np.ndarray | None:
    """The cached array, or None when the entry is missing, for another key, or does not read back."""
    if not (npy.is_file() and meta.is_file()):
        return None
    if read_json_or_none(meta) != json.loads(_canonical(key)):
        log.warning("%s: holds another key than this run's; recomputing the features", meta)
        return None
    try:
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        log.warning("%s: unreadable (%s); recomputing the features", npy, e)
        return None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind != "f":
        log.warning("%s: not a 2-D float array; recomputing the features", npy)
        return None
    return arr


def cached_features(cache_dir: Path, key: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """compute()'s [n, hidden] array, read from cache_dir/<name>.npy when an entry for `key` is there
    (its key in <name>.json), else computed and stored (each file written to a temp name, then renamed)."""
    cache_dir = Path(cache_dir)
    name = cache_name(key)
    npy, meta = cache_dir / f"{name}.npy", cache_dir / f"{name}.json"
    arr = _load_entry(npy, meta, key)
    if arr is not None:
        return arr
    arr = np.ascontiguousarray(compute(), dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D [n, hidden], got shape {arr.shape}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f"{name}.npy.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, npy)
    write_json(meta, json.loads(_canonical(key)))  # last: an entry without its key is never read
    return arr


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        log.warning("probe: logistic regression at C=%g did not converge in 2000 iterations", c)
    return model


def _proba(model, x: np.ndarray, num_labels: int) -> np.ndarray:
    """Class probabilities [n, num_labels]; classes absent from train get 0."""
    out = np.zeros((len(x), num_labels), dtype=np.float64)
    out[:, model.classes_] = model.predict_proba(x)
    return out


def fit_linear(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], Cs: list[float], seed: int,
               num_labels: int, rc_feats: dict[str, np.ndarray] | None = None) -> dict:
    """Standardised logistic regression on "train", C chosen by dev MCC (ties: the smaller C). Reads
    train and dev only. Returns {"scaler", "model", "C", "best_dev" (dev MCC), "dev_by_C", "probs": fn(split)}."""
    from sklearn.preprocessing import StandardScaler

    cs = list(dict.fromkeys(float(c) for c in Cs))
    if not cs or any(c <= 0 for c in cs):
        raise InputError(f"probe: C values must be given and > 0, got {list(Cs)!r}")
    y_train, y_dev = np.asarray(labels["train"]), np.asarray(labels["dev"])
    if len(np.unique(y_train)) < 2:
        raise InputError(f"probe: the {len(y_train)} train rows hold one class only; a classifier needs two")
    scaler = StandardScaler().fit(np.asarray(feats["train"], dtype=np.float64))  # train statistics only

    def probs(model, split: str) -> np.ndarray:
        p = _proba(model, scaler.transform(np.asarray(feats[split], dtype=np.float64)), num_labels)
        if rc_feats is not None:
            p = (p + _proba(model, scaler.transform(np.asarray(rc_feats[split], dtype=np.float64)), num_labels)) / 2
        return p

    x_train = scaler.transform(np.asarray(feats["train"], dtype=np.float64))
    best, dev_by_C = None, {}
    for c in cs:
        model = _fit(x_train, y_train, c, seed)
        mcc = scores(y_dev, probs(model, "dev").argmax(1))["mcc"]
        dev_by_C[str(c)] = mcc
        if best is None or mcc > best["best_dev"] or (mcc == best["best_dev"] and c < best["C"]):
            best = {"best_dev": mcc, "C": c, "model": model}
    return {**best, "scaler": scaler, "dev_by_C": dev_by_C, "probs": lambda split: probs(best["model"], split)}


def fit_probe(feats: dict[str, np.ndarray], labels: dict[str, np.ndarray], Cs: list[float], seed: int,
              rc_feats: dict[str, np.ndarray] | None = None, num_labels: int | None = None) -> dict:
    """`fit_linear` on train and dev, then test scored once with the chosen model. With rc_feats (the
    reverse-complemented sequences' features), class probabilities are the mean of the two passes, on
    dev and test alike.

    Returns {"test": scores (x 100), "metric": "mcc", "best_dev", "selected": {"C"}, "dev_by_C": {str(C): dev MCC},
    "probs": test probabilities [n, num_labels] float32} (num_labels: default the largest train/dev label + 1, >= 2).
    """
    y_train, y_dev = np.asarray(labels["train"]), np.asarray(labels["dev"])
    k = num_labels or max(2, int(max(y_train.max(), y_dev.max())) + 1)
    fit = fit_linear(feats, labels, Cs, seed, k, rc_feats=rc_feats)
    # Only now is test read: features and labels, once, for the chosen model.
    test_probs = fit["probs"]("test")
    return {"test": scores(np.asarray(labels["test"]), test_probs.argmax(1)), "metric": "mcc", "best_dev": fit["best_dev"],
            "selected": {"C": fit["C"]}, "dev_by_C": fit["dev_by_C"], "probs": test_probs.astype(np.float32)}
