"""GUE (Genome Understanding Evaluation): fine-tune a sequence classifier per dataset and seed, report
MCC / macro F1 / accuracy beside the published baselines. See docs/GUE.md.

    results = run_gue(GUEConfig(gue_dir="data/GUE", model="runs/hg38-kmer6", output_dir="runs/gue"))
    print(format_table(results))

This module runs datasets x seeds and owns the output folder; the pieces live beside it:
- megadna.eval.config: `GUEConfig` and DNABERT-2's per-family recipes (every knob can be overridden).
- megadna.eval.data: the `GUE/<task>/<dataset>/{train,dev,test}.csv` files, validated as read.
- megadna.eval.finetune: one (dataset, seed) fine-tuned from a `Backbone` under megadna.model.heads'
  `BertClassifier`, the best dev-MCC state scored on test.
- megadna.eval.report: the summary over seeds and the tables beside the baselines.
Restarts: each finished (dataset, seed) leaves predictions/<task>__<dataset>__seed<k>.csv and then
runs/<same>.json (written last, so it marks completion); a re-run skips those and re-reports them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval.config import GUEConfig
from megadna.eval.data import Split, encode_split, load_dataset, plan_tokens, select_datasets
from megadna.eval.finetune import Backbone, finetune, load_backbone, resolve_device
from megadna.eval.report import format_table, load_baselines, summarize, write_results
from megadna.jsonfile import read_json_or_none, write_json, write_text

# The public entry points (docs/GUE.md and megadna.experiments.ablation import them from here).
__all__ = ["GUEConfig", "format_table", "read_finished", "run_gue", "run_name", "select_datasets", "write_predictions"]

log = logging.getLogger(__name__)


def run_name(name: str, seed: int) -> str:
    """The stem of a (dataset, seed)'s files in predictions/ and runs/: ("tf/0", 42) -> tf__0__seed42."""
    task, dataset = name.split("/", 1)
    return f"{task}__{dataset}__seed{seed}"


def write_predictions(path: Path, split: Split, probs: np.ndarray) -> None:
    """index (row of the sequence in test.csv, 0 = first data row), label, prediction, prob_<class>..."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["index", "label", "prediction"] + [f"prob_{c}" for c in range(probs.shape[1])])
    for i, label, p in zip(split.index.tolist(), split.labels.tolist(), probs):
        w.writerow([i, label, int(p.argmax())] + [f"{x:.6g}" for x in p.tolist()])
    write_text(path, buf.getvalue())


def read_finished(marker: Path, predictions: Path, run_key: dict) -> dict | None:
    """The record of a finished (dataset, seed), or None if it has not finished. A record made under
    another config is an error, not a silent mix of two experiments in one table."""
    if not (marker.is_file() and predictions.is_file()):
        return None
    record = read_json_or_none(marker)
    if not isinstance(record, dict):
        return None  # a damaged marker: redo the run
    if record.get("run_key") != run_key:
        old = record.get("run_key") or {}
        diff = ", ".join(f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in run_key.items() if old.get(k) != v)
        raise InputError(f"{marker}: this run finished under a different config ({diff}); use another --output_dir, "
                         "or delete the folder's runs/ and predictions/ to start over")
    return record


def _model_key(backbone: Backbone) -> dict:
    """The model's identity in a run key: kind, preset or resolved path, step, shape and tokenizer."""
    info = backbone.info
    path = str(Path(info["path"]).resolve()) if info.get("path") else None
    return {"kind": info["kind"], "preset": info.get("preset"), "path": path, "global_step": info.get("global_step"),
            "model": info["model"], "tokenizer": info["tokenizer"]}


def run_gue(cfg: GUEConfig | None = None, **fields) -> dict:
    """Fine-tune and score every requested (dataset, seed); write the outputs; return the results.

    Takes a GUEConfig, or its fields as keywords: run_gue(gue_dir=..., model=..., output_dir=...).
    Finished (dataset, seed) pairs in cfg.output_dir are read back, not redone. The results dict has
    "datasets", "families" and "overall" rows (see megadna.eval.report.summarize) and "config";
    format_table prints it.
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
    device = resolve_device(cfg.device)
    backbone = load_backbone(cfg)
    run_key = {**cfg.run_key(), "model": _model_key(backbone)}
    config = _run_config(cfg, names, backbone, device)
    write_json(out / "config.json", config)
    log.info("GUE: %d dataset(s) x %d seed(s), %s model %s on %s", len(names), len(seeds), cfg.init, cfg.model, device)

    records = []
    for name in names:
        records += _run_dataset(name, seeds, cfg, backbone, device, out, run_key)
    results = summarize(records, names, seeds, load_baselines())
    results["config"] = config
    write_results(out, results)
    return results


def _run_config(cfg: GUEConfig, names: list[str], backbone: Backbone, device: torch.device) -> dict:
    """config.json: the settings, each dataset's resolved recipe, the model and the library versions."""
    import transformers

    recipes = {n: dataclasses.asdict(cfg.resolved_recipe(n)) for n in names}
    return {"config": dataclasses.asdict(cfg), "recipes": recipes, "model": _model_key(backbone), "device": str(device),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}


def _run_dataset(name: str, seeds: list[int], cfg: GUEConfig, backbone: Backbone, device: torch.device,
                 out: Path, run_key: dict) -> list[dict]:
    """The records of every seed on one dataset: read back where finished, else fine-tuned and written."""
    records, todo = [], []
    for seed in seeds:
        rn = run_name(name, seed)
        done = read_finished(out / "runs" / f"{rn}.json", out / "predictions" / f"{rn}.csv", run_key)
        if done is not None:
            log.info("%s seed %d: finished earlier (test MCC %.2f), skipped", name, seed, done["test"]["mcc"])
            records.append(done)
        else:
            todo.append(seed)
    if not todo:
        return records
    splits = load_dataset(cfg.gue_dir, name, cfg)
    max_tokens, truncated = plan_tokens(backbone.tokenizer, splits, backbone.config.max_position_embeddings, cfg.max_tokens, name)
    data = {s: encode_split(backbone.tokenizer, sp, max_tokens) for s, sp in splits.items()}
    num_labels = max(2, int(max(sp.labels.max() for sp in splits.values())) + 1)
    recipe = cfg.resolved_recipe(name)
    for seed in todo:
        rn = run_name(name, seed)
        # `finetune` is looked up here at call time, so tests can replace megadna.eval.gue.finetune.
        result = finetune(backbone, data, num_labels, recipe, cfg, seed, device, desc=f"{name} seed {seed}")
        write_predictions(out / "predictions" / f"{rn}.csv", splits["test"], result.pop("probs"))
        record = {"dataset": name, "seed": seed, **result, "recipe": dataclasses.asdict(recipe), "max_tokens": max_tokens,
                  "truncated": truncated, "num_labels": num_labels, "sizes": {s: len(sp) for s, sp in splits.items()},
                  "run_key": run_key}
        write_json(out / "runs" / f"{rn}.json", record)  # last: marks it finished
        log.info("%s seed %d: test MCC %.2f, F1 %.2f, accuracy %.2f (best dev MCC %.2f at step %d)", name, seed,
                 result["test"]["mcc"], result["test"]["f1"], result["test"]["accuracy"], result["best_dev_mcc"], result["best_step"])
        records.append(record)
    return records
