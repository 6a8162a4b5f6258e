"""One GUE dataset made ready for every unit that uses it: read once, tokenized once, and the rows of
each low-data subset.

- Train subsets are nested and seeded: a permutation of the train rows fixed by (subsample_seed,
  dataset); the subset of size n is its first n rows. So the 100 rows are inside the 500, and every
  arm (model) and fine-tuning seed sees the same rows: differences between arms are not differences
  of data.
- `--rc_average`: each split also encoded reverse-complemented, for averaging predictions.
- `--finetune_tokenizer`: the sequences tokenized by another tokenizer with the same vocabulary
  (the paper's first observation: overlapping k-mers at fine-tuning help either pre-trained weights).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megadna.data.genome import reverse_complement
from megadna.errors import InputError
from megadna.eval.config import GUEConfig, Recipe
from megadna.eval.data import SPLITS, Encoded, Split, encode_split, load_dataset, plan_tokens
from megadna.tokenizers import UNK_ID, DNATokenizer, get_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Task:
    name: str
    splits: dict[str, Split]  # train is the largest subset any unit uses
    encoded: dict[str, Encoded]
    rc_encoded: dict[str, Encoded] | None  # None unless --rc_average
    max_tokens: int
    truncated: dict
    num_labels: int  # outputs of the head: classes, 1 (regression) or labels (multilabel)
    recipe: Recipe
    problem: str = "classification"  # megadna.eval.problems

    def unit(self, train_size: int, subsample_seed: int) -> np.ndarray:
        """The train rows of one low-data point (0: all), nested across sizes."""
        n = len(self.splits["train"])
        order = np.random.default_rng([subsample_seed, zlib.crc32(self.name.encode()), 7]).permutation(n)
        return np.sort(order[:train_size]) if 0 < train_size < n else np.arange(n)

    def train_rows(self, rows: np.ndarray) -> Encoded:
        e, idx = self.encoded["train"], torch.from_numpy(rows)
        return Encoded(e.input_ids[idx], e.lengths[idx], e.labels[idx])

    def features(self, bert, split: str, model_key: dict, cfg: GUEConfig, device: torch.device, cache_dir: Path, rc: bool) -> np.ndarray:
        """Pooled features of one split (all its rows), from the cache when computed before."""
        from megadna.eval.probe import cached_features, features

        data = (self.rc_encoded if rc else self.encoded)[split]
        rows = hashlib.sha256(np.ascontiguousarray(self.splits[split].index).tobytes()).hexdigest()
        key = {"model": model_key, "dataset": self.name, "split": split, "rows": rows, "layer": cfg.probe_layer, "pooling": cfg.pooling,
               "max_tokens": self.max_tokens, "rc": rc, "tokenizer": cfg.finetune_tokenizer or None}
        key = json.loads(json.dumps(key, default=str))
        return cached_features(cache_dir, key, lambda: features(bert, data, cfg.probe_layer, cfg.pooling, device, cfg.eval_batch_size, cfg.precision))


def prepare_task(name: str, cfg: GUEConfig, tokenizer: DNATokenizer, max_positions: int, vocab_size: int | None = None) -> Task:
    """Read, subsample (dev/test to --max_eval_samples; train to the largest size of the curve) and tokenize."""
    splits = load_dataset(cfg.gue_dir, name, cfg)  # train: the largest subset of the curve
    max_tokens, truncated = plan_tokens(tokenizer, splits, max_positions, cfg.max_tokens, name)
    encoded = {s: encode_split(tokenizer, sp, max_tokens) for s, sp in splits.items()}
    rc_encoded = None
    if cfg.rc_average:
        rc_encoded = {s: encode_split(tokenizer, dataclasses.replace(sp, sequences=[reverse_complement(q) for q in sp.sequences]), max_tokens)
                      for s, sp in splits.items()}
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        for enc in filter(None, (encoded, rc_encoded)):
            _clamp_unknown(enc, vocab_size, name)
    # Classes come from the whole train.csv (load_dataset checked them), whatever subset a unit trains on.
    num_labels = splits["train"].num_classes
    return Task(name, splits, encoded, rc_encoded, max_tokens, truncated, num_labels, cfg.resolved_recipe(name), splits["train"].problem)


def swap_tokenizer(model_tokenizer: DNATokenizer, spec: str) -> DNATokenizer:
    """The tokenizer named by --finetune_tokenizer, refused unless every token the two share has the
    same id (one vocabulary is a prefix of the other): an embedding row must mean the same token under
    both. kmer6's vocabulary is nkmer6's less its 5 single-base fallbacks; such a token, produced for
    a model that lacks it, is read as [UNK] (prepare_task counts and logs them)."""
    other = get_tokenizer(spec)
    n = min(other.vocab_size, model_tokenizer.vocab_size)
    if other.vocab[:n] != model_tokenizer.vocab[:n]:
        at = next(i for i in range(n) if other.vocab[i] != model_tokenizer.vocab[i])
        raise InputError(f"--finetune_tokenizer {spec}: its vocabulary differs from the model's ({model_tokenizer.name}) at id {at} "
                         f"({other.vocab[at]!r} vs {model_tokenizer.vocab[at]!r}); swap only between tokenizers of one vocabulary "
                         "(e.g. kmer6 <-> nkmer6)")
    return other


def _clamp_unknown(encoded: dict[str, Encoded], vocab_size: int, name: str) -> int:
    """Ids the model has no embedding for become [UNK]; returns how many there were."""
    n = 0
    for e in encoded.values():
        beyond = e.input_ids >= vocab_size
        n += int(beyond.sum())
        e.input_ids[beyond] = UNK_ID
    if n:
        log.warning("%s: %d tokens are not in the model's vocabulary (of %d ids) and are read as [UNK]", name, n, vocab_size)
    return n


__all__ = ["SPLITS", "Task", "prepare_task", "swap_tokenizer"]
