"""Tokenizer (and masking) ablation: the same short pre-training per arm, then GUE, in one table.
The command line is tools/ablate_tokenizers.py; see docs/TOKENIZERS.md.

    cfg = AblationConfig(data="shards/", out="runs/ablation", arms="kmer6:randommask,nkmer6:bert,bpe4096:bert,base:bert",
                         max_steps=2000, gue_dir="data/GUE", datasets="prom/prom_core_notata,tf/0")
    result = run_ablation(cfg)    # writes ablation.json, ablation.md, loss_curves.png, arms/<arm>/...

The mental model:
- an arm is (tokenizer, masking policy) (config). Each arm is pre-trained by the real launcher, as a
  user would run it: `deepspeed --num_gpus N launchers/pretrain.py ...` in a subprocess, then
  fine-tuned and scored by the GUE harness (megadna.eval.gue.run_gue, in this process) (run).
- the equal budget: every arm reads the same shard set with the same DeepSpeed config (micro batch,
  gradient accumulation), the same number of ranks, the same seed and the same max_steps. Shards hold
  raw bases and the data order is a function of (seed, position) only, so every arm sees exactly the
  same windows in the same order: the same bp per step and in all. Tokens per window differ by
  tokenizer (an overlapping 6-mer makes ~6x the tokens of a non-overlapping one from the same bases);
  the report states both the bp (equal) and the tokens (not) each arm saw (plan, report).
- BPE arms: `bpe<V>` that is not a directory is trained on the shards' train split into
  out/tokenizers/bpe<V>, with a --max_tokens sized on the shards (plan).
- resumable: arms/<arm>/arm.json holds the arm's plan; an arm whose pre-training reached max_steps
  (its run summary) and whose GUE results match the requested config is skipped; an interrupted
  pre-training is resumed by the launcher's `--resume auto`; GUE skips its finished (dataset, seed)
  pairs by itself. A plan that changed (other steps, model, data...) is refused, not mixed in.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from megadna.errors import InputError
from megadna.experiments.ablation.config import AblationConfig, Arm, parse_arms
from megadna.experiments.ablation.plan import PlannedArm, budget, ds_config_path, num_ranks, plan_arms, plan_key
from megadna.experiments.ablation.report import convergence, format_markdown, plot_loss_curves, read_metrics, smooth
from megadna.experiments.ablation.run import LAUNCHER, ArmFailed, gue_summary, read_state, run_arm_gue, run_pretrain, save_state
from megadna.jsonfile import write_json, write_text

__all__ = ["AblationConfig", "Arm", "convergence", "format_markdown", "parse_arms", "run_ablation", "smooth"]

log = logging.getLogger(__name__)


def _run_arm(p: PlannedArm, cfg: AblationConfig, ds_path: Path, ranks: int, bud: dict, gue_names: list[str]) -> dict:
    """Pre-train and (with GUE datasets) evaluate one arm; its record for ablation.json. A failed arm
    carries "error" instead of raising, so the other arms still run."""
    p.dir.mkdir(parents=True, exist_ok=True)
    p.state.update(plan=p.plan, plan_key=plan_key(p.plan))
    save_state(p.dir, p.state)
    record: dict = {"name": p.arm.name, "tokenizer": p.arm.tokenizer, "masking": p.arm.masking, "dir": str(p.dir),
                    "tokenizer_name": p.tokenizer.name, "vocab_size": p.tokenizer.vocab_size,
                    "overlapping": p.tokenizer.overlapping, "tokens": p.tokens}
    try:
        summary = run_pretrain(p.arm.name, p.train, cfg, ds_path, ranks, p.dir, p.state)
        windows = bud["windows_per_step"] * cfg.max_steps
        record["pretrain"] = {"summary": summary, "convergence": convergence(read_metrics(p.train.save_dir)),
                              "tokens_seen": p.tokens["tokens_per_window"] * windows,
                              "positions_computed": p.tokens["positions"] * windows}
        if gue_names:
            record["gue"] = gue_summary(run_arm_gue(p.arm.name, cfg, p.dir, p.state))
    except ArmFailed as e:  # the table marks this arm
        log.error("%s", e)
        record["error"] = str(e)
    record["pretrain_wall_s"] = p.state.get("pretrain_wall_s")
    record["gue_wall_s"] = p.state.get("gue_wall_s")
    return record


def _run_controls(planned: list[PlannedArm], cfg: AblationConfig) -> dict:
    """GUE from random init, one per tokenizer (arms that differ only in masking share it)."""
    controls = {}
    for p in planned:
        label = p.control_label
        if label in controls:
            continue
        control_dir = Path(cfg.out) / "controls" / label
        control_dir.mkdir(parents=True, exist_ok=True)
        state = read_state(control_dir)
        controls[label] = gue_summary(run_arm_gue(f"{label} (random init)", cfg, control_dir, state, random_init_tokenizer=p.spec))
        controls[label]["gue_wall_s"] = state.get("gue_wall_s")
    return controls


def run_ablation(cfg: AblationConfig | None = None, **fields) -> dict:
    """Pre-train and evaluate every arm (skipping finished work), then write ablation.json/.md and
    loss_curves.png. Returns the result dict; arms that failed carry "error" and the others still run."""
    from megadna.data.shards import read_manifest

    cfg = cfg or AblationConfig(**fields)
    if not LAUNCHER.is_file():
        raise InputError(f"{LAUNCHER}: the pre-training launcher is missing; run the ablation from a megadna checkout (pip install -e .)")
    out = Path(cfg.out)
    (out / "arms").mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cfg.data)
    if cfg.gue_dir:
        from megadna.eval.gue import select_datasets

        gue_names = select_datasets(cfg.gue_dir, cfg.datasets)
    else:
        gue_names = []
    ds_path = ds_config_path(cfg)
    ranks = num_ranks(cfg)
    bud = budget(cfg, ds_path, ranks, int(manifest["window_config"]["window"]))
    planned = plan_arms(cfg, ds_path, ranks)  # every arm resolved and checked before any trains

    results = [_run_arm(p, cfg, ds_path, ranks, bud, gue_names) for p in planned]
    controls = {}
    if gue_names and cfg.gue_random_control:
        controls = _run_controls(planned, cfg)
        for record, p in zip(results, planned):
            record["control"] = p.control_label
    result = {"config": dataclasses.asdict(cfg) | {"ds_config": str(ds_path), "ranks": ranks}, "budget": bud,
              "gue_datasets": gue_names, "arms": results, "controls": controls}
    write_json(out / "ablation.json", result)
    write_text(out / "ablation.md", format_markdown(result))
    plot_loss_curves(results, out / "loss_curves.png", cfg.max_steps)
    return result
