"""Pre-training: shards -> tokens -> on-device masking -> BERT -> DeepSpeed (ZeRO, bf16) -> checkpoints.

    trainer = Trainer(cfg, "ds_configs/z2.json")   # set-up: distributed, data, model, engine, resume
    summary = trainer.fit()                         # train_step / evaluate / save until max_steps

Everything random is a function of (seed, global_step, part), part being a micro batch's index within
the global batch (rank x accumulation + micro step): masking through `apply_masking`, dropout by
re-seeding torch before every micro batch, and the data by its position (samples consumed by the run,
megadna.data.order), so a resumed run equals an uninterrupted one, also on another number of ranks. The DeepSpeed JSON owns batch, precision, optimizer, schedule and ZeRO;
`TrainConfig` owns the rest (megadna.train.config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch

from megadna import rundir as ckpt
from megadna.data.demo import build_demo_shards
from megadna.data.mixing import is_mix, parse_mix, source_shares
from megadna.data.remote import as_location
from megadna.data.shards import read_manifest
from megadna.data.stream import StreamConfig, WindowStream, make_loader
from megadna.errors import InputError
from megadna.integrity import weights_only_checkpoint_engine
from megadna.jsonfile import read_json_or_none, write_json
from megadna.masking import apply_masking
from megadna.model import BertForMLM, model_config
from megadna.rundir import RunDir
from megadna.seqlen import parse_schedule, seq_len_at, split_windows
from megadna.tokenizers import get_tokenizer, load_tokenizer
from megadna.tokenizers.kmer import kmer_vocabulary_k
from megadna.train import distributed, elastic
from megadna.train.config import TrainConfig, load_ds_config, precision
from megadna.train.logger import RunLogger, StepResult, Throughput
from megadna.train.metrics import Meter, peak_flops

log = logging.getLogger("megadna.train")

SOURCE_KEY = 1 << 40  # a recorded sample key is source x SOURCE_KEY + its index in the source's manifest
EVAL_SEED_OFFSET = 7919  # held-out masks use seed + this at global_step 0: the same positions every eval


class NonFiniteLoss(RuntimeError):
    pass


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


def _seed_everything(seed: int, step: int, part: int) -> None:
    # Dropout draws from torch's global RNG: re-seeding it from (seed, step, part) before every micro
    # batch makes it a function of the micro batch's place in the run, so a resumed run draws exactly
    # what the uninterrupted one drew, whichever rank holds that micro batch now.
    torch.manual_seed((seed * 1_000_003 + step * 10_007 + part) % (2**63 - 1))


class _Preemption:
    """SIGTERM/SIGINT set a flag; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.requested = False
        self._old = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, h in self._old.items():
            signal.signal(sig, h)


def kmer_basis_k(tokenizer) -> int:
    """The k of --kmer_basis: k-mer tokenizers only (their vocabularies hold the 4^k k-mers in one layout)."""
    k = kmer_vocabulary_k(tokenizer)
    if not k:
        raise InputError(f"--kmer_basis needs a k-mer tokenizer (kmer<k> or nkmer<k>), not {getattr(tokenizer, 'name', tokenizer)!r}")
    return k


@torch.no_grad()
def to_device(batch: dict, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids and attention mask on the device. The mask is dropped when nothing is padded, decided
    on the host copy for free: no mask keeps SDPA's flash path and spares the model a device sync to find
    out (genome windows of a k-mer tokenizer are never padded)."""
    ids = batch["input_ids"].to(device, non_blocking=True)
    attn = None if batch["attention_mask"].all() else batch["attention_mask"].to(device, non_blocking=True)
    return ids, attn


class Trainer:
    """One pre-training run. `__init__` sets up, `fit` runs; `train_step`, `evaluate` and `save` are
    the pieces `fit` calls. Attributes after set-up: engine, tokenizer, stream, val_stream, step,
    samples_consumed (the run's data position), resolved (the config saved beside checkpoints)."""

    def __init__(self, cfg: TrainConfig, ds_config_path: str):
        import deepspeed

        distributed.init()  # deepspeed.init_distributed with a bounded rendezvous and collective timeout
        self.cfg = cfg
        self.rank, self.world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        self.is_main = self.rank == 0
        self.run = RunDir(cfg.save_dir)
        distributed.check_shared_dir(self.run.root, "--save_dir")
        torch.manual_seed(cfg.seed)  # model init: identical on every rank
        self.ds_cfg = load_ds_config(ds_config_path, cfg.max_steps, self.world)
        self.micro = int(self.ds_cfg["train_micro_batch_size_per_gpu"])
        self.accum = int(self.ds_cfg.get("gradient_accumulation_steps", 1))
        self.resume_dir = ckpt.resolve_resume(cfg.resume, self.run.checkpoints)
        self.resume_meta = ckpt.read_meta(self.resume_dir) if self.resume_dir else None
        self._setup_data_and_model()
        if self.resume_dir:
            _check_resumable(self.resume_meta, self.cfg, self.resume_dir, self.mcfg)
        self.load_dir = self._elastic_load_dir()
        model = BertForMLM(self.mcfg)
        self.init_source = self._init_from(model)
        engine_cfg = self.ds_cfg if self.load_dir == self.resume_dir else self.ds_cfg | {"checkpoint": {**self.ds_cfg.get("checkpoint", {}), "load_universal": True}}
        self.engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=engine_cfg)
        self.device = self.engine.device
        self.step, self.samples_consumed, self.order_batch = self._load_resume_state()
        self._setup_streams()
        self.resolved = self._resolved_config()
        if self.is_main:
            self.run.root.mkdir(parents=True, exist_ok=True)
            print("resolved config:\n" + json.dumps(self.resolved, indent=1), flush=True)
            write_json(self.run.config, self.resolved)
            if self.resume_dir:
                print(f"resuming from {self.resume_dir} at global_step {self.step} (samples consumed: {self.samples_consumed}, "
                      f"world size {self.resume_meta.get('world_size')} -> {self.world})", flush=True)

    # -- set-up ------------------------------------------------------------------------------------

    def _setup_data_and_model(self) -> None:
        """Shards, tokenizer, model shape, sequence length and masking; checked equal on every rank."""
        cfg = self.cfg
        # One shard set (a directory or a URL form), or a weighted mixture of several (megadna.data.mixing).
        self.sources = parse_mix(cfg.data) if is_mix(cfg.data) else None
        self.data_dir = cfg.data if self.sources else as_location(cfg.data) if cfg.data else self._demo_data()
        manifests = {s.name: read_manifest(as_location(s.location)) for s in self.sources} if self.sources else {"data": read_manifest(self.data_dir)}
        self.manifest = next(iter(manifests.values()))  # window length: every source has the same (WindowStream checks)
        distributed.check_consistent(manifests, "data manifest", hint=f"{self.data_dir} differs between nodes: give every node the same shards (tools/make_shards.py --verify)")
        # On resume the tokenizer comes from the checkpoint (a BPE directory may have moved since).
        self.tokenizer = load_tokenizer(self.resume_dir / ckpt.TOKENIZER_DIR) if self.resume_dir else get_tokenizer(cfg.tokenizer)
        self.mcfg = model_config(cfg.model, vocab_size=self.tokenizer.vocab_size, kmer_basis=kmer_basis_k(self.tokenizer) if cfg.kmer_basis else 0)
        self.max_tokens = sequence_tokens(self.tokenizer, self.manifest["window_config"]["window"], self.mcfg.max_position_embeddings, cfg.max_tokens)
        self.masking = cfg.masking_config()
        self.seq_stages = parse_schedule(cfg.seq_len_schedule)
        # A span of m tokens hides m - k + 1 bases only for overlapping k-mers; other tokenizers span from 1.
        self.span_k = self.tokenizer.k if self.tokenizer.overlapping else 1
        distributed.check_consistent(
            {"train": dataclasses.asdict(cfg), "deepspeed": self.ds_cfg, "tokenizer": self.tokenizer.to_dict() | {"vocab": self.tokenizer.vocab},
             "model": self.mcfg.to_dict(), "max_tokens": self.max_tokens, "world_size": self.world, "resume": self.resume_meta},
            "resolved config", hint="launch every node with the same arguments, DeepSpeed config, tokenizer and --save_dir",
        )

    def _elastic_load_dir(self) -> Path | None:
        """Where the engine state is loaded from: the checkpoint itself, or (resuming on another world
        size with ZeRO-1/2) its universal copy, which rank 0 makes once (megadna.train.elastic)."""
        if not self.resume_dir:
            return None
        if not elastic.needs_universal(self.resume_meta, self.world, self.ds_cfg, self.resume_dir):
            return self.resume_dir
        distributed.on_main(lambda: elastic.universal_copy(self.resume_dir, self.resume_meta, self.run.universal),
                            f"converting {self.resume_dir} to a universal checkpoint")
        return elastic.universal_dir(self.resume_dir, self.run.universal)

    def _init_from(self, model: BertForMLM) -> dict | None:
        """--init_from: the source's weights into the new model (a resumed run has its own weights)."""
        if not self.cfg.init_from or self.resume_dir:
            return None
        from megadna.model.init_from import init_state

        state, source = init_state(self.cfg.init_from, self.tokenizer, self.mcfg)
        model.load_state_dict(state, strict=True)
        if self.is_main:
            log.info("weights from %s (%s%s)", source["path"], source["kind"], ", rows remapped by token" if source["remapped_by_token"] else "")
        return source

    def _demo_data(self) -> Path:
        """Rank 0 builds the demo shards once; the others wait for them."""
        if self.is_main:
            build_demo_shards(self.run.demo_data)
        torch.distributed.barrier()
        return self.run.demo_data / "shards"

    def _load_resume_state(self) -> tuple[int, int, int]:
        """(global_step, samples consumed, order batch): a new run starts at 0 with its own global batch
        fixing the order; a resume continues the checkpoint's."""
        if not self.resume_dir:
            return 0, 0, self.world * self.accum * self.micro
        meta, d = self.resume_meta, self.resume_dir
        # Every rank checks every file's recorded size and sha256 (ckpt.resolve_resume did it before the
        # tokenizer was read; --resume auto and --resume DIR alike), then loads with weights_only=True.
        if ckpt.FILES not in meta:
            log.warning("%s: written before megadna recorded checkpoint file hashes; its files are loaded unverified (weights-only)", d)
        with elastic.weights_only_loads() if self.load_dir != d else contextlib.nullcontext():
            client = _load_weights_only(self.engine, self.load_dir)
        _check_loaded_state(self.engine, client, meta, self.load_dir)
        return meta["global_step"], meta["samples_consumed"], meta["order_batch"]

    def _setup_streams(self) -> None:
        cfg = self.cfg
        stream_cfg = StreamConfig(split="train", micro_batch=self.micro, accum=self.accum, order_batch=self.order_batch, num_workers=cfg.num_workers,
                                  seed=cfg.seed, reverse_complement=cfg.reverse_complement)
        common = dict(rank=self.rank, world_size=self.world, tokenizer=self.tokenizer, max_tokens=self.max_tokens)
        data = self.sources or self.data_dir
        self.stream = WindowStream(data, stream_cfg, start_sample=self.samples_consumed, **common)
        # The held-out stream is built once; each evaluation restarts it at its first batch.
        self.val_stream = None
        if self.stream.manifest_has_val:
            # Its order is fixed by the micro batch (rounds of one micro batch; a mix: of the run's global batch,
            # which gives every source its quota), not by the world size, so a small held-out split suffices.
            val_order = self.order_batch if self.sources else self.micro
            self.val_stream = WindowStream(data, StreamConfig(split="val", micro_batch=self.micro, order_batch=val_order, num_workers=0, seed=cfg.seed,
                                                              shuffle=False), **common)
        elif self.sources and self.is_main:
            log.warning("held-out evaluation is off: not every source of the mix has val shards")

    def source_windows(self) -> dict[str, int]:
        """Windows of each source the run (all ranks) has consumed since step 0."""
        return {s.name: int(n) for s, n in zip(self.sources, self.stream.source_counts(self.samples_consumed))}

    def _resolved_config(self) -> dict:
        return {
            "train": dataclasses.asdict(self.cfg) | {"data": str(self.data_dir)},
            "masking": self.masking.to_dict(),
            "model": self.mcfg.to_dict(),
            "tokenizer": self.tokenizer.to_dict(),
            "deepspeed": self.ds_cfg,
            "world_size": self.world,
            "max_tokens": self.max_tokens,
            # Where the first weights came from; a resumed run keeps what its checkpoint recorded.
            "init_from": (read_json_or_none(self.resume_dir / ckpt.CONFIG) or {}).get("init_from") if self.resume_dir else self.init_source,
            "data_manifest": {k: self.manifest[k] for k in ("window_config", "totals")} if not self.sources else
                             {s.name: {k: st.manifest[k] for k in ("window_config", "totals")} for s, st in zip(self.sources, self.stream.sets)},
            "data_mix": [dataclasses.asdict(src) for src in self.sources] if self.sources else None,
            "data_order": {"order_batch": self.order_batch, "quotas": self.stream.quotas, "lanes": [st.order.lanes for st in self.stream.sets]},
        }

    # -- the loop ----------------------------------------------------------------------------------

    def fit(self) -> dict:
        """Train from the current step to max_steps (or stop_at_step); returns the run's summary."""
        cfg = self.cfg
        end_step = min(cfg.max_steps, cfg.stop_at_step) if cfg.stop_at_step else cfg.max_steps
        self.logger = RunLogger(self.run, self.step, cfg.max_steps, self.is_main, cfg.progress)
        self.meter, self.preempt = Meter(), _Preemption()
        self.loader = iter(make_loader(self.stream, pin_memory=self.device.type == "cuda"))
        self.peak = peak_flops(torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu", precision(self.ds_cfg))
        summary, losses = {"start_step": self.step}, []
        try:
            while self.step < end_step:
                r = self.train_step()
                losses.append(r.loss)
                self.logger.record(r)
                if self.step % cfg.log_interval == 0 or self.step == cfg.max_steps:
                    summary.update(self._log(r))
                if cfg.eval_interval and self.step % cfg.eval_interval == 0 and self.step < cfg.max_steps:
                    summary["eval"] = self.evaluate()
                if r.stop_requested:
                    log.warning("preemption signal: saving at global_step %d and exiting", self.step)
                    self.save()
                    summary["preempted"] = True
                    break
                if self.step % cfg.save_interval == 0 or self.step == end_step:
                    self.save()
            if not summary.get("preempted") and self.step == cfg.max_steps:
                summary["eval"] = self.evaluate()
        finally:
            self.close()
        summary.update(final_step=self.step, losses=losses, samples_consumed=self.samples_consumed)
        if self.sources:  # the run's windows per source since step 0
            summary["source_windows"] = self.source_windows()
            summary["source_shares"] = source_shares(summary["source_windows"])
        if self.device.type == "cuda":
            summary["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if self.is_main:
            write_json(self.run.summary, {k: v for k, v in summary.items() if k != "losses"} | {"last_losses": losses[-10:]})
        return summary

    def train_step(self) -> StepResult:
        """One optimizer step over `accum` micro batches. One all_reduce per step carries the logged
        figures and the stop flag, so every rank takes the same decision (a rank that stopped alone
        would hang the others)."""
        cfg, step = self.cfg, self.step
        sums = {"loss": 0.0, "n_masked": 0, "n_correct": 0, "mask_ratio": 0.0}
        totals = torch.zeros(len(sums) + 1, device=self.device)
        seq_len = seq_len_at(self.seq_stages, step, cfg.max_steps, self.max_tokens)
        seen = []  # --record_samples: this rank's sample keys of the step
        for micro_step in range(self.accum):
            t0 = time.perf_counter()
            batch = next(self.loader)
            self.meter.data_wait += time.perf_counter() - t0
            part = int(batch["part"])  # rank x accum + micro_step: this micro batch's place in the global batch
            if cfg.record_samples:
                seen.append(torch.as_tensor(batch["sources"]) * SOURCE_KEY + torch.as_tensor(batch["sample_ids"]))
            _seed_everything(cfg.seed, step, part)
            ids, attn = split_windows(*to_device(batch, self.device), seq_len)
            masked, labels, mstats = apply_masking(
                ids, cfg=self.masking, k=self.span_k, global_step=step, seed=cfg.seed, rank=0, micro_step=part,
                total_steps=cfg.max_steps, vocab_size=self.tokenizer.vocab_size,
            )
            out = self.engine(masked, attention_mask=attn, labels=labels)
            self.engine.backward(out["loss"])
            totals[:4] += torch.stack([out["loss"].detach().float(), out["n_masked"].float(), out["n_correct"].float(), mstats["mask_ratio"].float()])
            self.meter.tokens += ids.numel()  # padded positions are computed, so they count
            if micro_step == self.accum - 1:
                totals[4] = float(self.preempt.requested)
                torch.distributed.all_reduce(totals)
                loss_sum, n_masked, n_correct, ratio_sum, stops = totals.tolist()
                loss = loss_sum / (self.accum * self.world)
                if not math.isfinite(loss):
                    raise NonFiniteLoss(f"loss is {loss} at global_step {step}; weights were not updated by this step and the last complete checkpoint is intact")
            self.engine.step()
        self.step += 1
        self.samples_consumed += self.accum * self.micro * self.world
        self.meter.steps += 1
        lrs = self.engine.get_lr()
        lr = lrs[0] if lrs else 0.0
        return StepResult(step=self.step, loss=loss, mlm_accuracy=n_correct / max(n_masked, 1), mask_ratio=ratio_sum / (self.accum * self.world),
                          mask_boundary=int(mstats["mask_boundary"]), seq_len=seq_len, lr=lr, stop_requested=stops > 0,
                          samples=self._gather_samples(torch.cat(seen)) if cfg.record_samples else None)

    def _gather_samples(self, local: torch.Tensor) -> list[int]:
        """The step's sample keys (source x SOURCE_KEY + sample id) from every rank, in global batch order."""
        parts = [torch.empty_like(local) for _ in range(self.world)]
        torch.distributed.all_gather(parts, local.to(self.device))
        return torch.cat(parts).tolist()

    def _log(self, r: StepResult) -> dict:
        window = self.meter.window()
        tokens_per_s = window["tokens_per_s"] * self.world
        # FLOPs per token at the length being trained: pieces of the curriculum attend over fewer tokens.
        flops_per_token = self.engine.module.flops_per_token(r.seq_len)
        mfu = tokens_per_s * flops_per_token / (self.peak * self.world) if self.peak else None
        gnorm = self.engine.get_global_grad_norm()
        t = Throughput(tokens_per_s=tokens_per_s, mfu=mfu, data_wait_share=window["data_wait_share"],
                       seconds_per_step=window["seconds"] / max(1, window["steps"]), grad_norm=float(gnorm) if gnorm is not None else float("nan"))
        self.logger.log(r, t, self.samples_consumed)
        if self.sources and self.is_main:
            windows = self.source_windows()
            shares = source_shares(windows)
            log.info("data mix at step %d (windows of the run): %s", r.step, ", ".join(
                f"{s.name} {shares[s.name]:.3f} ({windows[s.name]}; weight {s.weight:g})" for s in self.sources))
        return {"tokens_per_s": tokens_per_s, "mfu": mfu}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """MLM loss and accuracy on the first eval_batches x order_batch held-out windows (at most one epoch
        of them), micro batch j read by rank j mod world. Each micro batch's mask is drawn as at
        global_step 0 with a fixed seed and keyed by j, so evaluations along a run (and across runs, and
        across a resume on another world size with the same micro batch) score the same masked positions."""
        if self.val_stream is None:
            return {}
        n = min(self.cfg.eval_batches * self.order_batch, self.val_stream.epoch_samples) // self.micro
        # At the length being trained: pieces of the held-out windows while a stage of the sequence-length
        # curriculum lasts (a model of 34-token pieces has never seen position 35), whole windows after it.
        seq_len = seq_len_at(self.seq_stages, max(self.step - 1, 0), self.cfg.max_steps, self.max_tokens)
        self.engine.eval()
        totals = torch.zeros(3, device=self.device)  # loss x masked, masked, correct
        batches = self.val_stream.batches()  # micro batch k of this rank is micro batch j = k x world + rank of the held-out order
        # Every rank runs the same number of forward passes (ZeRO-3's forward is a collective); a pass
        # past the n micro batches counts for nothing.
        for j in range(self.rank, -(-n // self.world) * self.world, self.world):
            ids, attn = split_windows(*to_device(next(batches), self.device), seq_len)
            masked, labels, _ = apply_masking(ids, cfg=self.masking, k=self.span_k, global_step=0, seed=self.cfg.seed + EVAL_SEED_OFFSET, rank=0,
                                              micro_step=j, total_steps=self.cfg.max_steps, vocab_size=self.tokenizer.vocab_size)
            out = self.engine(masked, attention_mask=attn, labels=labels)
            if j < n:
                totals += torch.stack([out["loss"].float() * out["n_masked"], out["n_masked"].float(), out["n_correct"].float()])
        self.engine.train()
        torch.distributed.all_reduce(totals)
        loss_x_masked, n_masked, n_correct = totals.tolist()
        result = {"step": self.step, "seq_len": seq_len, "eval_loss": loss_x_masked / n_masked, "eval_mlm_accuracy": n_correct / n_masked}
        self.logger.eval(result)
        return result

    def save(self) -> Path:
        """Every rank writes its part through DeepSpeed; rank 0 marks the checkpoint complete last."""
        d = self.run.checkpoint(self.step)
        weights = distributed.check_replicas(self.engine.module)  # every rank holds the same weights, or stop before saving
        self.engine.save_checkpoint(str(self.run.checkpoints), tag=d.name, client_state={"global_step": self.step, "samples_consumed": self.samples_consumed, **elastic.UNIVERSAL_INFO})
        torch.distributed.barrier()  # every rank's shard of the state is on disk before the marker
        if self.is_main:
            self.tokenizer.save(d / ckpt.TOKENIZER_DIR)
            write_json(d / ckpt.CONFIG, self.resolved)
            ckpt.write_meta(d, {
                "global_step": self.step, "samples_consumed": self.samples_consumed, "order_batch": self.order_batch, "world_size": self.world,
                "num_workers": self.cfg.num_workers, "micro_batch": self.micro, "accum": self.accum, "seed": self.cfg.seed, "tokenizer": self.tokenizer.to_dict(), "model": self.resolved["model"], "weights_sha256": weights,
            })
            ckpt.prune(self.run.checkpoints, self.cfg.keep_last)
        torch.distributed.barrier()
        return d

    def close(self) -> None:
        # The loader's worker processes ignore SIGTERM: end them here (bounded join, then SIGKILL), not at
        # interpreter exit, where multiprocessing would join them forever and the rank would never exit.
        loader, self.loader = self.loader, None
        try:
            loader.close()
        finally:
            self.preempt.restore()
            self.logger.close()


def _check_resumable(meta: dict, cfg: TrainConfig, resume_dir: Path, mcfg) -> None:
    """The world size, workers, micro batch and accumulation may change on resume (the order is global);
    the seed, the data mix, the model's shape and the sequence-length curriculum may not: refuse those."""
    if "samples_consumed" not in meta:
        raise InputError(f"{resume_dir}: written before megadna's global sample order (it records batches per rank, not samples "
                         "consumed), so its data position cannot be continued. Start a new run from its weights: --init_from "
                         f"{resume_dir} --resume none --save_dir NEW_DIR")
    diff = {"seed": (meta.get("seed"), cfg.seed)} if meta.get("seed") != cfg.seed else {}
    # The model's shape (a k-mer basis or not) and the curricula of the step must match too; a checkpoint
    # from before these existed had neither.
    if (meta.get("model") or {}).get("kmer_basis", 0) != mcfg.kmer_basis:
        diff["kmer_basis (k)"] = ((meta.get("model") or {}).get("kmer_basis", 0), mcfg.kmer_basis)
    saved = read_json_or_none(resume_dir / ckpt.CONFIG) or {}
    mix = [(m["name"], m["weight"]) for m in saved.get("data_mix") or []]
    now = [(src.name, src.weight) for src in parse_mix(cfg.data)] if is_mix(cfg.data) else []
    if mix != now:  # each source's quota in a global batch comes from the weights and their order
        diff["data mix (name, weight)"] = (mix or "(one shard set)", now or "(one shard set)")
    schedule = (saved.get("train") or {}).get("seq_len_schedule", "")
    if parse_schedule(schedule) != parse_schedule(cfg.seq_len_schedule):
        diff["seq_len_schedule"] = (schedule or "(none)", cfg.seq_len_schedule or "(none)")
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a}, now {b}" for k, (a, b) in diff.items())
        raise InputError(
            f"{resume_dir}: cannot resume exactly ({detail}). Resume with the same settings, or start a new run from its "
            f"weights (--init_from {resume_dir} --resume none, a new --save_dir)."
        )


def _load_weights_only(engine, d: Path) -> dict:
    """engine.load_checkpoint with DeepSpeed's loads made torch.load(weights_only=True) + the allow-list
    of its plain data classes (megadna.integrity): a file holding anything else is refused, not run."""
    real = engine.checkpoint_engine
    engine.checkpoint_engine = weights_only_checkpoint_engine(engine._config)
    try:
        _, client = engine.load_checkpoint(str(d.parent), tag=d.name, load_optimizer_states=True, load_lr_scheduler_states=True)
    finally:
        engine.checkpoint_engine = real  # saves go through the engine DeepSpeed configured
    if client is None:
        raise InputError(f"{d}: DeepSpeed could not load this checkpoint (no *_model_states.pt); resume from another one")
    return client


def _check_loaded_state(engine, client: dict, meta: dict, d: Path) -> None:
    """What was loaded must be what megadna.json says was saved: the step and data position in
    DeepSpeed's client state, the engine's own step counter, and the weights' sha256."""
    want = {"global_step": meta["global_step"], "samples_consumed": meta.get("samples_consumed")}
    got = {"global_step": client.get("global_step"), "samples_consumed": client.get("samples_consumed")}
    diff = [f"{k} {got[k]} in DeepSpeed's client state vs {want[k]} in {ckpt.META}" for k in want if got[k] != want[k]]
    if engine.global_steps != meta["global_step"]:
        diff.append(f"DeepSpeed's own global_steps {engine.global_steps} vs global_step {meta['global_step']} in {ckpt.META}")
    if not diff:
        recorded = meta.get("weights_sha256")
        loaded = distributed.check_replicas(engine.module)  # collective: every rank takes part
        if recorded is not None and loaded is not None and loaded != recorded:
            diff.append(f"the loaded weights' sha256 {loaded[:16]}... vs weights_sha256 {str(recorded)[:16]}... in {ckpt.META}")
    if diff:
        raise InputError(f"{d}: the checkpoint contradicts itself ({'; '.join(diff)}): it was edited or mixed from "
                         f"different saves. Resume from another checkpoint (--resume {d.parent}/stepNNNNNNNN) or delete {d}")


def train(cfg: TrainConfig, ds_config_path: str) -> dict:
    """Run (or resume) pre-training. Returns a summary dict (final step, losses, eval, throughput)."""
    return Trainer(cfg, ds_config_path).fit()
