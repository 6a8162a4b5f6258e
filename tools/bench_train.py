"""Training benchmarks: megadna's BERT vs Hugging Face's, the DeepSpeed loop vs a bare loop, masking's share.

    # 5. BertForMLM vs transformers BertForMaskedLM (sdpa): full fwd + bwd + AdamW step, interleaved
    python tools/bench_train.py mlm --preset tiny --batch 8 --seq 512
    python tools/bench_train.py mlm --preset small --batch 8 --seq 512 --split   # --split: encoder vs head cost
    python tools/bench_train.py mlm --preset dnabert-base --batch 1 --seq 512 --repeats 3 --steps 1 --warmup 1
    python tools/bench_train.py mlm --preset tiny --dtype bf16        # bf16 is emulated on this CPU: ~3 min
    # 6. megadna.train.train (DeepSpeed, ZeRO-2, one in-process rank) vs a bare PyTorch loop
    python tools/bench_train.py loop --preset tiny --repeats 5
    # 7. apply_masking's share of a training step (small preset, RandomMask, last phase)
    python tools/bench_train.py masking --preset small
    # 8. on a GPU: tokens/s and MFU of dnabert-base in bf16 (and HF's, interleaved); masking's share there
    python tools/bench_train.py mlm --device cuda --dtype bf16 --preset dnabert-base --batch 64 --seq 512 --steps 10 --warmup 5
    python tools/bench_train.py masking --device cuda --dtype bf16 --preset dnabert-base --batch 64 --masking_steps 50

Every ratio is taken in one process, the two sides interleaved (megadna.experiments.bench.interleave), as the
median over repeats. CPU runs use --threads intra-op threads (default 1) for both sides alike.
Results and the machine they came from: docs/BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from megadna.cli.args import parser
from megadna.errors import InputError
from megadna.experiments.bench import interleave, machine, markdown_table, median, median_ratio, verdict
from megadna.masking import MaskingConfig, apply_masking
from megadna.model import BertForMLM, model_config
from megadna.train.metrics import peak_flops

VOCAB = 4101  # kmer6: 5 specials + 4^6 k-mers


def _setup(args) -> torch.device:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    return device


def _sync(device):
    return torch.cuda.synchronize if device.type == "cuda" else None


def _batches(n: int, batch: int, seq: int, vocab: int, device, seed: int = 0):
    """n (masked ids, attention mask, labels) of random k-mer ids, BERT 15% masking (80/10/10)."""
    g = torch.Generator().manual_seed(seed)
    cfg = MaskingConfig(policy="bert", mask_ratio=0.15)
    out = []
    for i in range(n):
        ids = torch.randint(5, vocab, (batch, seq), generator=g)
        ids[:, 0], ids[:, -1] = 2, 3  # [CLS], [SEP]
        masked, labels, _ = apply_masking(ids, cfg=cfg, k=1, global_step=i, seed=seed, rank=0, total_steps=None, vocab_size=vocab)
        out.append((masked.to(device), torch.ones_like(ids).to(device), labels.to(device)))
    return out


# --------------------------------------------------------------------------------------------------
# 5 and 8: BertForMLM vs BertForMaskedLM
# --------------------------------------------------------------------------------------------------


def bench_mlm(args) -> dict:
    """Same weights, same batches, same dtype, same optimizer; fwd + bwd + AdamW step per iteration.
    Ours runs the MLM head on the masked positions only; HF computes every position's logits and a
    cross-entropy with -100 labels. Both get the all-ones attention mask the trainer passes."""
    from transformers import BertForMaskedLM

    device = _setup(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    cfg = model_config(args.preset, vocab_size=VOCAB)
    ours = BertForMLM(cfg)
    hf = BertForMaskedLM._from_config(cfg.to_hf_config(), attn_implementation="sdpa")
    hf.load_state_dict(ours.state_dict(), strict=True)
    models = {"megadna": ours.to(device, dtype).train(), "hf": hf.to(device, dtype).train()}
    # bf16 here means bf16 weights, as DeepSpeed's bf16 mode computes (its fp32 master copy is left out).
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=device.type == "cuda") for k, m in models.items()}
    batches = _batches(4, args.batch, args.seq, VOCAB, device)
    tokens = args.batch * args.seq
    realised = median(float((b[2] != -100).float().mean()) for b in batches)

    def step(name, i):
        ids, attn, labels = batches[i % len(batches)]
        opts[name].zero_grad(set_to_none=True)
        if name == "megadna":
            loss = models[name](ids, attention_mask=attn, labels=labels)["loss"]
        else:
            loss = models[name](input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opts[name].step()

    def case(name):
        def run():
            for i in range(args.steps):
                step(name, i)
            return tokens * args.steps
        return run

    for name in models:  # warm-up (allocator, kernels), not timed
        for i in range(args.warmup):
            step(name, i)
    t = interleave({name: case(name) for name in models}, args.repeats, sync=_sync(device))
    tps = {k: median(x.per_wall_s for x in v) for k, v in t.items()}
    flops = {"megadna": ours.flops_per_token(args.seq, realised), "hf": ours.flops_per_token(args.seq, 1.0)}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = peak_flops(dev_name, args.dtype)
    out = {
        "preset": args.preset, "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "device": dev_name,
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "tokens_per_s": tps, "speedup": median_ratio(t["megadna"], t["hf"]),
        "speedup_per_repeat": [x.per_wall_s / y.per_wall_s for x, y in zip(t["megadna"], t["hf"])],
        # On a CPU with one intra-op thread, CPU time is the work itself, unaffected by how much of the
        # (shared) machine the process got: the robust ratio there. On a GPU only wall time means anything.
        "cpu_speedup": median_ratio(t["megadna"], t["hf"], cpu=True) if device.type == "cpu" else None,
        "cpu_speedup_per_repeat": [x.per_cpu_s / y.per_cpu_s for x, y in zip(t["megadna"], t["hf"])] if device.type == "cpu" else None,
        "flop_ratio_ceiling": flops["hf"] / flops["megadna"],
        "flops_per_token": flops, "realised_mask_ratio": realised,
        "achieved_tflops": {k: tps[k] * flops[k] / 1e12 for k in tps},
    }
    if peak:
        out["peak_tflops"] = peak / 1e12
        out["mfu"] = {k: tps[k] * flops[k] / peak for k in tps}  # each model's own FLOPs (HF: full head)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    if args.split:
        out["split_s"] = _split(models, batches[0], args.repeats, device)
    return out


def _split(models, batch, repeats, device) -> dict:
    """Seconds of one forward + backward (no optimizer) of the encoder alone and of the whole model
    with its loss, per side, interleaved: how much of the step the head and loss are. CPU seconds on
    a CPU (one thread: the work itself), wall seconds on a GPU."""
    ids, attn, labels = batch
    ours, hf = models["megadna"], models["hf"]

    def fwd_bwd(loss_fn):
        def run():
            loss_fn().backward()
            return 1
        return run

    cases = {
        "megadna encoder": fwd_bwd(lambda: ours.bert(ids, attn).float().pow(2).mean()),
        "megadna encoder + head + loss": fwd_bwd(lambda: ours(ids, attention_mask=attn, labels=labels)["loss"]),
        "hf encoder": fwd_bwd(lambda: hf.bert(input_ids=ids, attention_mask=attn).last_hidden_state.float().pow(2).mean()),
        "hf encoder + head + loss": fwd_bwd(lambda: hf(input_ids=ids, attention_mask=attn, labels=labels).loss),
    }
    for run in cases.values():  # warm-up
        run()
    t = interleave(cases, repeats, sync=_sync(device))
    return {k: median(x.cpu_s if device.type == "cpu" else x.wall_s for x in v) for k, v in t.items()}


def print_mlm(r: dict) -> None:
    rows = [{"model": k, "tokens/s": f"{v:,.0f}", "model TFLOP/s": f"{r['achieved_tflops'][k]:.3f}", "MFU": f"{r['mfu'][k]:.1%}" if "mfu" in r else "n/a"} for k, v in r["tokens_per_s"].items()]
    print(markdown_table(rows))
    print(f"\n{r['preset']}, batch {r['batch']} x {r['seq']} tokens, {r['dtype']} on {r['device']} ({r['threads']} threads): "
          f"megadna / HF = {r['speedup']:.2f}x wall (median; per repeat {', '.join(f'{x:.2f}' for x in r['speedup_per_repeat'])}); "
          f"FLOP-count ceiling {r['flop_ratio_ceiling']:.2f}x; target >= 1.5x: {verdict(r['speedup'], 1.5)} (wall)")
    if r["cpu_speedup"] is not None:
        print(f"per CPU second: {r['cpu_speedup']:.2f}x (per repeat {', '.join(f'{x:.2f}' for x in r['cpu_speedup_per_repeat'])}); "
              f"target >= 1.5x: {verdict(r['cpu_speedup'], 1.5)} (CPU)")
    if "split_s" in r:
        sp = r["split_s"]
        print(markdown_table([{"forward + backward": k, "seconds": f"{v:.3f}"} for k, v in sp.items()]))
        print(f"with a free head and loss, megadna / HF could reach at most {sp['hf encoder + head + loss'] / sp['megadna encoder']:.2f}x on this shape")
    if "mfu" in r:
        print(f"MFU (megadna, vs the dense {r['peak_tflops']:.0f} TFLOP/s peak): {r['mfu']['megadna']:.1%}; target >= 50%: {verdict(r['mfu']['megadna'], 0.5)}")


# --------------------------------------------------------------------------------------------------
# 6: the DeepSpeed trainer vs a bare loop
# --------------------------------------------------------------------------------------------------


def _single_rank_env():
    """One rank in this process: what the deepspeed launcher would set (as tests/test_train.py does)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(k, v)


def _make_shards(fasta: Path, out: Path) -> Path:
    from megadna.data.genome import WindowConfig
    from megadna.data.shard_writer import ShardConfig, write_shards

    write_shards([fasta], out, WindowConfig(window=510, stride=510, val_fraction=0.05), ShardConfig(samples_per_shard=1000))
    return out


def bench_loop(args) -> dict:
    """tokens/s of megadna.train.train vs a bare loop over the same stream, masking, model, AdamW and
    clipping. Both count micro_batch x max_tokens per step and time the steps after the first
    `--loop_warmup` (DeepSpeed's first log window holds its start-up; the bare loop skips the same)."""
    import megadna.train.trainer as trainer_module  # train() builds its Meter from this module's name
    from megadna.data.stream import StreamConfig, WindowStream, make_loader
    from megadna.paths import shared_data_dir
    from megadna.tokenizers import get_tokenizer
    from megadna.train import TrainConfig, load_ds_config, sequence_tokens, train
    from megadna.train.metrics import Meter

    _setup(args)
    _single_rank_env()
    root = Path(__file__).resolve().parents[1]
    ds_path = str(root / "ds_configs" / args.ds_config)
    tmp = Path(tempfile.mkdtemp(prefix="bench_loop_"))
    fasta = args.fasta or (shared_data_dir() or Path(".")) / "genomes" / "GCF_000005845.2_ASM584v2_genomic.fna.gz"
    shards = _make_shards(fasta, tmp / "shards")
    warm, total = args.loop_warmup, args.loop_warmup + args.loop_steps
    ds_cfg = load_ds_config(ds_path, total)
    micro = ds_cfg["train_micro_batch_size_per_gpu"]
    opt_params = ds_cfg["optimizer"]["params"]
    clip = ds_cfg.get("gradient_clipping", 0.0)
    tok = get_tokenizer("kmer6")
    mcfg = model_config(args.preset, vocab_size=tok.vocab_size)
    max_tokens = sequence_tokens(tok, 510, mcfg.max_position_embeddings, 0)
    masking = MaskingConfig(policy="randommask")
    runs = {"n": 0}
    windows = []

    class CpuMeter(Meter):
        """The trainer's own Meter, also reading this process's CPU clock over each log window."""

        def reset(self):
            super().reset()
            self.c0 = time.process_time()

        def window(self):
            cpu, tokens, wait = time.process_time() - self.c0, self.tokens, self.data_wait
            out = super().window()
            windows.append({"tokens": tokens, "cpu_s": cpu, "wall_s": out["seconds"], "data_wait_s": wait})
            return out

    trainer_module.Meter = CpuMeter  # train() builds its meter from this name

    def trainer():
        runs["n"] += 1
        cfg = TrainConfig(data=str(shards), model=args.preset, max_steps=total, log_interval=args.loop_steps, save_interval=total,
                          eval_interval=0, eval_batches=1, num_workers=1, progress=False, resume="none", save_dir=str(tmp / f"ds{runs['n']}"))
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):  # the resolved-config dump and log lines
            summary = train(cfg, ds_path)
        assert summary["final_step"] == total
        runs["ds_wall"] = time.perf_counter() - t0
        last = windows[-1]  # the last log window: steps warm+1 .. total
        assert math.isclose(last["tokens"] / last["wall_s"], summary["tokens_per_s"])
        return summary["tokens_per_s"], last["tokens"] / last["cpu_s"], last["data_wait_s"] / last["wall_s"]

    def bare():
        torch.manual_seed(0)
        model = BertForMLM(mcfg).train()
        opt = torch.optim.AdamW(model.parameters(), lr=opt_params["lr"], betas=tuple(opt_params["betas"]), eps=opt_params["eps"], weight_decay=opt_params["weight_decay"])
        warmup = max(1, round(0.05 * total))  # WarmupDecayLR, linear, as "auto" resolves it
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
        stream = WindowStream(shards, StreamConfig(split="train", micro_batch=micro, num_workers=1, seed=0, reverse_complement=0.5), tokenizer=tok, max_tokens=max_tokens)
        loader = iter(make_loader(stream))
        n_tokens = 0
        for step in range(total):
            if step == warm:
                t0, c0, n_tokens, wait = time.perf_counter(), time.process_time(), 0, 0.0
            tw = time.perf_counter()
            batch = next(loader)
            if step >= warm:
                wait += time.perf_counter() - tw
            ids, attn = batch["input_ids"], batch["attention_mask"]
            masked, labels, _ = apply_masking(ids, cfg=masking, k=tok.k, global_step=step, seed=0, rank=0, total_steps=total, vocab_size=tok.vocab_size)
            out = model(masked, attention_mask=attn, labels=labels)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            sched.step()
            float(out["loss"].detach())  # a loop logs its loss: one host read per step, as the trainer's
            n_tokens += attn.numel()
        wall = time.perf_counter() - t0
        return n_tokens / wall, n_tokens / (time.process_time() - c0), wait / wall

    rates = {"deepspeed": [], "bare": []}  # (tokens per wall s, tokens per CPU s of this process, data-wait share)
    try:
        for r in range(args.repeats):
            for name in (("deepspeed", "bare") if r % 2 == 0 else ("bare", "deepspeed")):
                rates[name].append(trainer() if name == "deepspeed" else bare())
    finally:
        trainer_module.Meter = Meter
        shutil.rmtree(tmp, ignore_errors=True)
    wall = [a[0] / b[0] for a, b in zip(rates["deepspeed"], rates["bare"])]
    cpu = [a[1] / b[1] for a, b in zip(rates["deepspeed"], rates["bare"])]
    return {"preset": args.preset, "ds_config": args.ds_config, "micro_batch": micro, "max_tokens": max_tokens, "threads": torch.get_num_threads(),
            "warmup_steps": warm, "timed_steps": args.loop_steps,
            "tokens_per_s": {k: median(x[0] for x in v) for k, v in rates.items()},
            "tokens_per_cpu_s": {k: median(x[1] for x in v) for k, v in rates.items()},
            "data_wait_share": {k: median(x[2] for x in v) for k, v in rates.items()},
            "per_repeat": rates, "ratio": median(wall), "ratio_per_repeat": wall, "cpu_ratio": median(cpu), "cpu_ratio_per_repeat": cpu,
            "trainer_run_wall_s": runs.get("ds_wall")}


def print_loop(r: dict) -> None:
    print(markdown_table([{"loop": k, "tokens/s (median)": f"{v:,.0f}", "tokens per CPU s": f"{r['tokens_per_cpu_s'][k]:,.0f}", "data wait": f"{r['data_wait_share'][k]:.1%}",
                           "per repeat (wall)": ", ".join(f"{x[0]:,.0f}" for x in r["per_repeat"][k])} for k, v in r["tokens_per_s"].items()]))
    print(f"\n{r['preset']}, {r['ds_config']}, micro batch {r['micro_batch']} x {r['max_tokens']} tokens, {r['threads']} threads, "
          f"steps {r['warmup_steps'] + 1}..{r['warmup_steps'] + r['timed_steps']} timed: DeepSpeed loop / bare = {r['ratio']:.2f}x wall "
          f"(per repeat {', '.join(f'{x:.2f}' for x in r['ratio_per_repeat'])}), {r['cpu_ratio']:.2f}x per CPU s of the training process "
          f"(per repeat {', '.join(f'{x:.2f}' for x in r['cpu_ratio_per_repeat'])}); target >= 0.9x: {verdict(r['ratio'], 0.9)} (wall), "
          f"{verdict(r['cpu_ratio'], 0.9)} (CPU)")


# --------------------------------------------------------------------------------------------------
# 7: masking's share of a step
# --------------------------------------------------------------------------------------------------


def bench_masking(args) -> dict:
    """apply_masking timed inside a training step (RandomMask at its last phase: the longest spans)."""
    device = _setup(args)
    sync = _sync(device) or (lambda: None)
    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = BertForMLM(model_config(args.preset, vocab_size=VOCAB)).to(device, dtype).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    cfg = MaskingConfig(policy="randommask")
    total_steps = 1000
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, VOCAB, (args.batch, args.seq), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    ids, attn = ids.to(device), torch.ones_like(ids).to(device)
    mask_s, step_s, boundary = [], [], None
    for i in range(args.warmup + args.masking_steps):
        global_step = total_steps - 1 - i  # the last phase: boundary 2k = 12 tokens
        sync()
        t0 = time.perf_counter()
        masked, labels, stats = apply_masking(ids, cfg=cfg, k=6, global_step=global_step, seed=0, rank=0, total_steps=total_steps, vocab_size=VOCAB)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(masked, attention_mask=attn, labels=labels)["loss"].backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        boundary = stats["mask_boundary"]
        if i >= args.warmup:
            mask_s.append(t1 - t0)
            step_s.append(t2 - t0)
    shares = [m / s for m, s in zip(mask_s, step_s)]
    return {"preset": args.preset, "batch": args.batch, "seq": args.seq, "dtype": args.dtype, "device": str(device), "boundary": boundary,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "mask_ms": median(mask_s) * 1e3, "step_ms": median(step_s) * 1e3, "share": median(shares), "shares": shares}


def print_masking(r: dict) -> None:
    print(f"{r['preset']}, batch {r['batch']} x {r['seq']} tokens, {r['dtype']} on {r['device']} ({r['threads']} threads), RandomMask boundary {r['boundary']}: "
          f"apply_masking {r['mask_ms']:.2f} ms of a {r['step_ms']:.0f} ms step = {r['share']:.2%} (median of {len(r['shares'])} steps); "
          f"target < 2%: {verdict(r['share'], 0.02, higher_is_better=False)}")


def main(argv=None) -> int:
    p = parser("tools/bench_train.py", __doc__)
    p.add_argument("what", choices=("mlm", "loop", "masking"))
    p.add_argument("--preset", default="tiny", help="model preset: tiny, small, dnabert-base")
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=512, help="tokens per sequence, [CLS] and [SEP] included")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads on a CPU (both sides alike)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported")
    p.add_argument("--steps", type=int, default=3, help="mlm: optimizer steps per timed repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--split", action="store_true", help="mlm: also time encoder-only vs whole-model forward + backward per side")
    p.add_argument("--ds_config", default="cpu_tiny.json", help="loop: a file in ds_configs/")
    p.add_argument("--loop_warmup", type=int, default=10, help="loop: steps left out of the timing (start-up)")
    p.add_argument("--loop_steps", type=int, default=40, help="loop: steps timed per run")
    p.add_argument("--masking_steps", type=int, default=10, help="masking: timed steps")
    p.add_argument("--fasta", type=Path, help="loop: genome for the shards (default: E. coli from the shared data)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    fn, show = {"mlm": (bench_mlm, print_mlm), "loop": (bench_loop, print_loop), "masking": (bench_masking, print_masking)}[args.what]
    try:
        result = fn(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["machine"] = machine()
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result["machine"]))
    show(result)
    print(f"({result['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
