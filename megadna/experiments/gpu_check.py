"""One command that measures what megadna claims on a GPU and writes it down (`tools/gpu_check.sh`).

    bash tools/gpu_check.sh                 # on one H100/H200: dnabert-base, bf16, ZeRO-2; about 6-8 minutes
    bash tools/gpu_check.sh --dry-run       # the same steps on a CPU with `tiny` (what CI runs)

Steps, each recorded whether it passes or fails (a failure does not stop the others), all inside one
time budget (`--budget_s`, default 420 s; a step's subprocess is killed with its process group when
the budget runs out, and the report is rewritten after every step, so a cut-short run still says
what it measured):
0. fused_adam: DeepSpeed's fused Adam built (or loaded) before any timed run.
1. sdpa: which scaled-dot-product-attention kernel actually runs in megadna's BERT forward (the op
   names under torch.profiler: flash, efficient, cudnn or math).
2. mlm: megadna's BertForMLM vs transformers' BertForMaskedLM (sdpa), tokens/s of fwd + bwd + AdamW,
   interleaved (tools/bench_train.py mlm), and its MFU and peak memory.
3. pretrain: `deepspeed launchers/pretrain.py` on the built-in demo shards, ZeRO-2 (z2.json: bf16,
   DeepSpeed's fused Adam on CUDA, its micro batch of 16), steady-state tokens/s, MFU and data-wait
   share from the log windows after the first, peak memory from the run's summary.
4. resume: the same run stopped at half the steps (--stop_at_step) and resumed: its per-step losses
   against the uninterrupted run's, beside a control (the first halves, which no resume separates:
   the device's own run-to-run difference).
5. fp16: z2_fp16.json for a few steps, stopped half-way and resumed (refused up front where the
   device has no fp16).

Writes OUT/gpu_check.md (the report, with the device named) and OUT/gpu_check.json. Exit code 0 when
every step passed, 1 otherwise.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG_LINE = re.compile(r"step (\d+)/\d+ \| .*\| ([\d.]+)k tok/s \| MFU (\S+) \| data ([\d.]+)%")


@dataclass
class Plan:
    """What each step runs: the GPU plan, or the CPU dry run of the same steps."""

    device: str
    preset: str
    ds_config: str
    dtype: str
    steps: int  # pre-training steps of the uninterrupted run (the resumed run stops at half)
    log_interval: int
    bench: list[str] = field(default_factory=list)
    fp16_steps: int = 5


def plan(dry_run: bool) -> Plan:
    if dry_run:
        return Plan("cpu", "tiny", "cpu_tiny.json", "fp32", steps=8, log_interval=2, fp16_steps=4,
                    bench=["--preset", "tiny", "--batch", "4", "--seq", "128", "--steps", "1", "--warmup", "1", "--repeats", "2"])
    return Plan("cuda", "dnabert-base", "z2.json", "bf16", steps=120, log_interval=20,
                bench=["--device", "cuda", "--dtype", "bf16", "--preset", "dnabert-base", "--batch", "64", "--seq", "512",
                       "--steps", "10", "--warmup", "5", "--repeats", "3"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deadline:
    """The whole check's time budget: each step may use what is left of it."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.end - time.monotonic())


DEADLINE = Deadline(420)  # replaced by run(); a step's subprocess never outlives the budget


def _run(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run to completion within the budget left; on a timeout the whole process group (the DeepSpeed
    launcher, its ranks and their loader workers) is killed, so nothing keeps holding the GPU."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env, text=True, start_new_session=True)
        try:
            p.wait(timeout=DEADLINE.left())
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise
    return subprocess.CompletedProcess(cmd, p.returncode)


def _tail(log: Path, n: int = 3) -> str:
    """The error line of a failed run if it printed one (megadna's `error: ...`, a traceback's last
    line), else its last lines."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or re.match(r"\w+(Error|Exception): ", line)]
    return (errors[-1] if errors else " / ".join(lines[-n:]))[-400:]


def check_sdpa(p: Plan) -> dict:
    """The attention kernels that ran in one forward of megadna's model on the device, in its dtype."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from megadna.model import BertForMLM, model_config

    device = torch.device(p.device)
    dtype = torch.bfloat16 if p.dtype == "bf16" else torch.float32
    model = BertForMLM(model_config(p.preset, vocab_size=4101)).to(device, dtype).eval()
    ids = torch.randint(5, 4101, (2, 128), device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.no_grad(), profile(activities=activities) as prof:
        model(ids)
    names = sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key or "attention" in e.key.lower()})
    kinds = [k for k, pat in (("flash", "flash"), ("efficient", "efficient"), ("cudnn", "cudnn"), ("math", "math")) if any(pat in n for n in names)]
    backend = kinds[0] if kinds else "unknown"
    return {"ok": backend != "unknown", "backend": backend, "ops": names}


def check_mlm(p: Plan, out: Path) -> dict:
    js = out / "bench_mlm.json"
    r = _run([sys.executable, "tools/bench_train.py", "mlm", *p.bench, "--json", str(js)], out / "bench_mlm.log")
    if r.returncode != 0 or not js.is_file():
        return {"ok": False, "error": f"exit {r.returncode}: {_tail(out / 'bench_mlm.log')}"}
    b = json.loads(js.read_text())
    return {"ok": True, "tokens_per_s": b["tokens_per_s"], "speedup": b["speedup"], "mfu": b.get("mfu"),
            "peak_memory_gib": b.get("peak_memory_gib"), "shape": f"{b['preset']}, batch {b['batch']} x {b['seq']}, {b['dtype']}"}


def _pretrain(p: Plan, out: Path, name: str, ds_config: str, steps: int, extra: list[str], log_name: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    log = out / f"{log_name or name}.log"
    env = dict(os.environ)
    if p.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    cmd = [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", "1", "--master_port", str(_free_port()), "launchers/pretrain.py",
           "--deepspeed_config", f"ds_configs/{ds_config}", "--data", str(out / "demo_data" / "shards"), "--model", p.preset,
           "--tokenizer", "kmer6", "--max_steps", str(steps), "--save_dir", str(out / name), "--save_interval", str(steps),
           "--eval_interval", "0", "--log_interval", str(p.log_interval), "--num_workers", "1", "--progress", "false", *extra]
    return _run(cmd, log, env), log


def _losses(save_dir: Path) -> list[float]:
    from megadna.rundir import RunDir

    return [r["loss"] for r in RunDir(save_dir).read_metrics()]


def check_fused_adam(p: Plan) -> dict:
    """Build DeepSpeed's fused Adam (the CUDA optimizer z2.json uses) before any timed run, so a
    machine that cannot compile it says so here, not as three failed runs."""
    if p.device != "cuda":
        return {"ok": True, "skipped": "CPU dry run: DeepSpeed uses its CPU Adam"}
    from deepspeed.ops.op_builder import FusedAdamBuilder

    t0 = time.perf_counter()
    FusedAdamBuilder().load()
    return {"ok": True, "seconds": round(time.perf_counter() - t0, 1)}


def check_pretrain(p: Plan, out: Path) -> dict:
    r, log = _pretrain(p, out, "pretrain", p.ds_config, p.steps, ["--resume", "none"])
    if r.returncode != 0:
        return {"ok": False, "error": f"exit {r.returncode}: {_tail(log)}"}
    windows = [(int(s), float(t) * 1e3, None if m == "n/a" else float(m.rstrip("%")) / 100, float(d) / 100)
               for s, t, m, d in LOG_LINE.findall(log.read_text(errors="replace"))]
    steady = windows[1:] or windows  # the first window holds start-up (compilation, allocator, first batches)
    if not steady:
        return {"ok": False, "error": f"no throughput log lines in {log}"}
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    mfus = [w[2] for w in steady if w[2] is not None]
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    return {"ok": True, "tokens_per_s": mean([w[1] for w in steady]), "mfu": mean(mfus) if mfus else None,
            "data_wait_share": mean([w[3] for w in steady]), "windows": len(steady), "peak_memory_gib": summary.get("peak_memory_gib"),
            "losses": _losses(out / "pretrain")}


def _rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))


def check_resume(p: Plan, out: Path, uninterrupted: list[float]) -> dict:
    """The run stopped at half and resumed, against the uninterrupted one. Control: the first halves,
    which no resume separates, show the device's own run-to-run difference."""
    half = p.steps // 2
    for i, extra in enumerate((["--stop_at_step", str(half), "--resume", "none"], [])):
        r, log = _pretrain(p, out, "resumed", p.ds_config, p.steps, extra, log_name=f"resumed_{i + 1}")
        if r.returncode != 0:
            return {"ok": False, "error": f"part {i + 1}: exit {r.returncode}: {_tail(log)}"}
    resumed = _losses(out / "resumed")
    if len(resumed) != len(uninterrupted):
        return {"ok": False, "error": f"{len(resumed)} logged steps, the uninterrupted run has {len(uninterrupted)}"}
    rel = _rel(resumed[half:], uninterrupted[half:])
    control = _rel(resumed[:half], uninterrupted[:half])
    return {"ok": rel <= max(1e-4, 10 * control), "bitwise": resumed == uninterrupted, "max_rel_diff": rel,
            "control_rel_diff": control, "split": f"{half} + {p.steps - half} vs {p.steps}"}


def check_fp16(p: Plan, out: Path) -> dict:
    """z2_fp16.json: a few steps, stopped half-way and resumed (the loss scaler's state must load)."""
    half = max(1, p.fp16_steps // 2)
    for i, extra in enumerate((["--stop_at_step", str(half), "--resume", "none"], [])):
        r, log = _pretrain(p, out, "fp16", "z2_fp16.json", p.fp16_steps, extra, log_name=f"fp16_{i + 1}")
        if r.returncode != 0:
            if "cannot train in fp16" in log.read_text(errors="replace"):
                return {"ok": True, "skipped": "the device has no fp16: refused up front, as it should be"}
            return {"ok": False, "error": f"part {i + 1}: exit {r.returncode}: {_tail(log)}"}
    losses = _losses(out / "fp16")
    return {"ok": len(losses) == p.fp16_steps and all(math.isfinite(x) for x in losses), "losses": losses, "resumed_at": half}


STEPS = ("fused_adam", "sdpa", "mlm", "pretrain", "resume", "fp16")


def run(out: Path, dry_run: bool, budget_s: float = 420) -> dict:
    import shutil

    import torch

    from megadna.data.demo import build_demo_shards

    global DEADLINE
    p = plan(dry_run)
    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device here; run with --dry-run for the CPU rehearsal")
    DEADLINE = Deadline(budget_s)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("pretrain", "resumed", "fp16"):  # a rerun into the same folder starts these runs afresh
        shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    build_demo_shards(out / "demo_data")
    device = torch.cuda.get_device_name(0) if p.device == "cuda" else "cpu (dry run)"
    results = {"device": device, "plan": p.__dict__, "versions": _versions(), "budget_s": budget_s}
    steps = {"fused_adam": lambda: check_fused_adam(p), "sdpa": lambda: check_sdpa(p), "mlm": lambda: check_mlm(p, out),
             "pretrain": lambda: check_pretrain(p, out),
             "resume": lambda: check_resume(p, out, results["pretrain"]["losses"]) if results["pretrain"].get("losses")
             else {"ok": False, "error": "no uninterrupted run"},
             "fp16": lambda: check_fp16(p, out)}
    for name in STEPS:
        results[name] = _guarded(steps[name])
        print(f"[gpu_check] {name}: {'ok' if results[name]['ok'] else 'FAILED'}", flush=True)
        _write(out, results, t0)  # after every step: a run cut short still leaves what it measured
    return _write(out, results, t0)


def _write(out: Path, results: dict, t0: float) -> dict:
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    results["ok"] = all(results.get(k, {}).get("ok") for k in STEPS)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu_check.md").write_text(report(results))
    return results


def _guarded(fn) -> dict:
    try:
        return fn()
    except subprocess.TimeoutExpired as e:
        return {"ok": False, "error": f"timed out after {e.timeout} s"}
    except Exception as e:  # noqa: BLE001 - a failing step is reported, and the others still run
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _versions() -> dict:
    import deepspeed
    import torch
    import transformers

    return {"torch": torch.__version__, "cuda": torch.version.cuda, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__}


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def report(r: dict) -> str:
    p = r["plan"]
    rows = []
    pending = {"ok": False, "error": "not reached (budget or an earlier stop)"}
    r = {**{k: pending for k in STEPS}, **r}
    fa = r["fused_adam"]
    rows.append(("DeepSpeed fused Adam (built before the timed runs)", "ok" if fa["ok"] else "FAILED",
                 fa.get("skipped") or fa.get("error") or f"{fa.get('seconds')} s to build or load"))
    s = r["sdpa"]
    rows.append(("SDPA kernel in megadna's forward", s.get("backend", "–"), ", ".join(s.get("ops", [])) or s.get("error", "")))
    m = r["mlm"]
    if m["ok"]:
        tps = m["tokens_per_s"]
        rows.append(("megadna vs HF BertForMaskedLM (fwd+bwd+AdamW)", f"{m['speedup']:.2f}x",
                     f"{tps['megadna']:,.0f} vs {tps['hf']:,.0f} tokens/s; {m['shape']}; MFU {_pct((m.get('mfu') or {}).get('megadna'))}; "
                     f"peak memory {m['peak_memory_gib']:.1f} GiB" if m.get("peak_memory_gib") else
                     f"{tps['megadna']:,.0f} vs {tps['hf']:,.0f} tokens/s; {m['shape']}"))
    else:
        rows.append(("megadna vs HF BertForMaskedLM", "FAILED", m["error"]))
    t = r["pretrain"]
    if t["ok"]:
        mem = f"; peak memory {t['peak_memory_gib']:.1f} GiB" if t.get("peak_memory_gib") else ""
        rows.append((f"pre-training, {p['preset']}, {p['ds_config']} (ZeRO-2, its micro batch), 1 device", f"{t['tokens_per_s']:,.0f} tokens/s",
                     f"MFU {_pct(t['mfu'])}, data wait {_pct(t['data_wait_share'])} (mean of {t['windows']} log windows after the first){mem}"))
    else:
        rows.append(("pre-training", "FAILED", t["error"]))
    q = r["resume"]
    rows.append(("resume equals uninterrupted", ("bitwise" if q.get("bitwise") else f"max rel diff {q['max_rel_diff']:.2e}") if "max_rel_diff" in q else "FAILED",
                 f"{q['split']}; control (first halves, no resume between): {q['control_rel_diff']:.2e}" if "split" in q else q.get("error", "")))
    f = r["fp16"]
    rows.append(("fp16 config (z2_fp16.json), stopped and resumed", "ok" if f["ok"] else "FAILED",
                 f.get("skipped") or f.get("error") or f"resumed at step {f.get('resumed_at')}; losses {', '.join(f'{x:.3f}' for x in f.get('losses', []))}"))
    lines = [f"# megadna GPU check: {r['device']}", "",
             f"{'DRY RUN on a CPU with `tiny`: the figures say nothing about a GPU; the steps are the ones a GPU run takes.' if p['device'] == 'cpu' else ''}",
             "", "| check | result | detail |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    v = r["versions"]
    lines += ["", f"Overall: {'all steps passed' if r['ok'] else 'SOME STEPS FAILED'}; {r['wall_s']:.0f} s of a {r['budget_s']:.0f} s budget. "
              f"torch {v['torch']} (CUDA {v['cuda']}), DeepSpeed {v['deepspeed']}, transformers {v['transformers']}. "
              "Logs and JSON beside this file (`bash tools/gpu_check.sh`, megadna/experiments/gpu_check.py)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="run the same steps on a CPU with the tiny preset")
    ap.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="report, logs and runs go here")
    ap.add_argument("--budget_s", type=float, default=420, help="the whole check's time budget; each step gets what is left")
    args = ap.parse_args(argv)
    results = run(args.out, args.dry_run, args.budget_s)
    print((args.out / "gpu_check.md").read_text())
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
