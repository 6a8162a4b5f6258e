"""Running one arm: its pre-training through the real launcher (`deepspeed launchers/pretrain.py`, in a
subprocess, resumed with --resume auto), then GUE on the result (megadna.eval.gue, in this process).

The arm's trainer flags come from a `TrainConfig` (megadna.cli.args.to_argv), so a renamed field breaks
here at import or in tests, not hours into a run. Its run directory is read through `RunDir` only.
Each arm's own record, arms/<arm>/arm.json, holds its plan and its wall times (seconds).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from megadna.cli.args import to_argv
from megadna.errors import InputError
from megadna.eval.gue import GUEConfig, run_gue
from megadna.experiments.ablation.config import AblationConfig, Arm
from megadna.jsonfile import read_json_or_none, write_json
from megadna.rundir import RunDir
from megadna.train.config import TrainConfig

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
LAUNCHER = ROOT / "launchers" / "pretrain.py"
ARM_RECORD = "arm.json"
GUE_RESULTS = "results.json"  # written into GUEConfig.output_dir by megadna.eval.gue
KEEP_LAST = 2  # checkpoints kept per arm: enough to resume, small on disk


class ArmFailed(RuntimeError):
    """One arm could not finish; the ablation records it and goes on with the others."""


def read_state(arm_dir: Path) -> dict:
    """arm_dir/arm.json, or {} for an arm not started yet."""
    return read_json_or_none(Path(arm_dir) / ARM_RECORD) or {}


def save_state(arm_dir: Path, state: dict) -> None:
    write_json(Path(arm_dir) / ARM_RECORD, state)


# --------------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------------


def train_config(arm: Arm, arm_spec: str, cfg: AblationConfig, save_dir: Path, max_tokens: int | None) -> TrainConfig:
    """The trainer's config for one arm: the same data, model, steps and seed as every other arm;
    `arm_spec` is the resolved tokenizer (a name or an absolute BPE directory)."""
    return TrainConfig(
        data=str(Path(cfg.data).resolve()), tokenizer=arm_spec, masking=arm.masking, model=cfg.model,
        max_steps=cfg.max_steps, seed=cfg.seed, save_dir=str(Path(save_dir).resolve()),  # the launcher runs in ROOT
        save_interval=cfg.save_interval or max(1, cfg.max_steps // 5), keep_last=KEEP_LAST, resume="auto",
        eval_interval=0, eval_batches=cfg.eval_batches, log_interval=cfg.log_interval or max(1, cfg.max_steps // 20),
        max_tokens=max_tokens or 0, progress=False,
    )


def pretrain_argv(train_cfg: TrainConfig, ds_path: Path, extra: str = "") -> list[str]:
    """The launcher's arguments: the DeepSpeed config, `train_cfg` as flags, then `extra` verbatim
    (AblationConfig.pretrain_args; given last, so it overrides)."""
    return ["--deepspeed_config", str(ds_path)] + to_argv(train_cfg) + shlex.split(extra)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _deepspeed() -> str:
    beside = Path(sys.executable).parent / "deepspeed"
    found = str(beside) if beside.is_file() else shutil.which("deepspeed")
    if not found:
        raise InputError("the `deepspeed` launcher is not on PATH nor beside this Python; install deepspeed")
    return found


def pretrain_command(train_cfg: TrainConfig, ds_path: Path, ranks: int, extra: str = "") -> list[str]:
    """`deepspeed --num_gpus N --master_port P launchers/pretrain.py ...`, as a user would run it."""
    return [_deepspeed(), "--num_gpus", str(ranks), "--master_port", str(_free_port()), str(LAUNCHER),
            *pretrain_argv(train_cfg, ds_path, extra)]


def pretrain_done(save_dir: Path, max_steps: int) -> dict | None:
    """The run's summary when it reached max_steps (not preempted), else None."""
    summary = read_json_or_none(RunDir(save_dir).summary)  # missing or half-written: not done
    if summary and summary.get("final_step") == max_steps and not summary.get("preempted"):
        return summary
    return None


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def run_pretrain(name: str, train_cfg: TrainConfig, cfg: AblationConfig, ds_path: Path, ranks: int, arm_dir: Path, state: dict) -> dict:
    """Pre-train one arm through the launcher (resuming what is there); returns its run summary.
    The wall time (s) is added to state["pretrain_wall_s"] and saved in arm.json."""
    save_dir = Path(train_cfg.save_dir)
    done = pretrain_done(save_dir, train_cfg.max_steps)
    if done:
        log.info("%s: pre-training finished earlier (step %d), skipped", name, done["final_step"])
        return done
    cmd = pretrain_command(train_cfg, ds_path, ranks, cfg.pretrain_args)
    log_path = arm_dir / "pretrain.log"
    log.info("%s: pre-training (%d steps, %d rank(s)); log: %s", name, train_cfg.max_steps, ranks, log_path)
    t0 = time.perf_counter()
    with open(log_path, "a") as logf:
        logf.write(f"\n$ {shlex.join(cmd)}\n")
        logf.flush()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    state["pretrain_wall_s"] = state.get("pretrain_wall_s", 0.0) + time.perf_counter() - t0
    save_state(arm_dir, state)
    done = pretrain_done(save_dir, train_cfg.max_steps)
    if proc.returncode != 0 or not done:
        raise ArmFailed(f"{name}: pre-training exited with {proc.returncode} before step {train_cfg.max_steps}; "
                        f"re-run the same command to resume it. Last lines of {log_path}:\n{_tail(log_path)}")
    return done


# --------------------------------------------------------------------------------------------------
# GUE
# --------------------------------------------------------------------------------------------------


def gue_config(cfg: AblationConfig, arm_dir: Path, random_init_tokenizer: str = "") -> GUEConfig:
    """GUE settings for an arm's pre-trained model, or (random_init_tokenizer given) for the random-init control."""
    if random_init_tokenizer:
        model = dict(init="random", model=cfg.model, tokenizer=random_init_tokenizer)
    else:
        model = dict(model=str(arm_dir / "pretrain"))
    return GUEConfig(gue_dir=cfg.gue_dir, **model, output_dir=str(arm_dir / "gue"), datasets=cfg.datasets,
                     seeds=cfg.gue_seeds, lr=cfg.gue_lr, batch_size=cfg.gue_batch_size, epochs=cfg.gue_epochs,
                     max_steps=cfg.gue_max_steps, warmup_steps=cfg.gue_warmup_steps, eval_steps=cfg.gue_eval_steps,
                     max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples, progress=False)


def run_arm_gue(name: str, cfg: AblationConfig, arm_dir: Path, state: dict, random_init_tokenizer: str = "") -> dict:
    """GUE for one arm (or one random-init control); skipped when its results exist for the same settings.
    The wall time (s) is added to state["gue_wall_s"] and saved in arm_dir/arm.json."""
    gcfg = gue_config(cfg, arm_dir, random_init_tokenizer)
    previous = read_json_or_none(Path(gcfg.output_dir) / GUE_RESULTS)
    ignore = {"progress", "device"}
    want = {k: v for k, v in dataclasses.asdict(gcfg).items() if k not in ignore}
    if previous and {k: v for k, v in previous["config"]["config"].items() if k not in ignore} == want:
        log.info("%s: GUE results exist for these settings, skipped", name)
        return previous
    t0 = time.perf_counter()
    results = run_gue(gcfg)
    state["gue_wall_s"] = state.get("gue_wall_s", 0.0) + time.perf_counter() - t0
    save_state(arm_dir, state)
    return results


def gue_summary(results: dict) -> dict:
    """The per-dataset and overall test scores the report needs, from run_gue's results."""
    return {"datasets": {r["name"]: {k: r[k] for k in ("mcc_mean", "mcc_std", "f1_mean", "accuracy_mean")} for r in results["datasets"]},
            "overall": {k: results["overall"][k] for k in ("mcc_mean", "mcc_std")}}
