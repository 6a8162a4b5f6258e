"""GUE (Genome Understanding Evaluation): judge an encoder per dataset, train size and seed, and report
MCC / macro F1 / accuracy beside the published baselines. See docs/GUE.md.

    results = run_gue(GUEConfig(gue_dir="data/GUE", model="runs/hg38-kmer6", output_dir="runs/gue"))
    print(format_table(results))

One unit of work is (dataset, train size, seed). In `--mode finetune` each learning rate of `--lr`
is fine-tuned, the one with the best dev MCC is kept and only it is scored on test; in `--mode probe`
the frozen encoder's pooled features (cached in output_dir/embeddings/) feed a logistic regression
whose C is chosen the same way. The pieces live beside this module:
- megadna.eval.config: `GUEConfig` and DNABERT-2's per-family recipes (every knob can be overridden).
- megadna.eval.data: the `GUE/<task>/<dataset>/{train,dev,test}.csv` files, validated as read.
- megadna.eval.finetune: one fine-tuning run from a `Backbone`, the best dev-MCC state kept.
- megadna.eval.probe: features, their cache, the probe.
- megadna.eval.report: the summary over seeds and the tables beside the baselines.
- megadna.eval.compare: several arms (models) side by side, paired intervals against a control.
Restarts: each finished unit leaves predictions/<task>__<dataset>[__n<size>]__seed<k>.csv and then
runs/<same>.json (written last, so it marks completion); a re-run skips those and re-reports them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.eval import problems
from megadna.eval.config import GUEConfig, key_defaults
from megadna.eval.data import SPLITS, Split, select_datasets
from megadna.eval.finetune import Backbone, finetune, head_features, load_backbone, resolve_device, score
from megadna.eval.probe import fit_probe
from megadna.eval.report import format_table, load_baselines, summarize, write_results
from megadna.eval.task import Task, prepare_task, swap_tokenizer
from megadna.jsonfile import read_json_or_none, write_json, write_text

# The public entry points (docs/GUE.md and megadna.experiments.ablation import them from here).
__all__ = ["GUEConfig", "format_table", "read_finished", "run_gue", "run_name", "select_datasets", "write_predictions"]

log = logging.getLogger(__name__)


def run_name(name: str, seed: int | str, train_size: int = 0) -> str:
    """The stem of a unit's files in predictions/, runs/ and models/: ("tf/0", 42) -> tf__0__seed42; with a
    train subset of 500 rows -> tf__0__n500__seed42; ("tf/0", "best") -> tf__0__seedbest (--save_models best)."""
    task, dataset = name.split("/", 1)
    size = f"__n{train_size}" if train_size else ""
    return f"{task}__{dataset}{size}__seed{seed}"


def write_predictions(path: Path, split: Split, out: np.ndarray) -> None:
    """index (row of the sequence in test.csv, 0 = first data row), then by problem: classification
    label, prediction, prob_<class>...; regression label, prediction; multilabel label_<name>...,
    pred_<name>..., prob_<name>..."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    pred = problems.predictions(split.problem, out)
    if split.problem == "classification":
        w.writerow(["index", "label", "prediction"] + [f"prob_{c}" for c in range(out.shape[1])])
        for i, label, p, o in zip(split.index.tolist(), split.labels.tolist(), pred.tolist(), out):
            w.writerow([i, label, p] + [f"{x:.6g}" for x in o.tolist()])
    elif split.problem == "regression":
        w.writerow(["index", "label", "prediction"])
        for i, label, p in zip(split.index.tolist(), split.labels.tolist(), pred.tolist()):
            w.writerow([i, f"{label:.9g}", f"{p:.9g}"])
    else:
        names = split.label_names
        w.writerow(["index"] + [f"label_{n}" for n in names] + [f"pred_{n}" for n in names] + [f"prob_{n}" for n in names])
        for i, label, p, o in zip(split.index.tolist(), split.labels.astype(int).tolist(), pred.tolist(), out):
            w.writerow([i, *label, *p] + [f"{x:.6g}" for x in o.tolist()])
    write_text(path, buf.getvalue())


def read_finished(marker: Path, predictions: Path, run_key: dict) -> dict | None:
    """The record of a finished (dataset, seed), or None if it has not finished. A record made under
    another config is an error, not a silent mix of two experiments in one table."""
    if not (marker.is_file() and predictions.is_file()):
        return None
    record = read_json_or_none(marker)
    if not isinstance(record, dict):
        return None  # a damaged marker: redo the run
    # A field added since that run was written is read at its default (which is what that run used).
    old = {**{k: v for k, v in key_defaults().items() if k in run_key}, **(record.get("run_key") or {})}
    if old != run_key:
        diff = ", ".join(f"{k}: {old.get(k)!r} then, {v!r} now" for k, v in run_key.items() if old.get(k) != v)
        raise InputError(f"{marker}: this run finished under a different config ({diff}); use another --output_dir, "
                         "or delete the folder's runs/, predictions/ and models/ to start over")
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
    if cfg.finetune_tokenizer:
        backbone = dataclasses.replace(backbone, tokenizer=swap_tokenizer(backbone.tokenizer, cfg.finetune_tokenizer))
    run_key = {**cfg.run_key(), "model": _model_key(backbone)}
    config = _run_config(cfg, names, backbone, device)
    write_json(out / "config.json", config)
    log.info("GUE: %d dataset(s) x %d seed(s), %s model %s on %s", len(names), len(seeds), cfg.init, cfg.model, device)

    records = []
    for name in names:
        records += _run_dataset(name, seeds, cfg, backbone, device, out, run_key)
    baselines, sizes = load_baselines(), cfg.train_sizes()
    per_size = {n: summarize([r for r in records if r.get("train_size", 0) == n], names, seeds, baselines) for n in sizes}
    results = dict(per_size[sizes[-1]])  # the last size of the curve is the headline table (a copy: low_data holds it too)
    if len(sizes) > 1:
        results["low_data"] = {str(n): per_size[n] for n in sizes}
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
    """The records of every (train size, seed) on one dataset: read back where finished, else run and written."""
    records, todo = [], []
    for size in cfg.train_sizes():
        for seed in seeds:
            rn = run_name(name, seed, size)
            done = read_finished(out / "runs" / f"{rn}.json", out / "predictions" / f"{rn}.csv", {**run_key, "train_size": size})
            if done is not None:
                metric = problems.PRIMARY[done.get("problem", "classification")]
                log.info("%s n=%s seed %d: finished earlier (test %s %.2f), skipped", name, size or "all", seed, metric, done["test"][metric])
                if cfg.mode == "finetune" and cfg.save_models != "none" and not done.get("saved_model"):
                    log.warning("%s n=%s seed %d: finished earlier without a saved model; --save_models applies to units run from now on",
                                name, size or "all", seed)
                records.append(done)
            else:
                todo.append((size, seed))
    if not todo:
        return records
    task = prepare_task(name, cfg, backbone.tokenizer, backbone.config.max_position_embeddings, backbone.config.vocab_size)
    for size, seed in todo:
        rn = run_name(name, seed, size)
        unit = task.unit(size, cfg.subsample_seed)
        desc = f"{name} n={size or 'all'} seed {seed}"
        if cfg.mode == "probe":
            result = _probe_unit(task, unit, cfg, backbone, seed, device, out, run_key)
        else:
            result = _finetune_unit(task, unit, cfg, backbone, seed, device, desc)
        model = result.pop("model", None)
        write_predictions(out / "predictions" / f"{rn}.csv", task.splits["test"], result.pop("probs"))
        if result["metric"] == "mcc":
            result["best_dev_mcc"] = result["best_dev"]  # the name records had before other metrics existed
        record = {"dataset": name, "seed": seed, "train_size": size, "mode": cfg.mode, "problem": task.problem, **result,
                  "recipe": dataclasses.asdict(task.recipe),
                  "max_tokens": task.max_tokens, "truncated": task.truncated, "num_labels": task.num_labels,
                  "sizes": {"train": len(unit), "dev": len(task.splits["dev"]), "test": len(task.splits["test"])},
                  "run_key": {**run_key, "train_size": size}}
        if model is not None and cfg.save_models != "none" and backbone.info["tokenizer"].get("kind") == "huggingface":
            log.warning("%s: a foreign encoder's fine-tuned model is not saved (--save_models needs megadna's BERT)", desc)
        elif model is not None and cfg.save_models != "none":
            _save_model(model, backbone, task, record, out, run_name(name, "best", size) if cfg.save_models == "best" else rn)
        write_json(out / "runs" / f"{rn}.json", record)  # last: marks it finished
        shown = ", ".join(f"{problems.METRIC_NAMES[m]} {result['test'][m]:.2f}" for m in problems.METRICS[task.problem])
        log.info("%s: test %s (best dev %s %.2f; chosen %s)", desc, shown, result["metric"], result["best_dev"], result["selected"])
        records.append(record)
    return records


def _finetune_unit(task: Task, rows: np.ndarray, cfg: GUEConfig, backbone: Backbone, seed: int, device: torch.device, desc: str) -> dict:
    """Fine-tune once per learning rate of the sweep; the best dev score (the problem's primary metric)
    wins (ties: the earlier lr); only the winner is scored on test."""
    data = {"train": task.train_rows(rows), "dev": task.encoded["dev"]}
    extra = {}
    if cfg.head_init != "random" and len(cfg.lr_list()) > 1:
        # The encoder each lr starts from is the same (this seed's copy): its frozen features once, not per lr.
        extra["feats"] = head_features(backbone.classifier(task.num_labels, seed, cfg.head_pooling).bert.to(device), data, cfg.head_pooling, cfg, device)
    best, sweep = None, {}
    for lr in cfg.lr_list():
        # `finetune` is looked up here at call time, so tests can replace megadna.eval.gue.finetune.
        result = finetune(backbone, data, task.num_labels, task.recipe, cfg, seed, device, desc=f"{desc} lr {lr:g}", lr=lr,
                          rc_data=task.rc_encoded and {"dev": task.rc_encoded["dev"]}, problem=task.problem, **extra)
        sweep[f"{lr:g}"] = result["best_dev"]
        if best is None or result["best_dev"] > best["best_dev"]:
            best = {**result, "selected": {"lr": lr}}
    model = best["model"]
    best["test"], best["probs"] = score(model, task.encoded["test"], cfg, device, rc=task.rc_encoded and task.rc_encoded["test"], problem=task.problem)
    best["dev_by_lr"] = sweep
    return best


def _save_model(model, backbone: Backbone, task: Task, record: dict, out: Path, stem: str) -> None:
    """The unit's fine-tuned model into out/models/<stem> (--save_models best: only if its dev score
    beats the seed saved there before)."""
    from megadna.model.classifier_export import CLASSIFIER_META, save_classifier

    target = out / "models" / stem
    if stem.endswith("__seedbest"):
        kept = read_json_or_none(target / CLASSIFIER_META) or {}
        # Only a model of this experiment (the same run key) can be the best so far; another is replaced.
        if kept.get("run_key") == record["run_key"] and kept.get("best_dev", -np.inf) >= record["best_dev"]:
            return
    meta = {k: record[k] for k in ("dataset", "seed", "train_size", "test", "metric", "best_dev", "best_step", "selected", "recipe", "max_tokens")}
    meta |= {"base_model": record["run_key"]["model"], "head_init": record["run_key"].get("head_init", "random"), "run_key": record["run_key"]}
    record["saved_model"] = str(target)
    labels = list(task.splits["train"].label_names) if task.problem == "multilabel" else None
    save_classifier(model, backbone.tokenizer, target, meta, problem=task.problem, labels=labels)


def _probe_unit(task: Task, rows: np.ndarray, cfg: GUEConfig, backbone: Backbone, seed: int, device: torch.device,
                out: Path, run_key: dict) -> dict:
    """Frozen features (cached) of the encoder -> logistic regression, C chosen on dev."""
    if task.problem != "classification":
        raise InputError(f"{task.name}: a {task.problem} dataset; --mode probe fits a logistic regression, for classification "
                         "datasets only (use --mode finetune)")
    # A pre-trained encoder is the same for every seed; a random one is drawn per seed.
    bert = backbone.bert if backbone.bert is not None else backbone.classifier(task.num_labels, seed).bert
    model_key = {**run_key["model"], "random_seed": None if backbone.bert is not None else seed}
    feats, rc_feats = {}, {} if task.rc_encoded else None
    for split in SPLITS:
        feats[split] = task.features(bert, split, model_key, cfg, device, out / "embeddings", rc=False)
        if rc_feats is not None:
            rc_feats[split] = task.features(bert, split, model_key, cfg, device, out / "embeddings", rc=True)
    labels = {s: task.encoded[s].labels.numpy() for s in SPLITS}
    feats["train"], labels["train"] = feats["train"][rows], labels["train"][rows]
    if rc_feats is not None:
        rc_feats["train"] = rc_feats["train"][rows]
    t0 = time.perf_counter()
    result = fit_probe(feats, labels, cfg.probe_Cs(), seed, rc_feats=rc_feats, num_labels=task.num_labels)
    return {**result, "best_step": 0, "steps": 0, "train_seconds": time.perf_counter() - t0}
