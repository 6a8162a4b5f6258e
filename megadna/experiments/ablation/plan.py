"""The plan: what every arm is given, resolved and checked before any arm trains.

- the equal budget: every arm reads the same shard set with the same DeepSpeed config (micro batch,
  gradient accumulation), the same number of ranks, the same seed and the same max_steps, so the same
  bp per step and in all; the tokens per window differ by tokenizer (`window_tokens`).
- BPE arms: `bpe<V>` that is not a directory is trained on the shards' train split into
  out/tokenizers/bpe<V>; its --max_tokens is the longest window encoding found on the shards (a scan
  of up to SCAN_WINDOWS windows) rounded up to a multiple of 8: BPE token counts depend on the content.
- an arm's plan is saved in arms/<arm>/arm.json; a folder started with another plan is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megadna.errors import InputError
from megadna.experiments.ablation.config import AblationConfig, Arm
from megadna.experiments.ablation.run import ROOT, read_state, train_config
from megadna.jsonfile import read_json
from megadna.tokenizers import DNATokenizer, get_tokenizer
from megadna.train.config import TrainConfig

log = logging.getLogger(__name__)

SCAN_WINDOWS = 50_000  # windows encoded to size a BPE arm's --max_tokens and to count tokens per window


def resolve_tokenizer(spec: str, cfg: AblationConfig) -> tuple[str, DNATokenizer]:
    """(spec the launcher gets, tokenizer). 'bpe<V>' that is not a directory is trained on the shards once."""
    if re.fullmatch(r"bpe\d+", spec) and not Path(spec).is_dir():
        d = Path(cfg.out) / "tokenizers" / spec
        if not (d / "megadna_tokenizer.json").is_file():
            from megadna.tokenizers import train_bpe
            from megadna.tokenizers.bpe_corpus import shard_sequences

            log.info("training %s on up to %d bp of %s into %s", spec, cfg.bpe_max_bp, cfg.data, d)
            train_bpe(shard_sequences(cfg.data), int(spec[3:]), d, max_bp=cfg.bpe_max_bp, overwrite=True)
        return str(d.resolve()), get_tokenizer(d)
    tok = get_tokenizer(spec)
    return (str(Path(spec).resolve()) if Path(spec).is_dir() else spec), tok


def _scan(shard_dir: Path, split: str, limit: int):
    from itertools import islice

    from megadna.data.shards import iter_split

    return islice(iter_split(shard_dir, split), limit)


def window_tokens(tokenizer: DNATokenizer, shard_dir, max_positions: int) -> dict:
    """Tokens per window (no specials) on the shards, and the --max_tokens a BPE arm needs (None:
    the launcher's own, window-derived)."""
    from megadna.data.shards import read_manifest

    shard_dir = Path(shard_dir)
    window = int(read_manifest(shard_dir)["window_config"]["window"])
    fixed = tokenizer.num_tokens(window)
    if fixed is not None:
        return {"window_bp": window, "tokens_per_window": float(fixed), "longest": fixed, "max_tokens": None, "positions": fixed + 2, "scanned": 0}
    counts = [len(tokenizer.encode(s)) for split in ("train", "val") for s in _scan(shard_dir, split, SCAN_WINDOWS)]
    longest = max(counts)
    max_tokens = min(max_positions, -(-(longest + 2) // 8) * 8)
    return {"window_bp": window, "tokens_per_window": float(np.mean(counts)), "longest": longest, "max_tokens": max_tokens,
            "positions": max_tokens, "scanned": len(counts)}


def ds_config_path(cfg: AblationConfig) -> Path:
    if cfg.deepspeed_config:
        p = Path(cfg.deepspeed_config)
    else:
        import torch

        p = ROOT / "ds_configs" / ("z2.json" if torch.cuda.is_available() else "cpu_tiny.json")
    if not p.is_file():
        raise InputError(f"{p}: no such DeepSpeed config")
    return p.resolve()


def num_ranks(cfg: AblationConfig) -> int:
    if cfg.num_gpus:
        return cfg.num_gpus
    import torch

    return torch.cuda.device_count() or 1


def budget(cfg: AblationConfig, ds_path: Path, ranks: int, window_bp: int) -> dict:
    """What every arm gets: windows and bp per optimizer step, and bp in all."""
    ds = read_json(ds_path, "DeepSpeed config")
    micro = int(ds["train_micro_batch_size_per_gpu"])
    accum = int(ds.get("gradient_accumulation_steps", 1))
    windows_per_step = micro * accum * ranks
    return {"max_steps": cfg.max_steps, "micro_batch": micro, "gradient_accumulation": accum, "ranks": ranks,
            "windows_per_step": windows_per_step, "window_bp": window_bp, "bp_per_step": windows_per_step * window_bp,
            "bp_total": windows_per_step * window_bp * cfg.max_steps, "seed": cfg.seed}


def plan_key(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PlannedArm:
    """One arm, resolved: its folder, launcher tokenizer spec, tokens per window, plan and trainer config."""

    arm: Arm
    dir: Path
    spec: str
    tokenizer: DNATokenizer
    tokens: dict
    plan: dict
    state: dict  # arm.json as found (updated as the arm runs)
    train: TrainConfig

    @property
    def control_label(self) -> str:
        """The tokenizer's name for its random-init control (arms that differ only in masking share it)."""
        return Path(self.spec).name if Path(self.spec).is_dir() else self.spec


def plan_arms(cfg: AblationConfig, ds_path: Path, ranks: int) -> list[PlannedArm]:
    """Resolve every arm (tokenizers, BPE training, plans) so bad input stops the run before any training."""
    from megadna.model import model_config

    ds_config = read_json(ds_path, "DeepSpeed config")
    planned = []
    for arm in cfg.arm_list():
        arm_dir = Path(cfg.out) / "arms" / arm.name
        spec, tok = resolve_tokenizer(arm.tokenizer, cfg)
        tokens = window_tokens(tok, cfg.data, model_config(cfg.model, vocab_size=tok.vocab_size).max_position_embeddings)
        plan = {"tokenizer": spec, "tokenizer_config": tok.to_dict() | {"vocab_size": tok.vocab_size}, "masking": arm.masking,
                "model": cfg.model, "max_steps": cfg.max_steps, "seed": cfg.seed, "data": str(Path(cfg.data).resolve()),
                "deepspeed_config": ds_config, "ranks": ranks, "max_tokens": tokens["max_tokens"],
                "pretrain_args": cfg.pretrain_args}
        state = read_state(arm_dir)
        if state.get("plan") and state["plan"] != plan:
            diff = ", ".join(k for k in plan if state["plan"].get(k) != plan[k])
            raise InputError(f"{arm_dir}: this arm was started with another plan (differs in: {diff}); use another --out, "
                             "or delete that arm's folder to start it over")
        train = train_config(arm, spec, cfg, arm_dir / "pretrain", tokens["max_tokens"])
        planned.append(PlannedArm(arm, arm_dir, spec, tok, tokens, plan, state, train))
    return planned
