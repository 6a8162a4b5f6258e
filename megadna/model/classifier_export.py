"""A fine-tuned `BertClassifier` <-> a Hugging Face `BertForSequenceClassification` directory.

    save_classifier(model, tokenizer, "runs/gue/models/tf__0__seed42", meta={...})
    model, tokenizer, meta = load_classifier("runs/gue/models/tf__0__seed42")     # megadna predict

The directory: config.json (BertForSequenceClassification, num_labels, problem_type),
model.safetensors, the tokenizer files (megadna's and transformers'), megadna_classifier.json (the
pooling, the dataset, the scores and the recipe) and a README.md model card. Everything is written
to a hidden sibling, verified and renamed into place, as exports are (megadna.model.export).

The head is stored in HF's shape. A head that standardises its pooled vector (--head_init
standardize | probe) is folded into the pooler's weights first: W((x - m) / s) + b = (W / s) x +
(b - W (m / s)); a regression head's output scale and shift into the classifier's. With [CLS] pooling the directory is then an ordinary BertForSequenceClassification:
`AutoModelForSequenceClassification.from_pretrained(dir)` gives the same logits (checked at save).
With mean pooling (--head_pooling mean) it is not: transformers' class always pools [CLS], so only
megadna (`load_classifier`, `megadna predict`) reproduces the model; the card and the JSON say so.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.jsonfile import read_json, staged_dir, write_json, write_text
from megadna.model.bert import Bert
from megadna.model.export import ExportVerificationError, random_sequences
from megadna.model.heads import BertClassifier
from megadna.model.shapes import config_from_hf
from megadna.tokenizers import DNATokenizer, load_tokenizer

CLASSIFIER_META = "megadna_classifier.json"
CLASSIFIER_FORMAT = "megadna-classifier/1"
PROBLEMS = {"classification": "single_label_classification", "regression": "regression", "multilabel": "multi_label_classification"}


def to_hf_state(model: BertClassifier) -> dict[str, torch.Tensor]:
    """BertForSequenceClassification's state dict (fp32) for `model`, the feature standardisation folded in."""
    bert = {f"bert.{k}": v.detach().float().cpu() for k, v in model.bert.state_dict().items()
            if not k.startswith("embeddings.kmer_basis")}
    bert["bert.embeddings.word_embeddings.weight"] = model.bert.embeddings.word_weight(torch.float32).detach().cpu()
    w, b = model.pooler.weight.detach().float().cpu(), model.pooler.bias.detach().float().cpu()
    mean, std = model.feature_mean.float().cpu(), model.feature_std.float().cpu()
    bert["bert.pooler.dense.weight"] = w / std
    bert["bert.pooler.dense.bias"] = b - (w / std) @ mean
    scale, shift = model.output_scale.float().cpu(), model.output_shift.float().cpu()
    bert["classifier.weight"] = model.classifier.weight.detach().float().cpu() * scale[:, None]
    bert["classifier.bias"] = model.classifier.bias.detach().float().cpu() * scale + shift
    return {k: v.contiguous() for k, v in bert.items()}


def hf_config(model: BertClassifier, problem: str, labels: list[str] | None):
    cfg = model.config.to_hf_config()
    cfg.architectures = ["BertForSequenceClassification"]
    cfg.num_labels = model.classifier.out_features
    cfg.problem_type = PROBLEMS[problem]
    names = labels or [str(i) for i in range(cfg.num_labels)]
    cfg.id2label = dict(enumerate(names))
    cfg.label2id = {n: i for i, n in enumerate(names)}
    return cfg


def save_classifier(model: BertClassifier, tokenizer: DNATokenizer, out_dir, meta: dict, problem: str = "classification",
                    labels: list[str] | None = None, atol: float = 1e-4) -> dict:
    """Write, verify (megadna reload always; transformers too with [CLS] pooling), rename into place."""
    from transformers import BertForSequenceClassification

    if problem not in PROBLEMS:
        raise InputError(f"problem must be one of {', '.join(PROBLEMS)}, got {problem!r}")
    model = copy.deepcopy(model).float().cpu().eval()  # the caller's model stays where and what it was
    meta = {"format": CLASSIFIER_FORMAT, "pooling": model.pooling, "problem": problem,
            "plain_transformers": model.pooling == "cls", **meta}
    with staged_dir(out_dir) as tmp:
        hf = BertForSequenceClassification(hf_config(model, problem, labels))
        hf.load_state_dict(to_hf_state(model), strict=True)
        hf.save_pretrained(str(tmp))
        tokenizer.save(tmp)
        write_json(tmp / CLASSIFIER_META, meta)
        meta["verified_max_abs_logit_diff"] = _verify(tmp, model, tokenizer, atol)
        write_json(tmp / CLASSIFIER_META, meta)
        write_text(tmp / "README.md", _card(model, tokenizer, meta))
    return meta


def load_classifier(path, device="cpu") -> tuple[BertClassifier, DNATokenizer, dict]:
    """(classifier in eval mode, its tokenizer, its megadna_classifier.json) from a directory save_classifier wrote."""
    from megadna.model.pretrained import _read_safetensors

    d = Path(path)
    if not (d / CLASSIFIER_META).is_file():
        raise InputError(f"{d}: no {CLASSIFIER_META}; not a classifier megadna saved (megadna gue --save_models)")
    meta = read_json(d / CLASSIFIER_META, "classifier metadata")
    hf = read_json(d / "config.json", "model config")
    cfg = config_from_hf(hf, d / "config.json")
    num_labels = len(hf.get("id2label") or {}) or int(hf.get("num_labels", 2))
    model = BertClassifier(Bert(cfg), cfg, num_labels, meta.get("pooling", "cls"))
    state = _read_safetensors(d / "model.safetensors")
    # HF's keys are ours but for the pooler's ("bert.pooler.dense.*"); the standardisation was folded in.
    mapped = {k.replace("bert.pooler.dense.", "pooler."): v for k, v in state.items()}
    mapped |= {"feature_mean": torch.zeros(cfg.hidden_size), "feature_std": torch.ones(cfg.hidden_size),
               "output_scale": torch.ones(num_labels), "output_shift": torch.zeros(num_labels)}
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise InputError(f"{d / 'model.safetensors'}: does not fit the classifier of config.json: {str(e).splitlines()[0]}") from None
    tokenizer = load_tokenizer(d)
    return model.to(device).eval(), tokenizer, meta


@torch.no_grad()
def _verify(directory: Path, model: BertClassifier, tokenizer: DNATokenizer, atol: float, n_seqs: int = 8) -> float:
    """max |logit difference| of the reloaded directory against `model` on a random padded batch."""
    k = tokenizer.k or 1
    max_pos = model.config.max_position_embeddings
    seqs = random_sequences(n_seqs, np.random.default_rng(0), min_bp=k + 4, max_bp=max(k + 4, min(120, max_pos - 2)))
    batch = tokenizer.encode_batch(seqs, max_tokens=min(max_pos, 122))
    ids, mask = torch.from_numpy(batch["input_ids"]), torch.from_numpy(batch["attention_mask"])
    expected = model(ids, mask)
    reloaded, _, _ = load_classifier(directory)
    diffs = [float((reloaded(ids, mask) - expected).abs().max())]
    if model.pooling == "cls":
        from transformers import AutoModelForSequenceClassification

        hf = AutoModelForSequenceClassification.from_pretrained(str(directory)).float().eval()
        diffs.append(float((hf(input_ids=ids, attention_mask=mask).logits - expected).abs().max()))
    diff = max(diffs)
    if not diff <= atol:
        raise ExportVerificationError(f"{directory}: the saved classifier's logits differ from the model's by up to {diff:.3g}")
    return diff


def _card(model: BertClassifier, tokenizer: DNATokenizer, meta: dict) -> str:
    c = model.config
    test = meta.get("test") or {}
    scores = ", ".join(f"{k} {v:.2f}" for k, v in test.items() if isinstance(v, float)) or "n/a"
    if model.pooling == "cls":
        loading = ("An ordinary `BertForSequenceClassification`: `AutoModelForSequenceClassification.from_pretrained(dir)` "
                   "and `AutoTokenizer.from_pretrained(dir)` load it without custom code (logits checked at save).")
    else:
        loading = ("**Mean-pooled head**: transformers' `BertForSequenceClassification` pools [CLS], so loading this "
                   "directory with plain transformers gives *other* predictions. Use `megadna predict --model DIR` or "
                   "`megadna.model.classifier_export.load_classifier(DIR)`.")
    return f"""# megadna fine-tuned classifier: {meta.get('dataset', '?')} (seed {meta.get('seed', '?')})

Fine-tuned from `{(meta.get('base_model') or {}).get('path') or (meta.get('base_model') or {}).get('preset') or '?'}`
by `megadna gue`. Task: {meta.get('problem', 'classification')}, {model.classifier.out_features} output(s).

| | |
| --- | --- |
| test scores (x 100) | {scores} |
| dev {meta.get('metric', 'mcc')} of the kept state | {meta.get('best_dev', float('nan')):.2f} (step {meta.get('best_step', '?')}) |
| recipe | {meta.get('recipe', {})}, chosen {meta.get('selected', {})} |
| head | pooling {model.pooling}, init {meta.get('head_init', 'random')} |
| shape | {c.num_layers} layers, hidden {c.hidden_size}, {c.max_position_embeddings} positions; tokenizer {tokenizer.name} |

{loading}

Predict: `megadna predict --model DIR --input sequences.fa --out predictions.csv`.
"""
