"""GUE (Genome Understanding Evaluation): fine-tune a sequence classifier per dataset and seed, report
MCC / macro F1 / accuracy beside the published baselines. See docs/GUE.md.

    results = run_gue(GUEConfig(gue_dir="data/GUE", model="runs/hg38-kmer6", output_dir="runs/gue"))
    print(format_table(results))

The mental model:
- data: `GUE/<task>/<dataset>/{train,dev,test}.csv`, header `sequence,label`; every file is
  validated row by row as it is read (a bad row is an InputError naming file and line).
- model: `BertClassifier` = megadna's BERT encoder + the head of HF's BertForSequenceClassification
  ([CLS] hidden state -> dense -> tanh "pooler" -> dropout -> linear). DNABERT-2 fine-tuned through
  that same class, so the choice keeps the comparison like for like. The pooler is new (pre-training
  has no next-sentence task), so it starts from random init, as in HF.
- recipe: DNABERT-2's published fine-tuning scripts (`FAMILY_RECIPES`); every knob can be overridden.
- selection: dev MCC is measured every `eval_steps` (and at the last step); the best state is kept
  in memory and that one is scored on test. (DNABERT-2's Trainer picked the lowest dev loss.)
- restarts: each finished (dataset, seed) leaves predictions/<task>__<dataset>__seed<k>.csv and then
  runs/<same>.json (written last, so it marks completion); a re-run skips those and re-reports them.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from megadna.errors import InputError, where
from megadna.model import PRESETS, Bert, BertForMLM, ModelConfig, model_config
from megadna.tokenizers import DNATokenizer, get_tokenizer

log = logging.getLogger("megadna.gue")

SPLITS = ("train", "dev", "test")
BASELINES_FILE = Path(__file__).resolve().parent / "data" / "gue_baselines.csv"
# Published columns shown beside ours: (column in gue_baselines.csv, heading).
BASELINE_COLUMNS = (("dnabert2", "DNABERT-2"), ("dnabert_6mer", "DNABERT (6-mer)"), ("nt_2500m_multi", "NT-2500M-multi"))
METRICS = ("mcc", "f1", "accuracy")


# --------------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    epochs: int
    warmup_steps: int
    eval_steps: int  # 0: evaluate at the end of every epoch
    max_steps: int = 0  # > 0: train exactly this many steps, whatever `epochs` says (HF Trainer semantics)


# Source: DNABERT-2's finetune/scripts/run_dnabert2.sh (github.com/MAGICS-LAB/DNABERT_2, the version
# with lr=3e-5 that the paper's Table 4 used), with finetune/train.py's defaults (AdamW, weight decay
# 0.01, linear warmup then linear decay, HF Trainer's max_grad_norm 1.0). The paper states a global
# batch of 32. Keys are matched against "task/dataset", first match wins; the last is the fallback.
FAMILY_RECIPES: tuple[tuple[str, Recipe], ...] = (
    (r"EMP/.*", Recipe(epochs=3, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_core_tata", Recipe(epochs=10, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_core_.*", Recipe(epochs=4, warmup_steps=50, eval_steps=400)),
    (r"prom/prom_300_tata", Recipe(epochs=10, warmup_steps=50, eval_steps=200)),
    (r"prom/prom_300_.*", Recipe(epochs=4, warmup_steps=50, eval_steps=400)),
    (r"splice/.*", Recipe(epochs=5, warmup_steps=50, eval_steps=200)),
    (r"virus/.*", Recipe(epochs=8, warmup_steps=50, eval_steps=200)),
    (r"mouse/.*", Recipe(epochs=5, warmup_steps=30, eval_steps=200, max_steps=1000)),
    (r"tf/.*", Recipe(epochs=3, warmup_steps=30, eval_steps=200)),
    (r".*", Recipe(epochs=3, warmup_steps=50, eval_steps=200)),  # datasets outside GUE (e.g. the demo)
)


def recipe_for(name: str) -> Recipe:
    """DNABERT-2's recipe for "task/dataset"."""
    return next(r for pattern, r in FAMILY_RECIPES if re.fullmatch(pattern, name))


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


@dataclass
class GUEConfig:
    gue_dir: str = field(default="", metadata={"help": "folder holding <task>/<dataset>/{train,dev,test}.csv (the GUE folder)"})
    model: str = field(default="", metadata={"help": "--init pretrained: a checkpoint dir, a run's save_dir or an export; --init random: a preset (" + ", ".join(PRESETS) + ")"})
    init: str = field(default="pretrained", metadata={"help": "pretrained | random (the control: same architecture, no pre-training)"})
    tokenizer: str = field(default="", metadata={"help": "--init random only: kmer6, nkmer6, base or a BPE directory (a pretrained model brings its own)"})
    output_dir: str = field(default="runs/gue", metadata={"help": "results, predictions and per-run markers go here"})
    datasets: str = field(default="", metadata={"help": "comma-separated task/dataset names (e.g. prom/prom_core_notata,tf/0); empty: every dataset found"})
    seeds: str = field(default="42,43,44", metadata={"help": "comma-separated fine-tuning seeds"})
    lr: float = field(default=3e-5, metadata={"help": "AdamW peak learning rate"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not on biases and LayerNorm)"})
    batch_size: int = field(default=32, metadata={"help": "sequences per optimizer step"})
    micro_batch_size: int = field(default=0, metadata={"help": "sequences per forward pass (0: batch_size); batch_size must be a multiple"})
    eval_batch_size: int = field(default=64, metadata={"help": "sequences per forward pass in evaluation"})
    epochs: int = field(default=-1, metadata={"help": "training epochs (-1: the dataset family's recipe)"})
    max_steps: int = field(default=-1, metadata={"help": "> 0: train exactly this many steps, overriding epochs; 0: no cap; -1: the recipe's"})
    warmup_steps: int = field(default=-1, metadata={"help": "linear warmup steps (-1: the recipe's), then linear decay to 0"})
    eval_steps: int = field(default=-1, metadata={"help": "steps between dev evaluations (0: every epoch end; -1: the recipe's); always at the last step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (HF Trainer's default)"})
    max_tokens: int = field(default=0, metadata={"help": "tokens per sequence incl. [CLS]/[SEP] (0: the longest sequence's, capped at the model's positions)"})
    max_train_samples: int = field(default=0, metadata={"help": "use a seeded random subset of train of this size (0: all)"})
    max_eval_samples: int = field(default=0, metadata={"help": "use seeded random subsets of dev and test of this size (0: all)"})
    subsample_seed: int = field(default=0, metadata={"help": "seed of those subsets (the same for every fine-tuning seed)"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available) | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar"})

    def __post_init__(self):
        if self.init not in ("pretrained", "random"):
            raise InputError(f"--init must be pretrained or random, got {self.init!r}")
        if not self.model:
            raise InputError("--model is required: a checkpoint/run/export path (--init pretrained) or a preset (--init random)")
        if self.init == "random":
            if self.model not in PRESETS:
                raise InputError(f"--init random takes a preset as --model ({', '.join(PRESETS)}), got {self.model!r}")
            if not self.tokenizer:
                raise InputError("--init random needs --tokenizer (e.g. kmer6), as no checkpoint brings one")
        elif self.tokenizer:
            raise InputError("--tokenizer is for --init random only: a pretrained model is fine-tuned with the tokenizer it was trained with")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"--precision must be auto, fp32 or bf16, got {self.precision!r}")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1")
        micro = self.micro_batch_size or self.batch_size
        if micro < 1 or self.batch_size % micro:
            raise InputError(f"--batch_size {self.batch_size} must be a multiple of --micro_batch_size {micro}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise InputError("--lr and --max_grad_norm must be > 0, --weight_decay >= 0")
        for name in ("max_tokens", "max_train_samples", "max_eval_samples"):
            if getattr(self, name) < 0:
                raise InputError(f"--{name} must be >= 0")
        if self.max_tokens == 1:
            raise InputError("--max_tokens must leave room for [CLS] and [SEP] (>= 2)")
        self.seed_list()  # validates

    def seed_list(self) -> list[int]:
        try:
            seeds = [int(s) for s in str(self.seeds).split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds must be comma-separated integers, got {self.seeds!r}") from None
        if not seeds or len(set(seeds)) != len(seeds):
            raise InputError(f"--seeds must name at least one seed, each once, got {self.seeds!r}")
        return seeds

    def resolved_recipe(self, name: str) -> Recipe:
        r = recipe_for(name)
        return Recipe(
            epochs=self.epochs if self.epochs >= 0 else r.epochs,
            warmup_steps=self.warmup_steps if self.warmup_steps >= 0 else r.warmup_steps,
            eval_steps=self.eval_steps if self.eval_steps >= 0 else r.eval_steps,
            max_steps=self.max_steps if self.max_steps >= 0 else r.max_steps,
        )

    def run_key(self) -> dict:
        """What decides one (dataset, seed) result: a finished run is reused only if this is unchanged."""
        # `model` is left out: the model's identity (resolved path, step, shape, tokenizer) is added by run_gue.
        skip = {"gue_dir", "output_dir", "datasets", "seeds", "device", "progress", "model"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

_DNA = re.compile(r"[ACGTNacgtn]+")
_LABEL = re.compile(r"\d+")


@dataclass
class Split:
    sequences: list[str]  # upper-case A/C/G/T/N
    labels: np.ndarray  # int64
    index: np.ndarray  # int64: row of each sequence in the file (0 = first data row, line 2)

    def __len__(self) -> int:
        return len(self.sequences)


def read_split(path: Path) -> Split:
    """A GUE csv (header `sequence,label`), validated row by row; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; a GUE dataset folder holds train.csv, dev.csv and test.csv")
    seqs, labels = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(f"{where(path, line=1)}: the file is empty; expected the header 'sequence,label'")
            if [h.strip().lstrip("\ufeff").lower() for h in header] != ["sequence", "label"]:
                raise InputError(f"{where(path, line=1)}: header is {','.join(header)!r}, expected 'sequence,label'")
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    raise InputError(f"{where(path, line=line)}: empty row; every row is 'sequence,label'")
                if len(row) != 2:
                    raise InputError(f"{where(path, line=line)}: {len(row)} fields, expected 2 (sequence,label)")
                seq, label = row[0].strip(), row[1].strip()
                if not _DNA.fullmatch(seq):
                    bad = next((c for c in seq if c not in "ACGTNacgtn"), "") if seq else ""
                    what = f"non-DNA character {bad!r}" if seq else "an empty sequence"
                    raise InputError(f"{where(path, line=line)}: {what}; sequences hold only A, C, G, T, N")
                if not _LABEL.fullmatch(label):
                    raise InputError(f"{where(path, line=line)}: label {label!r} is not a non-negative integer")
                seqs.append(seq.upper())
                labels.append(int(label))
        except UnicodeDecodeError as e:
            raise InputError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except csv.Error as e:
            raise InputError(f"{where(path, line=reader.line_num)}: malformed CSV: {e}") from None
    if not seqs:
        raise InputError(f"{path}: no rows after the header")
    return Split(seqs, np.asarray(labels, dtype=np.int64), np.arange(len(seqs), dtype=np.int64))


def gue_root(gue_dir) -> Path:
    """The folder whose children are the tasks: gue_dir itself, or gue_dir/GUE when it holds the GUE folder."""
    root = Path(gue_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such GUE folder (expected <task>/<dataset>/{{train,dev,test}}.csv under it)")
    if not _dataset_names(root) and (root / "GUE").is_dir():
        return root / "GUE"
    return root


def _dataset_names(root: Path) -> list[str]:
    return sorted(f"{t.name}/{d.name}" for t in root.iterdir() if t.is_dir() for d in t.iterdir()
                  if d.is_dir() and any((d / f"{s}.csv").exists() for s in SPLITS))


def discover_datasets(gue_dir) -> list[str]:
    """Every "task/dataset" with a split file under the GUE folder, sorted."""
    root = gue_root(gue_dir)
    names = _dataset_names(root)
    if not names:
        raise InputError(f"{root}: no GUE datasets found (expected {root}/<task>/<dataset>/train.csv)")
    return names


def select_datasets(gue_dir, wanted: str) -> list[str]:
    available = discover_datasets(gue_dir)
    if not wanted.strip():
        return available
    names = [w.strip().strip("/") for w in wanted.split(",") if w.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(f"--datasets: {', '.join(missing)} not found under {gue_dir}; available: {', '.join(available)}")
    return names


def subsample(split: Split, n: int, rng: np.random.Generator) -> Split:
    """n rows chosen at random (kept in file order), or the split itself when n is 0 or >= its size."""
    if not n or n >= len(split):
        return split
    keep = np.sort(rng.choice(len(split), size=n, replace=False))
    return Split([split.sequences[i] for i in keep], split.labels[keep], split.index[keep])


def load_dataset(gue_dir, name: str, cfg: GUEConfig) -> dict[str, Split]:
    folder = gue_root(gue_dir) / name
    splits = {s: read_split(folder / f"{s}.csv") for s in SPLITS}
    # Subsets depend on (subsample_seed, dataset, split), not on the fine-tuning seed: every seed sees
    # the same data, so the spread over seeds is the spread of training alone.
    key = zlib.crc32(name.encode())
    sizes = {"train": cfg.max_train_samples, "dev": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    return {s: subsample(sp, sizes[s], np.random.default_rng([cfg.subsample_seed, key, i]))
            for i, (s, sp) in enumerate(splits.items())}


def token_counts(tokenizer: DNATokenizer, seqs: list[str]) -> np.ndarray:
    """Tokens (without [CLS]/[SEP]) per sequence."""
    out = np.empty(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        n = tokenizer.num_tokens(len(s)) if "N" not in s else None  # exact for N-free sequences
        out[i] = n if n is not None else len(tokenizer.encode(s))
    return out


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [n, max_tokens] int64
    lengths: torch.Tensor  # [n] real tokens incl. [CLS]/[SEP]
    labels: torch.Tensor  # [n] int64


def encode_split(tokenizer: DNATokenizer, split: Split, max_tokens: int) -> Encoded:
    ids, masks = [], []
    for start in range(0, len(split), 8192):
        b = tokenizer.encode_batch(split.sequences[start:start + 8192], max_tokens)
        ids.append(b["input_ids"])
        masks.append(b["attention_mask"])
    mask = np.concatenate(masks)
    return Encoded(torch.from_numpy(np.concatenate(ids)), torch.from_numpy(mask.sum(1)), torch.from_numpy(split.labels))


def plan_tokens(tokenizer: DNATokenizer, splits: dict[str, Split], max_positions: int, requested: int, name: str) -> tuple[int, dict]:
    """Tokens per sequence for this dataset, and how many sequences of each split get truncated.

    The rule: input is [CLS] tokens [SEP]. max_tokens is --max_tokens, else the longest sequence's
    token count + 2, capped at the model's positions. A longer sequence keeps its first
    max_tokens - 2 tokens, i.e. its first bases (the left end).
    """
    counts = {s: token_counts(tokenizer, sp.sequences) for s, sp in splits.items()}
    longest = max(int(c.max()) for c in counts.values()) + 2
    if requested > max_positions:
        raise InputError(f"--max_tokens {requested} exceeds the model's {max_positions} positions")
    max_tokens = requested or min(longest, max_positions)
    truncated = {s: int((c > max_tokens - 2).sum()) for s, c in counts.items()}
    if any(truncated.values()):
        detail = ", ".join(f"{n} of {len(splits[s])} {s}" for s, n in truncated.items() if n)
        log.warning("%s: %s sequences are longer than %d tokens and are truncated to their first %d tokens "
                    "(the left end of the sequence is kept)", name, detail, max_tokens - 2, max_tokens - 2)
    return max_tokens, truncated


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class BertClassifier(nn.Module):
    """megadna's BERT encoder + HF BertForSequenceClassification's head on [CLS].

    pooler: dense + tanh on the [CLS] hidden state (HF's BertPooler), then dropout (the encoder's
    hidden dropout, as HF's classifier_dropout=None) and a linear layer to num_labels logits.
    """

    def __init__(self, bert: Bert, config: ModelConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.bert = bert
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        for layer in (self.pooler, self.classifier):  # HF's init
            nn.init.normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids and mask -> [B, num_labels] logits."""
        cls = self.bert(input_ids, attention_mask)[:, 0]
        return self.classifier(self.dropout(torch.tanh(self.pooler(cls))))


@dataclass
class Backbone:
    """What every (dataset, seed) starts from: a pretrained encoder, or the recipe for a random one."""

    config: ModelConfig
    tokenizer: DNATokenizer
    info: dict
    bert: Bert | None  # None: random init, drawn per seed

    def classifier(self, num_labels: int, seed: int) -> BertClassifier:
        torch.manual_seed(seed)
        bert = copy.deepcopy(self.bert) if self.bert is not None else BertForMLM(self.config).bert
        return BertClassifier(bert, self.config, num_labels)


def load_backbone(cfg: GUEConfig) -> Backbone:
    if cfg.init == "random":
        tokenizer = get_tokenizer(cfg.tokenizer)
        mcfg = model_config(cfg.model, vocab_size=tokenizer.vocab_size)
        info = {"kind": "random", "preset": cfg.model, "model": mcfg.to_dict(), "tokenizer": tokenizer.to_dict()}
        return Backbone(mcfg, tokenizer, info, None)
    from megadna.pretrained import load_pretrained

    model, tokenizer, info = load_pretrained(cfg.model)
    return Backbone(model.config, tokenizer, info, model.bert)


# --------------------------------------------------------------------------------------------------
# Fine-tuning one (dataset, seed)
# --------------------------------------------------------------------------------------------------


def scores(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """MCC, macro F1 and accuracy, x 100 (the paper's scale), from scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {"mcc": 100.0 * float(matthews_corrcoef(labels, preds)),
            "f1": 100.0 * float(f1_score(labels, preds, average="macro", zero_division=0)),
            "accuracy": 100.0 * float(accuracy_score(labels, preds))}


def _autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _batch(data: Encoded, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows idx, trimmed to their longest row (so short datasets pay for no padding), on device."""
    lengths = data.lengths[idx]
    width = int(lengths.max())
    ids = data.input_ids[idx, :width]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), data.labels[idx].to(device, non_blocking=True)


@torch.no_grad()
def predict(model: BertClassifier, data: Encoded, batch_size: int, device: torch.device, precision: str) -> np.ndarray:
    """Class probabilities [n, num_labels] (fp32)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data.labels), batch_size):
        ids, mask, _ = _batch(data, torch.arange(start, min(start + batch_size, len(data.labels))), device)
        with _autocast(device, precision):
            logits = model(ids, mask)
        out.append(F.softmax(logits.float(), dim=-1).cpu())
    model.train(was_training)
    return torch.cat(out).numpy()


def finetune(backbone: Backbone, data: dict[str, Encoded], num_labels: int, recipe: Recipe, cfg: GUEConfig,
             seed: int, device: torch.device, desc: str) -> dict:
    """Fine-tune, keep the best dev-MCC state, score it on test. Returns metrics and test probabilities."""
    from transformers import get_linear_schedule_with_warmup

    model = backbone.classifier(num_labels, seed).to(device).train()
    decay = [p for p in model.parameters() if p.ndim >= 2]  # HF: no decay on biases and LayerNorm
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_train = len(data["train"].labels)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = recipe.max_steps if recipe.max_steps > 0 else recipe.epochs * steps_per_epoch
    if total < 1:
        raise InputError(f"{desc}: nothing to train (epochs {recipe.epochs}, max_steps {recipe.max_steps})")
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=min(recipe.warmup_steps, total), num_training_steps=total)
    micro = cfg.micro_batch_size or cfg.batch_size

    def order(epoch: int) -> torch.Tensor:
        return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n_train))

    best = {"dev_mcc": -math.inf, "step": 0, "state": None}
    history = []
    bar = _progress(cfg, total, desc)
    step, epoch, perm, pos = 0, 0, order(0), 0
    t0 = time.perf_counter()
    while step < total:
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for chunk in idx.split(micro):
            ids, mask, labels = _batch(data["train"], chunk, device)
            with _autocast(device, cfg.precision):
                logits = model(ids, mask)
            # Sum over the micro batch / sequences in the step: the mean over the step, however it is split.
            loss = F.cross_entropy(logits.float(), labels, reduction="sum") / len(idx)
            loss.backward()
            loss_sum += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        end_of_epoch = pos >= n_train
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", best_dev_mcc=f"{best['dev_mcc']:.1f}" if best["state"] else "-")
        if step == total or (recipe.eval_steps > 0 and step % recipe.eval_steps == 0) or (recipe.eval_steps == 0 and end_of_epoch):
            probs = predict(model, data["dev"], cfg.eval_batch_size, device, cfg.precision)
            dev = scores(data["dev"].labels.numpy(), probs.argmax(1))
            history.append({"step": step, "epoch": epoch, "train_loss": loss_sum, **{f"dev_{k}": v for k, v in dev.items()}})
            if dev["mcc"] > best["dev_mcc"]:
                best = {"dev_mcc": dev["mcc"], "step": step, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            log.info("%s step %d/%d: train loss %.4f, dev MCC %.2f (best %.2f at step %d)", desc, step, total, loss_sum, dev["mcc"], best["dev_mcc"], best["step"])
        if end_of_epoch:
            epoch += 1
            perm, pos = order(epoch), 0
    if bar is not None:
        bar.close()
    model.load_state_dict(best["state"])
    probs = predict(model, data["test"], cfg.eval_batch_size, device, cfg.precision)
    test = scores(data["test"].labels.numpy(), probs.argmax(1))
    return {"test": test, "best_dev_mcc": best["dev_mcc"], "best_step": best["step"], "steps": total,
            "epochs_run": round(total / steps_per_epoch, 3), "history": history, "probs": probs,
            "train_seconds": time.perf_counter() - t0}


def _progress(cfg: GUEConfig, total: int, desc: str):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# Outputs and restarts
# --------------------------------------------------------------------------------------------------


def run_name(name: str, seed: int) -> str:
    task, dataset = name.split("/", 1)
    return f"{task}__{dataset}__seed{seed}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_predictions(path: Path, split: Split, probs: np.ndarray) -> None:
    """index (row of the sequence in test.csv, 0 = first data row), label, prediction, prob_<class>..."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "label", "prediction"] + [f"prob_{c}" for c in range(probs.shape[1])])
        for i, label, p in zip(split.index.tolist(), split.labels.tolist(), probs):
            w.writerow([i, label, int(p.argmax())] + [f"{x:.6g}" for x in p.tolist()])
    os.replace(tmp, path)


def read_finished(marker: Path, predictions: Path, run_key: dict) -> dict | None:
    """The record of a finished (dataset, seed), or None if it has not finished. A record made under
    another config is an error, not a silent mix of two experiments in one table."""
    if not (marker.is_file() and predictions.is_file()):
        return None
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None  # a damaged marker: redo the run
    if record.get("run_key") != run_key:
        old = record.get("run_key") or {}
        diff = ", ".join(f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in run_key.items() if old.get(k) != v)
        raise InputError(f"{marker}: this run finished under a different config ({diff}); use another --output_dir, "
                         "or delete the folder's runs/ and predictions/ to start over")
    return record


def _model_key(backbone: Backbone) -> dict:
    info = backbone.info
    path = str(Path(info["path"]).resolve()) if info.get("path") else None
    return {"kind": info["kind"], "preset": info.get("preset"), "path": path, "global_step": info.get("global_step"),
            "model": info["model"], "tokenizer": info["tokenizer"]}


# --------------------------------------------------------------------------------------------------
# The whole run, and the results table
# --------------------------------------------------------------------------------------------------


def run_gue(cfg: GUEConfig | None = None, **fields) -> dict:
    """Fine-tune and score every requested (dataset, seed); write the outputs; return the results.

    Takes a GUEConfig, or its fields as keywords: run_gue(gue_dir=..., model=..., output_dir=...).
    Finished (dataset, seed) pairs in cfg.output_dir are read back, not redone. The results dict has
    "datasets", "families" and "overall" rows (see summarize) and "config"; format_table prints it.
    """
    if cfg is None:
        cfg = GUEConfig(**fields)
    elif fields:
        cfg = dataclasses.replace(cfg, **fields)
    if not cfg.gue_dir:
        raise InputError("gue_dir is required: the folder holding <task>/<dataset>/{train,dev,test}.csv")
    names = select_datasets(cfg.gue_dir, cfg.datasets)
    seeds = cfg.seed_list()
    out = Path(cfg.output_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    backbone = load_backbone(cfg)
    run_key = {**cfg.run_key(), "model": _model_key(backbone)}
    recipes = {n: dataclasses.asdict(cfg.resolved_recipe(n)) for n in names}
    import transformers

    config = {"config": dataclasses.asdict(cfg), "recipes": recipes, "model": _model_key(backbone), "device": str(device),
              "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    _write_atomic(out / "config.json", json.dumps(config, indent=1) + "\n")
    log.info("GUE: %d dataset(s) x %d seed(s), %s model %s on %s", len(names), len(seeds), cfg.init, cfg.model, device)

    records = []
    for name in names:
        todo = []
        for seed in seeds:
            rn = run_name(name, seed)
            done = read_finished(out / "runs" / f"{rn}.json", out / "predictions" / f"{rn}.csv", run_key)
            if done is not None:
                log.info("%s seed %d: finished earlier (test MCC %.2f), skipped", name, seed, done["test"]["mcc"])
                records.append(done)
            else:
                todo.append(seed)
        if not todo:
            continue
        splits = load_dataset(cfg.gue_dir, name, cfg)
        max_tokens, truncated = plan_tokens(backbone.tokenizer, splits, backbone.config.max_position_embeddings, cfg.max_tokens, name)
        data = {s: encode_split(backbone.tokenizer, sp, max_tokens) for s, sp in splits.items()}
        num_labels = max(2, int(max(sp.labels.max() for sp in splits.values())) + 1)
        recipe = cfg.resolved_recipe(name)
        for seed in todo:
            rn = run_name(name, seed)
            result = finetune(backbone, data, num_labels, recipe, cfg, seed, device, desc=f"{name} seed {seed}")
            write_predictions(out / "predictions" / f"{rn}.csv", splits["test"], result.pop("probs"))
            record = {"dataset": name, "seed": seed, **result, "recipe": dataclasses.asdict(recipe), "max_tokens": max_tokens,
                      "truncated": truncated, "num_labels": num_labels, "sizes": {s: len(sp) for s, sp in splits.items()},
                      "run_key": run_key}
            _write_atomic(out / "runs" / f"{rn}.json", json.dumps(record, indent=1) + "\n")  # last: marks it finished
            log.info("%s seed %d: test MCC %.2f, F1 %.2f, accuracy %.2f (best dev MCC %.2f at step %d)", name, seed,
                     result["test"]["mcc"], result["test"]["f1"], result["test"]["accuracy"], result["best_dev_mcc"], result["best_step"])
            records.append(record)

    results = summarize(records, names, seeds, load_baselines())
    results["config"] = config
    write_results(out, results)
    return results


def _device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but no CUDA device is available")
    return device


def load_baselines(path=None) -> dict[str, dict[str, float]]:
    """Published GUE figures, {"tf/0": {"dnabert2": 71.99, ...}}, from megadna/data/gue_baselines.csv."""
    path = Path(path) if path else BASELINES_FILE
    with open(path, newline="") as f:
        rows = [line for line in f if not line.startswith("#")]
    out = {}
    for i, row in enumerate(csv.DictReader(rows)):
        name = row.pop("dataset")
        try:
            out[name] = {k: float(v) for k, v in row.items() if v not in ("", None)}
        except ValueError as e:
            raise InputError(f"{path}: data row {i + 1} ({name}): {e}") from None
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarize(records: list[dict], names: list[str], seeds: list[int], baselines: dict) -> dict:
    """Per dataset: mean/std over seeds. Per family (task) and overall: per seed, the mean over the
    datasets; then mean/std of those over seeds. Baselines: the mean of the same datasets' figures."""
    by = {(r["dataset"], r["seed"]): r for r in records}

    def row(level: str, label: str, group: list[str]) -> dict:
        per_seed = {m: [float(np.mean([by[(n, s)]["test"][m] for n in group])) for s in seeds] for m in METRICS}
        out = {"level": level, "name": label, "datasets": group, "n_seeds": len(seeds)}
        for m in METRICS:
            out[f"{m}_mean"], out[f"{m}_std"] = _mean_std(per_seed[m])
        out["baselines"] = {col: (float(np.mean([baselines[n][col] for n in group]))
                                  if all(col in baselines.get(n, {}) for n in group) else None) for col, _ in BASELINE_COLUMNS}
        return out

    dataset_rows = []
    for n in names:
        r = row("dataset", n, [n])
        runs = [by[(n, s)] for s in seeds]
        r.update(family=n.split("/")[0], sizes=runs[0]["sizes"], max_tokens=runs[0]["max_tokens"],
                 truncated=runs[0]["truncated"],
                 per_seed={str(s): {**by[(n, s)]["test"], "best_dev_mcc": by[(n, s)]["best_dev_mcc"],
                                    "best_step": by[(n, s)]["best_step"], "steps": by[(n, s)]["steps"]} for s in seeds})
        dataset_rows.append(r)
    families = sorted({n.split("/")[0] for n in names}, key=[n.split("/")[0] for n in names].index)
    family_rows = [row("family", f, [n for n in names if n.split("/")[0] == f]) for f in families]
    overall = row("all", "all", names)
    return {"seeds": seeds, "datasets": dataset_rows, "families": family_rows, "overall": overall,
            "baseline_columns": dict(BASELINE_COLUMNS)}


def _cell(mean: float, std: float, n: int) -> str:
    return f"{mean:.2f} ± {std:.2f}" if n > 1 else f"{mean:.2f}"


def format_table(results: dict) -> str:
    """The results as a Markdown table: ours (mean ± std over seeds) beside the published baselines."""
    heads = ["dataset", "MCC", "F1", "accuracy"] + [h for _, h in BASELINE_COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|"]
    # Family rows where a family has several datasets; the overall row where there are several datasets.
    rows = results["datasets"] + [r for r in results["families"] if len(r["datasets"]) > 1]
    if len(results["datasets"]) > 1:
        rows.append(results["overall"])
    for r in rows:
        label = r["name"] if r["level"] == "dataset" else f"**{r['name']} (mean of {len(r['datasets'])})**"
        cells = [label] + [_cell(r[f"{m}_mean"], r[f"{m}_std"], r["n_seeds"]) for m in METRICS]
        cells += [f"{r['baselines'][c]:.2f}" if r["baselines"][c] is not None else "–" for c, _ in BASELINE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(str(s) for s in results["seeds"])
    spread = f"mean ± sample std over seeds {seeds}" if len(results["seeds"]) > 1 else f"seed {seeds}"
    lines.append("")
    lines.append(f"Test-set scores x 100, {spread}; the state with the best dev MCC is scored. "
                 "Baselines: DNABERT-2 paper, Table 4 (MCC; virus/covid is F1). Family rows average their datasets.")
    return "\n".join(lines) + "\n"


def write_results(out: Path, results: dict) -> None:
    _write_atomic(out / "results.json", json.dumps(results, indent=1) + "\n")
    _write_atomic(out / "results.md", format_table(results))
    cols = ["level", "name", "n_seeds"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + [c for c, _ in BASELINE_COLUMNS]
    tmp = out / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results["datasets"] + results["families"] + [results["overall"]]:
            w.writerow([r["level"], r["name"], r["n_seeds"]] + [f"{r[f'{m}_{s}']:.4f}" for m in METRICS for s in ("mean", "std")]
                       + ["" if r["baselines"][c] is None else f"{r['baselines'][c]:.2f}" for c, _ in BASELINE_COLUMNS])
    os.replace(tmp, out / "results.csv")
