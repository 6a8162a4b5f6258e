"""Fine-tuning one (dataset, seed): the backbone it starts from, the training loop, scoring.

- start: `Backbone` = a pretrained encoder (a copy per seed) or the recipe for a random one (drawn
  per seed), under a `BertClassifier` head (megadna.model.heads).
- train: AdamW (no decay on biases and LayerNorm), linear warmup then linear decay, gradient clipping;
  an optimizer step of `batch_size` sequences may be split into micro batches.
- selection: dev MCC is measured every `eval_steps` (and at the last step); the best state is kept
  in memory and that one is scored on test. (DNABERT-2's Trainer picked the lowest dev loss.)
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval import problems
from megadna.eval.config import GUEConfig, Recipe
from megadna.eval.data import Encoded
from megadna.model import Bert, BertForMLM, ModelConfig, model_config
from megadna.model.heads import BertClassifier
from megadna.tokenizers import DNATokenizer, get_tokenizer

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """What every (dataset, seed) starts from: a pretrained encoder, or the recipe for a random one."""

    config: ModelConfig  # or, for a foreign Hugging Face encoder, its EncoderShape (megadna.eval.hf_encoder)
    tokenizer: DNATokenizer
    info: dict
    bert: Bert | None  # None: random init, drawn per seed
    random_like: Callable | None = None  # a foreign encoder's random control: same architecture, new weights

    def classifier(self, num_labels: int, seed: int, pooling: str = "cls") -> BertClassifier:
        torch.manual_seed(seed)
        if self.bert is not None:
            bert = copy.deepcopy(self.bert)
        else:
            bert = self.random_like() if self.random_like is not None else BertForMLM(self.config).bert
        return BertClassifier(bert, self.config, num_labels, pooling)


def load_backbone(cfg: GUEConfig) -> Backbone:
    """cfg.model: a preset or JSON model config with cfg.tokenizer (--init random), a megadna
    checkpoint, run or export, or any local Hugging Face encoder directory (megadna.eval.hf_encoder)."""
    from megadna.eval.hf_encoder import is_hf_model_dir, load_hf_encoder, random_like
    from megadna.model import is_shape_spec
    from megadna.model.pretrained import load_pretrained

    if cfg.init == "random" and is_shape_spec(cfg.model):
        tokenizer = get_tokenizer(cfg.tokenizer)
        mcfg = model_config(cfg.model, vocab_size=tokenizer.vocab_size)
        info = {"kind": "random", "preset": cfg.model, "model": mcfg.to_dict(), "tokenizer": tokenizer.to_dict()}
        return Backbone(mcfg, tokenizer, info, None)
    if is_hf_model_dir(cfg.model):
        encoder, tokenizer, shape, info = load_hf_encoder(cfg.model)
        if cfg.init == "random":
            info = {**info, "kind": "random", "preset": None, "shaped_like": info["path"]}
            return Backbone(shape, tokenizer, info, None, random_like=lambda: random_like(encoder))
        return Backbone(shape, tokenizer, info, encoder)
    model, tokenizer, info = load_pretrained(cfg.model)
    if cfg.init == "random":
        # The control of an arm: the model's shape and tokenizer, none of its weights.
        info = {"kind": "random", "preset": None, "shaped_like": info["path"], "model": info["model"], "tokenizer": info["tokenizer"]}
        return Backbone(model.config, tokenizer, info, None)
    return Backbone(model.config, tokenizer, info, model.bert)


def resolve_device(spec: str) -> torch.device:
    """--device: auto (CUDA when available), cpu, cuda or cuda:N."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec!r} is not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda, but no CUDA device is available")
    return device


def autocast(device: torch.device, precision: str):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def batch_rows(data: Encoded, idx: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows idx, trimmed to their longest row (so short datasets pay for no padding), on device."""
    lengths = data.lengths[idx]
    width = int(lengths.max())
    ids = data.input_ids[idx, :width]
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True), data.labels[idx].to(device, non_blocking=True)


@torch.no_grad()
def logits(model: BertClassifier, data: Encoded, batch_size: int, device: torch.device, precision: str) -> torch.Tensor:
    """Head outputs [n, num_labels] (fp32, on the CPU), in eval mode."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data.labels), batch_size):
        ids, mask, _ = batch_rows(data, torch.arange(start, min(start + batch_size, len(data.labels))), device)
        with autocast(device, precision):
            out.append(model(ids, mask).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def predict(model: BertClassifier, data: Encoded, batch_size: int, device: torch.device, precision: str, rc: Encoded | None = None,
            problem: str = "classification") -> np.ndarray:
    """The problem's outputs (class probabilities [n, C], values [n, 1] or label probabilities [n, L];
    fp32). With `rc` (the same rows reverse-complemented), the logits of the two passes are averaged
    first (--rc_average)."""
    z = logits(model, data, batch_size, device, precision)
    if rc is not None:
        z = (z + logits(model, rc, batch_size, device, precision)) / 2
    return problems.outputs(problem, z)


def score(model: BertClassifier, data: Encoded, cfg: GUEConfig, device: torch.device, rc: Encoded | None = None,
          problem: str = "classification") -> tuple[dict[str, float], np.ndarray]:
    """Scores and outputs of `model` on one split (megadna.eval.problems)."""
    out = predict(model, data, cfg.eval_batch_size, device, cfg.precision, rc=rc, problem=problem)
    return problems.scores(problem, data.labels.numpy(), out), out


def _optimizer(model: BertClassifier, cfg: GUEConfig, lr: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]  # HF: no decay on biases and LayerNorm
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _train_step(model: BertClassifier, opt, sched, data: Encoded, idx: torch.Tensor, cfg: GUEConfig, device: torch.device,
                problem: str = "classification") -> float:
    """One optimizer step on rows idx, in micro batches; returns the mean loss over those rows."""
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for chunk in idx.split(cfg.micro_batch_size or cfg.batch_size):
        ids, mask, labels = batch_rows(data, chunk, device)
        with autocast(device, cfg.precision):
            logits = model(ids, mask)
        # Sum over the micro batch / sequences in the step: the mean over the step, however it is split.
        loss = problems.loss_sum(problem, logits.float(), labels, model.output_scale) / len(idx)
        loss.backward()
        loss_sum += float(loss.detach())
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    opt.step()
    sched.step()
    return loss_sum


def head_features(bert, data: dict[str, Encoded], pooling: str, cfg: GUEConfig, device: torch.device) -> dict[str, np.ndarray]:
    """The frozen encoder's pooled features that --head_init standardize (train) and probe (train, dev)
    read: the same for every lr of a sweep, so a caller computes them once per encoder."""
    from megadna.eval.probe import features

    splits = ("train", "dev") if cfg.head_init == "probe" else ("train",)
    return {s: features(bert, data[s], -1, pooling, device, cfg.eval_batch_size, cfg.precision) for s in splits}


def _data_head(model: BertClassifier, data: dict[str, Encoded], num_labels: int, cfg: GUEConfig, seed: int,
               device: torch.device, feats: dict[str, np.ndarray] | None = None) -> None:
    """--head_init standardize: the head reads the pooled vector standardised with the train rows'
    statistics (frozen encoder, eval mode). probe: also start the head as the linear probe's solution
    on those features (C chosen on dev, as --mode probe does). `feats`: head_features of this very
    encoder, when the caller has them."""
    from megadna.eval.probe import fit_linear

    splits = ("train", "dev") if cfg.head_init == "probe" else ("train",)
    feats = feats or head_features(model.bert, data, model.pooling, cfg, device)
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=device)  # noqa: E731
    model.set_feature_stats(as_tensor(feats["train"].mean(0)), as_tensor(feats["train"].std(0)))
    if cfg.head_init != "probe":
        return
    fit = fit_linear(feats, {s: data[s].labels.numpy() for s in splits}, cfg.probe_Cs(), seed, num_labels)
    lr_model = fit["model"]
    coef, intercept = lr_model.coef_, lr_model.intercept_
    if coef.shape[0] == 1:  # binary: sklearn's one logit for classes_[1] = two softmax logits [-z/2, z/2]
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, -30.0)  # a class absent from train starts improbable
    weight[lr_model.classes_], bias[lr_model.classes_] = coef, intercept
    model.set_linear_head(as_tensor(weight), as_tensor(bias))
    log.info("head from the probe: C %g, dev MCC %.2f", fit["C"], fit["best_dev"])


def _freeze_encoder(model: BertClassifier, frozen: bool) -> None:
    """Head-only steps: the encoder gets no gradients, so AdamW leaves it (and its moments) untouched."""
    for p in model.bert.parameters():
        p.requires_grad_(not frozen)


def _evaluates(recipe: Recipe, step: int, total: int, end_of_epoch: bool) -> bool:
    """Whether dev is scored after this step: every eval_steps (0: every epoch end), and at the last."""
    return step == total or (recipe.eval_steps > 0 and step % recipe.eval_steps == 0) or (recipe.eval_steps == 0 and end_of_epoch)


def _order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The training rows' order in this epoch (a permutation of n, fixed by seed and epoch)."""
    return torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))


def finetune(backbone: Backbone, data: dict[str, Encoded], num_labels: int, recipe: Recipe, cfg: GUEConfig,
             seed: int, device: torch.device, desc: str, lr: float | None = None, rc_data: dict[str, Encoded] | None = None,
             problem: str = "classification", feats: dict[str, np.ndarray] | None = None) -> dict:
    """Fine-tune on data["train"] at `lr` (default: the first of cfg's), scoring data["dev"] along the way;
    returns the model holding its best dev state (under "model"; best by the problem's primary metric,
    "metric", e.g. MCC) and the run's figures. Test is not touched here: the caller scores the state
    it selects, once. `feats`: head_features of the encoder this seed starts from (else computed here)."""
    lr = cfg.lr_list()[0] if lr is None else lr
    from transformers import get_linear_schedule_with_warmup

    metric = problems.PRIMARY[problem]
    model = backbone.classifier(num_labels, seed, cfg.head_pooling).to(device).train()
    if problem == "regression":  # the head answers in the labels' units; the loss is in their standard deviations
        y = data["train"].labels.double()
        model.set_output_stats(y.mean().float().reshape(1), y.std().clamp(min=1e-12).float().reshape(1))
    if cfg.head_init != "random":
        if cfg.head_init == "probe" and problem != "classification":
            raise InputError(f"{desc}: --head_init probe fits a logistic regression, for classification only; use standardize")
        _data_head(model, data, num_labels, cfg, seed, device, feats)
    opt = _optimizer(model, cfg, lr)
    n_train = len(data["train"].labels)
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    total = recipe.max_steps if recipe.max_steps > 0 else recipe.epochs * steps_per_epoch
    if total < 1:
        raise InputError(f"{desc}: nothing to train (epochs {recipe.epochs}, max_steps {recipe.max_steps})")
    sched = get_linear_schedule_with_warmup(opt, num_warmup_steps=min(recipe.warmup_steps, total), num_training_steps=total)

    best = {"dev": -math.inf, "step": 0, "state": None}
    history = []
    bar = _progress(cfg, total, desc)
    step, epoch, perm, pos = 0, 0, _order(seed, 0, n_train), 0
    t0 = time.perf_counter()

    def evaluate(train_loss: float | None) -> None:
        nonlocal best
        dev, _ = score(model, data["dev"], cfg, device, rc=rc_data and rc_data["dev"], problem=problem)
        history.append({"step": step, "epoch": epoch, "train_loss": train_loss, **{f"dev_{k}": v for k, v in dev.items()}})
        if best["state"] is None or dev[metric] > best["dev"]:  # the first state is kept even when its score is NaN
            best = {"dev": dev[metric], "step": step, "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        log.info("%s step %d/%d: train loss %s, dev %s %.2f (best %.2f at step %d)", desc, step, total,
                 "-" if train_loss is None else f"{train_loss:.4f}", metric, dev[metric], best["dev"], best["step"])

    if cfg.head_init == "probe":  # the probe's own state is a candidate too: LP-FT never ends below it on dev
        evaluate(None)
    _freeze_encoder(model, cfg.freeze_encoder_steps > 0)
    while step < total:
        if step == cfg.freeze_encoder_steps and step > 0:
            _freeze_encoder(model, False)
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        loss_sum = _train_step(model, opt, sched, data["train"], idx, cfg, device, problem)
        step += 1
        end_of_epoch = pos >= n_train
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}", best_dev=f"{best['dev']:.1f}" if best["state"] else "-")
        if _evaluates(recipe, step, total, end_of_epoch):
            evaluate(loss_sum)
        if end_of_epoch:
            epoch += 1
            perm, pos = _order(seed, epoch, n_train), 0
    if bar is not None:
        bar.close()
    model.load_state_dict(best["state"])
    return {"model": model, "lr": lr, "metric": metric, "best_dev": best["dev"], "best_step": best["step"], "steps": total,
            "epochs_run": round(total / steps_per_epoch, 3), "history": history, "train_seconds": time.perf_counter() - t0}


def _progress(cfg: GUEConfig, total: int, desc: str):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True, file=sys.stderr)
