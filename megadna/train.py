"""Pre-training: shards -> tokens -> on-device masking -> BERT -> DeepSpeed (ZeRO, bf16) -> checkpoints.

The DeepSpeed JSON config owns batch size, precision, optimizer, LR schedule, clipping and the ZeRO
stage; `TrainConfig` owns everything else (data, tokenizer, masking, model shape, run length,
checkpoints, logging). Everything random is a function of (seed, global_step, rank): masking through
`apply_masking`, dropout by re-seeding torch at every step, and the data by its position (batches
consumed), so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megadna import checkpoint as ckpt
from megadna import distributed
from megadna.errors import InputError
from megadna.masking import MaskingConfig, apply_masking
from megadna.metrics import Meter, format_eta, peak_flops
from megadna.model import PRESETS, BertForMLM, model_config
from megadna.shards import StreamConfig, WindowStream, make_loader, read_manifest
from megadna.tokenizers import get_tokenizer, load_tokenizer

log = logging.getLogger("megadna.train")


@dataclass
class TrainConfig:
    data: str = field(default="", metadata={"help": "shard directory from tools/make_shards.py; empty: build the demo data in save_dir/demo_data"})
    tokenizer: str = field(default="kmer6", metadata={"help": "kmer<k> (overlapping), nkmer<k> (non-overlapping), base, or a saved BPE directory"})
    model: str = field(default="tiny", metadata={"help": f"model preset: {', '.join(PRESETS)}"})
    masking: str = field(default="randommask", metadata={"help": "bert | dnabert | randommask"})
    mask_ratio: float = field(default=0.15, metadata={"help": "target share of maskable tokens masked"})
    max_boundary: int = field(default=0, metadata={"help": "RandomMask B_max in tokens (0: the masking module's default, 2k)"})
    mask_phases: int = field(default=5, metadata={"help": "RandomMask phases over the run"})
    max_steps: int = field(default=300, metadata={"help": "optimizer steps (global_step) to train to"})
    save_dir: str = field(default="runs/demo", metadata={"help": "checkpoints, TensorBoard logs and the resolved config go here"})
    save_interval: int = field(default=100, metadata={"help": "steps between checkpoints (and one at the end)"})
    keep_last: int = field(default=3, metadata={"help": "complete checkpoints kept; older ones are deleted"})
    resume: str = field(default="auto", metadata={"help": "auto (newest complete checkpoint in save_dir, if any) | none | a checkpoint directory"})
    eval_interval: int = field(default=100, metadata={"help": "steps between evaluations on the held-out shards (0: only at the end)"})
    eval_batches: int = field(default=8, metadata={"help": "micro batches per rank per evaluation"})
    log_interval: int = field(default=10, metadata={"help": "steps between log lines / TensorBoard scalars"})
    num_workers: int = field(default=1, metadata={"help": "data loader processes per rank (part of the data position)"})
    reverse_complement: float = field(default=0.5, metadata={"help": "probability a window is read reverse-complemented"})
    seed: int = field(default=0, metadata={"help": "seeds data order, masking, dropout and init"})
    max_tokens: int = field(default=0, metadata={"help": "tokens per sequence incl. [CLS]/[SEP] (0: from the window length and tokenizer)"})
    stop_at_step: int = field(default=0, metadata={"help": "save and exit at this global step (0: run to max_steps); the LR and masking schedules still follow max_steps. For job slots shorter than the run"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar on rank 0"})

    def __post_init__(self):
        if self.masking not in ("bert", "dnabert", "randommask"):
            raise InputError(f"--masking must be bert, dnabert or randommask, got {self.masking!r}")
        if self.max_steps < 1 or self.save_interval < 1 or self.log_interval < 1:
            raise InputError("--max_steps, --save_interval and --log_interval must be >= 1")
        if self.model not in PRESETS:
            raise InputError(f"--model {self.model!r} is not a preset; choose from {', '.join(PRESETS)}")

    def masking_config(self) -> MaskingConfig:
        return MaskingConfig(policy=self.masking, mask_ratio=self.mask_ratio, max_boundary=self.max_boundary or None, phases=self.mask_phases)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One --flag per TrainConfig field, typed and documented from the dataclass."""
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("bool", bool):
            parser.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default, help=f.metadata.get("help"))
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type if isinstance(f.type, str) else f.type.__name__, str)
            parser.add_argument(f"--{f.name}", type=typ, default=f.default, help=f.metadata.get("help"))
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})


# --------------------------------------------------------------------------------------------------
# DeepSpeed config
# --------------------------------------------------------------------------------------------------


def load_ds_config(path: str, max_steps: int) -> dict:
    """Read the DeepSpeed JSON and resolve the two "auto" schedule lengths from --max_steps.

    Only the scheduler's total_num_steps (-> max_steps) and warmup_num_steps (-> 5% of max_steps) may be
    "auto"; everything else is DeepSpeed's to validate.
    """
    p = Path(path)
    try:
        cfg = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: no such DeepSpeed config") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    if "train_micro_batch_size_per_gpu" not in cfg:
        raise InputError(f"{p}: set train_micro_batch_size_per_gpu (megadna reads it to plan the data per rank)")
    params = cfg.get("scheduler", {}).get("params", {})
    if params.get("total_num_steps") == "auto":
        params["total_num_steps"] = max_steps
    if params.get("warmup_num_steps") == "auto":
        params["warmup_num_steps"] = max(1, round(0.05 * max_steps))
    if cfg.get("train_batch_size") == "auto":
        del cfg["train_batch_size"]  # DeepSpeed derives it from micro batch x accumulation x world size
    return cfg


def precision(ds_cfg: dict) -> str:
    if ds_cfg.get("bf16", {}).get("enabled"):
        return "bf16"
    if ds_cfg.get("fp16", {}).get("enabled"):
        return "fp16"
    return "fp32"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def demo_data(save_dir: Path, rank: int) -> Path:
    """Build the demo shards (synthetic genome, deterministic) once; other ranks wait for the manifest."""
    from megadna.genome import WindowConfig
    from megadna.shards import MANIFEST, ShardConfig, write_shards
    from megadna.synthetic import write_synthetic_fasta

    out = save_dir / "demo_data"
    if rank == 0 and not (out / "shards" / MANIFEST).exists():
        fasta = write_synthetic_fasta(out / "demo_genome.fa.gz", n_contigs=4, length=250_000, seed=0)
        write_shards([fasta], out / "shards", WindowConfig(window=510, stride=255, max_n_fraction=0.0, val_fraction=0.05), ShardConfig(samples_per_shard=1000), overwrite=True)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return out / "shards"


def sequence_tokens(tokenizer, window_bp: int, max_positions: int, requested: int) -> int:
    """Tokens per sequence including [CLS] and [SEP]."""
    if requested:
        n = requested
    else:
        per_window = tokenizer.num_tokens(window_bp)
        n = per_window + 2 if per_window is not None else max_positions
    if n > max_positions:
        raise InputError(f"{n} tokens per sequence exceed the model's {max_positions} positions: use shorter windows (--window in make_shards) or --max_tokens")
    return n


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


class NonFiniteLoss(RuntimeError):
    pass


def _seed_everything(seed: int, step: int, rank: int) -> None:
    # Dropout draws from torch's global RNG: re-seeding it from (seed, step, rank) at every step makes
    # it a function of the step, so a resumed run draws exactly what the uninterrupted one drew.
    torch.manual_seed((seed * 1_000_003 + step * 10_007 + rank) % (2**63 - 1))


class _Preemption:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def train(cfg: TrainConfig, ds_config_path: str) -> dict:
    """Run (or resume) pre-training. Returns a summary dict (final step, last losses, eval)."""
    import deepspeed

    distributed.init()  # deepspeed.init_distributed with a bounded rendezvous and collective timeout
    dist = torch.distributed
    rank, world = dist.get_rank(), dist.get_world_size()
    accel = deepspeed.get_accelerator()
    save_dir = Path(cfg.save_dir)
    distributed.check_shared_dir(save_dir, "--save_dir")
    ckpt_root = save_dir / "checkpoints"
    torch.manual_seed(cfg.seed)  # model init: identical on every rank

    ds_cfg = load_ds_config(ds_config_path, cfg.max_steps)
    micro = int(ds_cfg["train_micro_batch_size_per_gpu"])
    accum = int(ds_cfg.get("gradient_accumulation_steps", 1))

    resume_dir = ckpt.resolve_resume(cfg.resume, ckpt_root)
    resume_meta = ckpt.read_meta(resume_dir) if resume_dir else None
    data_dir = Path(cfg.data) if cfg.data else demo_data(save_dir, rank)
    manifest = read_manifest(data_dir)
    distributed.check_consistent(manifest, "data manifest", hint=f"{data_dir} differs between nodes: give every node the same shards (tools/make_shards.py --verify)")
    # On resume the tokenizer comes from the checkpoint (a BPE directory may have moved since).
    tokenizer = load_tokenizer(resume_dir / "tokenizer") if resume_dir else get_tokenizer(cfg.tokenizer)
    mcfg = model_config(cfg.model, vocab_size=tokenizer.vocab_size)
    max_tokens = sequence_tokens(tokenizer, manifest["window_config"]["window"], mcfg.max_position_embeddings, cfg.max_tokens)
    masking = cfg.masking_config()
    # A span of m tokens hides m - k + 1 bases only for overlapping k-mers; other tokenizers span from 1.
    span_k = tokenizer.k if tokenizer.overlapping else 1

    distributed.check_consistent(
        {"train": dataclasses.asdict(cfg), "deepspeed": ds_cfg, "tokenizer": tokenizer.to_dict() | {"vocab": tokenizer.vocab}, "model": mcfg.to_dict(),
         "max_tokens": max_tokens, "world_size": world, "resume": resume_meta},
        "resolved config", hint="launch every node with the same arguments, DeepSpeed config, tokenizer and --save_dir",
    )
    model = BertForMLM(mcfg)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_cfg)
    device = engine.device
    prec = precision(ds_cfg)

    step, batches_consumed = 0, 0
    if resume_dir:
        _check_resumable(resume_meta, world, cfg, micro, accum, resume_dir)
        _, client = engine.load_checkpoint(str(resume_dir.parent), tag=resume_dir.name, load_optimizer_states=True, load_lr_scheduler_states=True)
        if client is None:
            raise InputError(f"{resume_dir}: DeepSpeed could not load this checkpoint")
        step, batches_consumed = resume_meta["global_step"], resume_meta["batches_consumed"]

    stream = WindowStream(
        data_dir,
        StreamConfig(split="train", micro_batch=micro, num_workers=cfg.num_workers, seed=cfg.seed, reverse_complement=cfg.reverse_complement),
        rank=rank, world_size=world, tokenizer=tokenizer, max_tokens=max_tokens, start_batch=batches_consumed,
    )
    resolved = {
        "train": dataclasses.asdict(cfg) | {"data": str(data_dir)},
        "masking": masking.to_dict(),
        "model": mcfg.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "deepspeed": ds_cfg,
        "world_size": world,
        "max_tokens": max_tokens,
        "data_manifest": {k: manifest[k] for k in ("window_config", "totals")},
    }
    # The held-out stream is built once; each evaluation restarts it at its first batch.
    val_stream = None
    if manifest["splits"]["val"]["shards"]:
        val_stream = WindowStream(data_dir, StreamConfig(split="val", micro_batch=micro, num_workers=0, seed=cfg.seed, shuffle=False), rank=rank, world_size=world, tokenizer=tokenizer, max_tokens=max_tokens)
    is_main = rank == 0
    if is_main:
        save_dir.mkdir(parents=True, exist_ok=True)
        print("resolved config:\n" + json.dumps(resolved, indent=1), flush=True)
        (save_dir / "config.json").write_text(json.dumps(resolved, indent=1))
        if resume_dir:
            print(f"resuming from {resume_dir} at global_step {step} (batches consumed per rank: {batches_consumed})", flush=True)

    flops_per_token = model.flops_per_token(max_tokens)
    peak = peak_flops(accel.device_name() if device.type == "cpu" else torch.cuda.get_device_name(device), prec)
    tb = _tensorboard(save_dir, is_main)
    metrics_log = _metrics_log(save_dir / "metrics.jsonl", step) if is_main else None
    bar = _progress(cfg, step, is_main)
    preempt = _Preemption()
    loader = iter(make_loader(stream, pin_memory=device.type == "cuda"))
    meter, history, summary = Meter(), [], {"start_step": step}
    try:
        end_step = min(cfg.max_steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.max_steps
        while step < end_step:
            _seed_everything(cfg.seed, step, rank)
            stats = torch.zeros(5, device=device)  # loss sum, masked, correct, mask-ratio sum, stop flag
            boundary = 0
            for micro_step in range(accum):
                t0 = time.perf_counter()
                batch = next(loader)
                meter.data_wait += time.perf_counter() - t0
                ids, attn = _to_device(batch, device)
                masked, labels, mstats = apply_masking(
                    ids, cfg=masking, k=span_k, global_step=step, seed=cfg.seed, rank=rank, micro_step=micro_step,
                    total_steps=cfg.max_steps, vocab_size=tokenizer.vocab_size,
                )
                out = engine(masked, attention_mask=attn, labels=labels)
                engine.backward(out["loss"])
                stats[0] += out["loss"].detach().float()
                stats[1] += out["n_masked"]
                stats[2] += out["n_correct"]
                stats[3] += mstats["mask_ratio"]
                boundary = mstats["mask_boundary"]
                meter.tokens += ids.numel()  # padded positions are computed, so they count
                if micro_step == accum - 1:
                    # One collective per step carries the logged figures and the stop flags, so every
                    # rank takes the same decision (a rank that stopped alone would hang the others).
                    stats[4] = float(preempt.requested)
                    dist.all_reduce(stats)
                    loss = stats[0].item() / (accum * world)
                    if not math.isfinite(loss):
                        raise NonFiniteLoss(f"loss is {loss} at global_step {step}; weights were not updated by this step and the last complete checkpoint is intact")
                engine.step()
            step += 1
            batches_consumed += accum
            meter.steps += 1
            history.append(loss)
            if is_main:
                metrics_log.write(json.dumps({"step": step, "loss": loss, "mask_boundary": boundary, "mlm_accuracy": (stats[2] / stats[1].clamp(min=1)).item(), "lr": engine.get_lr()[0]}) + "\n")
                metrics_log.flush()
                if bar is not None:
                    bar.update(1)
            if step % cfg.log_interval == 0 or step == cfg.max_steps:
                _log_step(engine, stats, meter.window(), loss, boundary, step, cfg, accum, world, flops_per_token, peak, tb, bar, batches_consumed, summary)
            if cfg.eval_interval and step % cfg.eval_interval == 0 and step < cfg.max_steps:
                summary["eval"] = evaluate(engine, val_stream, tokenizer, masking, span_k, cfg, rank, step, tb)
            if stats[4].item() > 0:
                log.warning("preemption signal: saving at global_step %d and exiting", step)
                save(engine, ckpt_root, step, batches_consumed, resolved, tokenizer, world, cfg, rank)
                summary["preempted"] = True
                break
            if step % cfg.save_interval == 0 or step == end_step:
                save(engine, ckpt_root, step, batches_consumed, resolved, tokenizer, world, cfg, rank)
        if not summary.get("preempted") and step == cfg.max_steps:
            summary["eval"] = evaluate(engine, val_stream, tokenizer, masking, span_k, cfg, rank, step, tb)
    finally:
        del loader  # its worker processes ignore SIGTERM: shut them down here, not at interpreter exit (where it would hang)
        preempt.restore()
        if bar is not None:
            bar.close()
        if tb is not None:
            tb.close()
        if metrics_log is not None:
            metrics_log.close()
    summary.update(final_step=step, losses=history, batches_consumed=batches_consumed)
    if is_main:
        (save_dir / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "losses"} | {"last_losses": history[-10:]}, indent=1))
    return summary


def _check_resumable(meta: dict, world: int, cfg: TrainConfig, micro: int, accum: int, resume_dir: Path) -> None:
    """The data position is only exact for the same world size, workers and micro batch: refuse otherwise."""
    want = {"world_size": world, "num_workers": cfg.num_workers, "micro_batch": micro, "seed": cfg.seed}
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a}, now {b}" for k, (a, b) in diff.items())
        raise InputError(
            f"{resume_dir}: cannot resume exactly ({detail}). Resume with the same settings, or start a new run "
            f"(--resume none, a new --save_dir). See docs/MULTINODE.md on changing the world size."
        )


def save(engine, ckpt_root: Path, step: int, batches_consumed: int, resolved: dict, tokenizer, world: int, cfg: TrainConfig, rank: int) -> Path:
    """Every rank writes its part through DeepSpeed; rank 0 marks the checkpoint complete last."""
    tag = ckpt.tag_for(step)
    client = {"global_step": step, "batches_consumed": batches_consumed}
    weights = distributed.check_replicas(engine.module)  # every rank holds the same weights, or stop before saving
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=client)
    d = ckpt_root / tag
    torch.distributed.barrier()  # every rank's shard of the state is on disk before the marker
    if rank == 0:
        tokenizer.save(d / "tokenizer")
        (d / "config.json").write_text(json.dumps(resolved, indent=1))
        ckpt.write_meta(d, {"global_step": step, "batches_consumed": batches_consumed, "world_size": world, "num_workers": cfg.num_workers, "micro_batch": resolved["deepspeed"]["train_micro_batch_size_per_gpu"], "seed": cfg.seed, "tokenizer": tokenizer.to_dict(), "model": resolved["model"], "weights_sha256": weights})
        ckpt.prune(ckpt_root, cfg.keep_last)
    torch.distributed.barrier()
    return d


@torch.no_grad()
def _to_device(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids and attention mask on the device. The mask is dropped when nothing is padded, decided
    on the host copy for free: no mask keeps SDPA's flash path and spares the model a device sync to find
    out (genome windows of a k-mer tokenizer are never padded)."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    attn = None if batch["attention_mask"].all() else batch["attention_mask"].to(device, non_blocking=True)
    return ids, attn


def evaluate(engine, stream: WindowStream | None, tokenizer, masking, span_k, cfg, rank, step, tb) -> dict:
    """MLM loss and accuracy on the held-out shards. The mask is drawn as at global_step 0 with a fixed
    seed, so evaluations along a run (and across runs) score the same masked positions."""
    if stream is None:
        return {}
    n = min(cfg.eval_batches, stream.plan.batches_per_rank)
    engine.eval()
    stats = torch.zeros(3, device=engine.device)
    batches = stream.batches(0, 0)
    for i in range(n):
        ids, attn = _to_device(next(batches), engine.device)
        masked, labels, _ = apply_masking(ids, cfg=masking, k=span_k, global_step=0, seed=cfg.seed + 7919, rank=rank, micro_step=i, total_steps=cfg.max_steps, vocab_size=tokenizer.vocab_size)
        out = engine(masked, attention_mask=attn, labels=labels)
        stats += torch.stack([out["loss"].float() * out["n_masked"], out["n_masked"].float(), out["n_correct"].float()])
    engine.train()
    torch.distributed.all_reduce(stats)
    result = {"step": step, "eval_loss": (stats[0] / stats[1]).item(), "eval_mlm_accuracy": (stats[2] / stats[1]).item()}
    if rank == 0:
        print(f"eval @ step {step}: loss {result['eval_loss']:.4f} | MLM accuracy {result['eval_mlm_accuracy']:.4f}", flush=True)
        if tb is not None:
            tb.add_scalar("eval/loss", result["eval_loss"], step)
            tb.add_scalar("eval/mlm_accuracy", result["eval_mlm_accuracy"], step)
    return result


def _log_step(engine, stats, window, loss, boundary, step, cfg, accum, world, flops_per_token, peak, tb, bar, batches_consumed, summary):
    tokens_per_s = window["tokens_per_s"] * world
    mfu = tokens_per_s * flops_per_token / (peak * world) if peak else None
    acc = (stats[2] / stats[1].clamp(min=1)).item()
    mask_ratio = stats[3].item() / (accum * world)
    lr = engine.get_lr()[0] if engine.get_lr() else 0.0
    gnorm = engine.get_global_grad_norm()
    gnorm = float(gnorm) if gnorm is not None else float("nan")
    summary["tokens_per_s"] = tokens_per_s
    summary["mfu"] = mfu
    if torch.distributed.get_rank() != 0:
        return
    eta = (cfg.max_steps - step) * window["seconds"] / max(1, window["steps"])
    line = (
        f"step {step}/{cfg.max_steps} | loss {loss:.4f} | mlm acc {acc:.3f} | lr {lr:.2e} | boundary {boundary} | "
        f"mask {mask_ratio:.3f} | {tokens_per_s / 1e3:.1f}k tok/s | MFU {f'{mfu:.1%}' if mfu is not None else 'n/a'} | "
        f"data {window['data_wait_share']:.1%} | gnorm {gnorm:.2f} | pos {batches_consumed} | ETA {format_eta(eta)}"
    )
    (bar.write if bar is not None else print)(line)
    if tb is not None:
        for name, value in (("train/loss", loss), ("train/mlm_accuracy", acc), ("train/lr", lr), ("train/mask_boundary", boundary), ("train/mask_ratio", mask_ratio), ("perf/tokens_per_s", tokens_per_s), ("perf/data_wait_share", window["data_wait_share"]), ("train/grad_norm", gnorm)):
            tb.add_scalar(name, value, step)
        if mfu is not None:
            tb.add_scalar("perf/mfu", mfu, step)


def _metrics_log(path: Path, resume_step: int):
    """One JSON line per step (rank 0). On resume, lines past the checkpoint's step (written after it
    by the interrupted run) are dropped first, so the file reads as one uninterrupted run."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= resume_step]
        path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _tensorboard(save_dir: Path, is_main: bool):
    if not is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(save_dir / "tensorboard"))


def _progress(cfg: TrainConfig, step: int, is_main: bool):
    if not (is_main and cfg.progress):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.max_steps, initial=step, desc="pre-training", unit="step", dynamic_ncols=True, file=sys.stderr)
