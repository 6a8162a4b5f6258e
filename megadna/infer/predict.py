"""Predictions of a fine-tuned model (`megadna predict`): a classifier or regressor saved by
`megadna gue` (output_dir/models/...), run on a FASTA or CSV.

    megadna predict --model runs/gue/models/tf__0__seed42 --input seqs.fa --out preds.csv

Output CSV, one row per input sequence in input order: row, id, length_bp, n_windows, then by the
model's problem: classification `prediction` (the class name) and `prob_<class>` per class;
regression `prediction`; multilabel `pred_<label>` (0/1, at p >= 0.5) and `prob_<label>` per label.

Sequences go through the model's own tokenizer exactly as in `megadna gue` (upper case, IUPAC codes
as N). A sequence longer than the model is tiled into windows by the same code as `megadna embed`
(megadna.infer.embed: tile, per_window, merge_windows); the head's outputs (logits, or values for
regression) are averaged over the windows, weighted by each window's tokens, before softmax/sigmoid.
The harness itself truncated such sequences at fine-tuning (docs/GUE.md): a model fine-tuned on short
sequences has not seen tiles of long ones, so treat such predictions with care (n_windows says which
rows).
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval import problems
from megadna.eval.finetune import autocast, resolve_device
from megadna.infer.embed import DEFAULT_OVERLAP, check_overlap, merge_windows, per_window, tile
from megadna.infer.inputs import Outputs, RunOptions, read_sequences
from megadna.model.heads import BertClassifier
from megadna.tokenizers import DNATokenizer

log = logging.getLogger(__name__)


@dataclass
class PredictConfig(RunOptions):
    input: str = field(default="", metadata={"help": "FASTA (plain or gzipped), or a CSV (name ends in .csv) with a 'sequence' column and optionally 'id' or 'name'"})
    model: str = field(default="", metadata={"help": "a fine-tuned model directory saved by megadna gue (output_dir/models/<task>__<dataset>[__n<size>]__seed<k|best>)"})
    out: str = field(default="", metadata={"help": "output CSV: row, id, length_bp, n_windows, then prediction(s) and probabilities"})
    window_overlap_bp: int = field(default=DEFAULT_OVERLAP, metadata={"help": "bp shared by consecutive windows of a sequence longer than the model; -1: a quarter of the window"})

    def __post_init__(self):
        self.check_run_options()
        check_overlap(self.window_overlap_bp)


@torch.no_grad()
def head_outputs(model: BertClassifier, tokenizer: DNATokenizer, seqs: list[str], places: list[str], batch_size: int, overlap_bp: int,
                 device, precision: str, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(head outputs [n, num_labels] fp32 averaged over each sequence's windows, windows per sequence)."""
    rows, n_windows = tile(tokenizer, seqs, model.config.max_position_embeddings - 2, overlap_bp, places)

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return model(ids, mask)

    z = per_window(rows, model.classifier.out_features, forward, batch_size=batch_size, device=device, desc="predict",
                   progress=progress)
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    return merge_windows(z, n_windows, lengths), n_windows


def run_predict(cfg: PredictConfig) -> dict:
    """Predict cfg.input with cfg.model; write cfg.out (renamed into place at the end). Returns a summary."""
    from megadna.jsonfile import read_json
    from megadna.model.classifier_export import PROBLEMS, load_classifier

    for name in ("input", "model", "out"):
        if not getattr(cfg, name):
            raise InputError(f"--{name} is required")
    outputs = Outputs([cfg.out], cfg.overwrite, inputs=[cfg.input])  # refuse before any work
    records = read_sequences(cfg.input)
    device = resolve_device(cfg.device)
    model, tokenizer, meta = load_classifier(cfg.model, device)
    hf = read_json(f"{cfg.model}/config.json", "model config")
    problem = meta.get("problem") or {hf_type: ours for ours, hf_type in PROBLEMS.items()}.get(hf.get("problem_type"), "classification")
    names = [hf.get("id2label", {}).get(str(i), str(i)) for i in range(model.classifier.out_features)]
    start = time.perf_counter()
    z, n_windows = head_outputs(model, tokenizer, [r.seq for r in records], [r.place for r in records], cfg.batch_size,
                                cfg.window_overlap_bp, device, cfg.precision, cfg.progress)
    out = problems.outputs(problem, torch.from_numpy(z))
    pred = problems.predictions(problem, out)
    seconds = time.perf_counter() - start
    with outputs:
        with open(outputs.tmp(cfg.out), "w", newline="") as f:
            w = csv.writer(f)
            if problem == "classification":
                w.writerow(["row", "id", "length_bp", "n_windows", "prediction"] + [f"prob_{n}" for n in names])
                body = ([names[p]] + [f"{x:.6g}" for x in o] for p, o in zip(pred.tolist(), out.tolist()))
            elif problem == "regression":
                w.writerow(["row", "id", "length_bp", "n_windows", "prediction"])
                body = ([f"{p:.9g}"] for p in pred.tolist())
            else:
                w.writerow(["row", "id", "length_bp", "n_windows"] + [f"pred_{n}" for n in names] + [f"prob_{n}" for n in names])
                body = (list(p) + [f"{x:.6g}" for x in o] for p, o in zip(pred.tolist(), out.tolist()))
            for i, (r, n, cells) in enumerate(zip(records, n_windows, body)):
                w.writerow([i, r.id, len(r.seq), int(n), *cells])
        outputs.commit()
    log.info("%d sequences predicted in %.1f s (%d tiled)", len(records), seconds, int((n_windows > 1).sum()))
    return {"out": cfg.out, "sequences": len(records), "problem": problem, "tiled": int((n_windows > 1).sum()),
            "seconds": round(seconds, 3)}
