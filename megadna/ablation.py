"""Tokenizer (and masking) ablation: the same short pre-training per arm, then GUE, in one table.
The command line is tools/ablate_tokenizers.py; see docs/TOKENIZERS.md.

    cfg = AblationConfig(data="shards/", out="runs/ablation", arms="kmer6:randommask,nkmer6:bert,bpe4096:bert,base:bert",
                         max_steps=2000, gue_dir="data/GUE", datasets="prom/prom_core_notata,tf/0")
    result = run_ablation(cfg)    # writes ablation.json, ablation.md, loss_curves.png, arms/<arm>/...

The mental model:
- an arm is (tokenizer, masking policy). Each arm is pre-trained by the real launcher, as a user
  would run it: `deepspeed --num_gpus N launchers/pretrain.py ...` in a subprocess, then fine-tuned
  and scored by the GUE harness (megadna.gue.run_gue, in this process).
- the equal budget: every arm reads the same shard set with the same DeepSpeed config (micro batch,
  gradient accumulation), the same number of ranks, the same seed and the same max_steps. Shards hold
  raw bases and the data order is a function of (seed, position) only, so every arm sees exactly the
  same windows in the same order: the same bp per step and in all. Tokens per window differ by
  tokenizer (an overlapping 6-mer makes ~6x the tokens of a non-overlapping one from the same bases);
  the report states both the bp (equal) and the tokens (not) each arm saw.
- BPE arms: `bpe<V>` that is not a directory is trained on the shards' train split (megadna's
  trainer) into out/tokenizers/bpe<V>. Their sequence length (--max_tokens) is the longest window
  encoding found on the shards (a scan of up to SCAN_WINDOWS windows) rounded up to a multiple of 8,
  instead of the model's whole 512 positions: BPE token counts depend on the content.
- resumable: arms/<arm>/arm.json holds the arm's plan; an arm whose pre-training reached max_steps
  (summary.json) and whose GUE results match the requested config is skipped; an interrupted
  pre-training is resumed by the launcher's `--resume auto`; GUE skips its finished (dataset, seed)
  pairs by itself. A plan that changed (other steps, model, data...) is refused, not mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from megadna.errors import InputError
from megadna.tokenizers import DNATokenizer, get_tokenizer

log = logging.getLogger("megadna.ablation")

POLICIES = ("bert", "dnabert", "randommask")
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "launchers" / "pretrain.py"
SCAN_WINDOWS = 50_000  # windows encoded to size a BPE arm's --max_tokens and to count tokens per window


@dataclass
class AblationConfig:
    data: str = field(default="", metadata={"help": "shard directory (tools/make_shards.py) shared by every arm"})
    out: str = field(default="runs/ablation", metadata={"help": "output directory: ablation.json/.md, loss_curves.png, arms/<arm>/"})
    arms: str = field(default="", metadata={"help": "comma-separated tokenizer:masking pairs, e.g. kmer6:randommask,nkmer6:bert,bpe4096:bert,base:bert"})
    tokenizers: str = field(default="", metadata={"help": "or: comma-separated tokenizers (kmer6, nkmer6, base, bpe<V> or a BPE dir), crossed with --maskings"})
    maskings: str = field(default="bert", metadata={"help": "comma-separated masking policies for --tokenizers (bert, dnabert, randommask)"})
    model: str = field(default="tiny", metadata={"help": "model preset (tiny, small, dnabert-base)"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps per arm (the budget: same for every arm)"})
    deepspeed_config: str = field(default="", metadata={"help": "DeepSpeed JSON (empty: ds_configs/z2.json with a GPU, ds_configs/cpu_tiny.json without)"})
    num_gpus: int = field(default=0, metadata={"help": "ranks per arm (deepspeed --num_gpus; 0: every local GPU, or 1 without one)"})
    seed: int = field(default=0, metadata={"help": "pre-training seed (data order, masking, init): the same for every arm"})
    save_interval: int = field(default=0, metadata={"help": "steps between checkpoints (0: a fifth of max_steps)"})
    log_interval: int = field(default=0, metadata={"help": "steps between log lines (0: a twentieth of max_steps)"})
    eval_batches: int = field(default=8, metadata={"help": "held-out micro batches per rank for the final MLM eval"})
    bpe_max_bp: int = field(default=20_000_000, metadata={"help": "bases of the train split used to train a bpe<V> arm's tokenizer"})
    pretrain_args: str = field(default="", metadata={"help": "extra launcher arguments, verbatim, for every arm (e.g. '--mask_ratio 0.2')"})
    gue_dir: str = field(default="", metadata={"help": "GUE folder (<task>/<dataset>/{train,dev,test}.csv); empty: pre-training only"})
    datasets: str = field(default="", metadata={"help": "comma-separated GUE task/dataset names (empty: every dataset found)"})
    gue_seeds: str = field(default="42,43,44", metadata={"help": "fine-tuning seeds"})
    max_train_samples: int = field(default=0, metadata={"help": "GUE: seeded train subset per dataset (0: all)"})
    max_eval_samples: int = field(default=0, metadata={"help": "GUE: seeded dev and test subsets (0: all)"})
    gue_max_steps: int = field(default=-1, metadata={"help": "GUE fine-tuning steps (-1: the dataset family's recipe)"})
    gue_epochs: int = field(default=-1, metadata={"help": "GUE epochs (-1: the recipe's)"})
    gue_lr: float = field(default=3e-5, metadata={"help": "GUE peak learning rate (the recipe's 3e-5 is for BERT-base; a tiny model wants ~1e-3)"})
    gue_batch_size: int = field(default=32, metadata={"help": "GUE sequences per step"})
    gue_warmup_steps: int = field(default=-1, metadata={"help": "GUE warmup steps (-1: the recipe's)"})
    gue_eval_steps: int = field(default=-1, metadata={"help": "GUE steps between dev evaluations (-1: the recipe's)"})
    gue_random_control: bool = field(default=False, metadata={"help": "also fine-tune each tokenizer's model from random init (same preset and GUE settings): "
                                                                     "the control that tells what pre-training added from what the tokenization alone gives"})

    def __post_init__(self):
        if not self.data:
            raise InputError("--data is required: the shard directory every arm pre-trains on")
        if self.max_steps < 1:
            raise InputError(f"--max_steps must be >= 1, got {self.max_steps}")
        if bool(self.arms) == bool(self.tokenizers):
            raise InputError("give --arms tok:masking,... or --tokenizers a,b (crossed with --maskings), one of the two")
        self.arm_list()  # validates

    def arm_list(self) -> list["Arm"]:
        return parse_arms(self.arms, self.tokenizers, self.maskings)


@dataclass(frozen=True)
class Arm:
    tokenizer: str  # as given: kmer6, nkmer6, base, bpe4096 or a directory
    masking: str

    @property
    def name(self) -> str:
        tok = Path(self.tokenizer).name if ("/" in self.tokenizer or Path(self.tokenizer).is_dir()) else self.tokenizer
        return f"{tok}-{self.masking}"


def parse_arms(arms: str, tokenizers: str, maskings: str) -> list[Arm]:
    """Arms from 'tok:masking,...', or the cross product of tokenizers x maskings; each name once."""
    if arms:
        out = []
        for item in (a.strip() for a in arms.split(",") if a.strip()):
            tok, sep, masking = item.rpartition(":")
            if not sep or not tok:
                raise InputError(f"--arms: {item!r} is not tokenizer:masking (e.g. kmer6:randommask)")
            out.append(Arm(tok.strip(), masking.strip()))
    else:
        toks = [t.strip() for t in tokenizers.split(",") if t.strip()]
        masks = [m.strip() for m in maskings.split(",") if m.strip()]
        out = [Arm(t, m) for t in toks for m in masks]
    if not out:
        raise InputError("no arms: --arms or --tokenizers named nothing")
    for arm in out:
        if arm.masking not in POLICIES:
            raise InputError(f"arm {arm.tokenizer}:{arm.masking}: masking must be one of {', '.join(POLICIES)}")
    names = [a.name for a in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise InputError(f"arms named twice: {', '.join(sorted(dup))}")
    return out


# --------------------------------------------------------------------------------------------------
# Tokenizers and the budget
# --------------------------------------------------------------------------------------------------


def resolve_tokenizer(spec: str, cfg: AblationConfig) -> tuple[str, DNATokenizer]:
    """(spec the launcher gets, tokenizer). 'bpe<V>' that is not a directory is trained on the shards once."""
    import re

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
    from megadna.shards import iter_shard, read_manifest

    n = 0
    for shard in read_manifest(shard_dir)["splits"][split]["shards"]:
        for seq, _ in iter_shard(shard_dir / split / shard["name"]):
            yield seq
            n += 1
            if n >= limit:
                return


def window_tokens(tokenizer: DNATokenizer, shard_dir, max_positions: int) -> dict:
    """Tokens per window (no specials) on the shards, and the --max_tokens a BPE arm needs (None:
    the launcher's own, window-derived)."""
    from megadna.shards import read_manifest

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
    ds = json.loads(ds_path.read_text())
    micro = int(ds["train_micro_batch_size_per_gpu"])
    accum = int(ds.get("gradient_accumulation_steps", 1))
    windows_per_step = micro * accum * ranks
    return {"max_steps": cfg.max_steps, "micro_batch": micro, "gradient_accumulation": accum, "ranks": ranks,
            "windows_per_step": windows_per_step, "window_bp": window_bp, "bp_per_step": windows_per_step * window_bp,
            "bp_total": windows_per_step * window_bp * cfg.max_steps, "seed": cfg.seed}


# --------------------------------------------------------------------------------------------------
# One arm
# --------------------------------------------------------------------------------------------------


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


def pretrain_command(arm_spec: str, arm: Arm, cfg: AblationConfig, ds_path: Path, ranks: int, save_dir: Path, max_tokens: int | None) -> list[str]:
    save_interval = cfg.save_interval or max(1, cfg.max_steps // 5)
    log_interval = cfg.log_interval or max(1, cfg.max_steps // 20)
    cmd = [_deepspeed(), "--num_gpus", str(ranks), "--master_port", str(_free_port()), str(LAUNCHER),
           "--deepspeed_config", str(ds_path), "--data", str(Path(cfg.data).resolve()), "--tokenizer", arm_spec,
           "--masking", arm.masking, "--model", cfg.model, "--max_steps", str(cfg.max_steps), "--seed", str(cfg.seed),
           "--save_dir", str(save_dir), "--save_interval", str(save_interval), "--keep_last", "2", "--eval_interval", "0",
           "--eval_batches", str(cfg.eval_batches), "--log_interval", str(log_interval), "--resume", "auto", "--progress", "false"]
    if max_tokens:
        cmd += ["--max_tokens", str(max_tokens)]
    return cmd + shlex.split(cfg.pretrain_args)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def pretrain_done(save_dir: Path, max_steps: int) -> dict | None:
    summary = _read_json(save_dir / "summary.json")
    if summary and summary.get("final_step") == max_steps and not summary.get("preempted"):
        return summary
    return None


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""


def run_pretrain(arm: Arm, arm_spec: str, cfg: AblationConfig, ds_path: Path, ranks: int, arm_dir: Path, max_tokens, state: dict) -> dict:
    """Pre-train one arm through the launcher (resuming what is there); returns its summary.json."""
    save_dir = arm_dir / "pretrain"
    done = pretrain_done(save_dir, cfg.max_steps)
    if done:
        log.info("%s: pre-training finished earlier (step %d), skipped", arm.name, done["final_step"])
        return done
    cmd = pretrain_command(arm_spec, arm, cfg, ds_path, ranks, save_dir, max_tokens)
    log_path = arm_dir / "pretrain.log"
    log.info("%s: pre-training (%d steps, %d rank(s)); log: %s", arm.name, cfg.max_steps, ranks, log_path)
    t0 = time.perf_counter()
    with open(log_path, "a") as logf:
        logf.write(f"\n$ {shlex.join(cmd)}\n")
        logf.flush()
        proc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
    state["pretrain_wall_s"] = state.get("pretrain_wall_s", 0.0) + time.perf_counter() - t0
    _write_json(arm_dir / "arm.json", state)
    done = pretrain_done(save_dir, cfg.max_steps)
    if proc.returncode != 0 or not done:
        raise ArmFailed(f"{arm.name}: pre-training exited with {proc.returncode} before step {cfg.max_steps}; "
                        f"re-run the same command to resume it. Last lines of {log_path}:\n{_tail(log_path)}")
    return done


class ArmFailed(RuntimeError):
    pass


def gue_config(cfg: AblationConfig, arm_dir: Path, random_init_tokenizer: str = ""):
    """GUE settings for an arm's pre-trained model, or (random_init_tokenizer given) for the random-init control."""
    from megadna.gue import GUEConfig

    model = dict(init="random", model=cfg.model, tokenizer=random_init_tokenizer) if random_init_tokenizer else dict(model=str(arm_dir / "pretrain"))
    return GUEConfig(gue_dir=cfg.gue_dir, **model, output_dir=str(arm_dir / "gue"), datasets=cfg.datasets,
                     seeds=cfg.gue_seeds, lr=cfg.gue_lr, batch_size=cfg.gue_batch_size, epochs=cfg.gue_epochs,
                     max_steps=cfg.gue_max_steps, warmup_steps=cfg.gue_warmup_steps, eval_steps=cfg.gue_eval_steps,
                     max_train_samples=cfg.max_train_samples, max_eval_samples=cfg.max_eval_samples, progress=False)


def run_arm_gue(name: str, cfg: AblationConfig, arm_dir: Path, state: dict, random_init_tokenizer: str = "") -> dict:
    """GUE for one arm (or one random-init control); skipped when its results exist for the same settings.
    The wall time is added to state["gue_wall_s"] and saved in arm_dir/arm.json."""
    from megadna.gue import run_gue

    gcfg = gue_config(cfg, arm_dir, random_init_tokenizer)
    previous = _read_json(arm_dir / "gue" / "results.json")
    ignore = {"progress", "device"}
    want = {k: v for k, v in dataclasses.asdict(gcfg).items() if k not in ignore}
    if previous and {k: v for k, v in previous["config"]["config"].items() if k not in ignore} == want:
        log.info("%s: GUE results exist for these settings, skipped", name)
        return previous
    t0 = time.perf_counter()
    results = run_gue(gcfg)
    state["gue_wall_s"] = state.get("gue_wall_s", 0.0) + time.perf_counter() - t0
    _write_json(arm_dir / "arm.json", state)
    return results


def _gue_summary(results: dict) -> dict:
    return {"datasets": {r["name"]: {k: r[k] for k in ("mcc_mean", "mcc_std", "f1_mean", "accuracy_mean")} for r in results["datasets"]},
            "overall": {k: results["overall"][k] for k in ("mcc_mean", "mcc_std")}}


# --------------------------------------------------------------------------------------------------
# Loss curves and the tables
# --------------------------------------------------------------------------------------------------


def read_metrics(save_dir: Path) -> dict[str, np.ndarray]:
    steps, loss, acc = [], [], []
    path = Path(save_dir) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                steps.append(r["step"])
                loss.append(r["loss"])
                acc.append(r.get("mlm_accuracy", float("nan")))
    return {"step": np.array(steps), "loss": np.array(loss, dtype=float), "mlm_accuracy": np.array(acc, dtype=float)}


def smooth(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing mean over `width` steps (shorter at the start), so the curve has a value at every step."""
    if width <= 1 or len(values) == 0:
        return values
    c = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - width)
    return (c[idx] - c[lo]) / (idx - lo)


def convergence(metrics: dict[str, np.ndarray]) -> dict:
    """First and last training loss (means over the first and last 10% of steps), and the first step at
    which the smoothed loss has made half of that drop: a plain measure of how fast an arm converges."""
    loss, steps = metrics["loss"], metrics["step"]
    if len(loss) == 0:
        return {}
    k = max(1, len(loss) // 10)
    first, last = float(loss[:k].mean()), float(loss[-k:].mean())
    s = smooth(loss, max(1, len(loss) // 20))
    target = first - 0.5 * (first - last)
    hit = np.nonzero(s <= target)[0] if first > last else np.zeros(0, dtype=int)
    return {"first_loss": first, "final_loss": last, "final_mlm_accuracy": float(np.nanmean(metrics["mlm_accuracy"][-k:])),
            "half_drop_step": int(steps[hit[0]]) if len(hit) else None}


def plot_loss_curves(arms: list[dict], path, max_steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, a in enumerate(arms):
        m = read_metrics(Path(a["dir"]) / "pretrain")
        if len(m["step"]) == 0:
            continue
        w = max(1, len(m["step"]) // 20)
        color = f"C{i % 10}"
        left.plot(m["step"], m["loss"], color=color, alpha=0.2, linewidth=0.7)
        left.plot(m["step"], smooth(m["loss"], w), color=color, label=f"{a['name']} (|V|={a['vocab_size']:,})")
        right.plot(m["step"], smooth(m["mlm_accuracy"], w), color=color, label=a["name"])
    left.set_xlabel("optimizer step (same bp per step in every arm)")
    left.set_ylabel("training MLM loss (nats; faint: per step)")
    left.set_title("Pre-training loss")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    right.set_xlabel("optimizer step")
    right.set_ylabel("MLM accuracy on masked tokens (smoothed)")
    right.set_title("Pre-training MLM accuracy")
    right.grid(alpha=0.3)
    for ax in (left, right):
        ax.set_xlim(0, max_steps)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _f(x, fmt="{:.3f}") -> str:
    return "–" if x is None or (isinstance(x, float) and not np.isfinite(x)) else fmt.format(x)


def _secs(x) -> str:
    if x is None:
        return "–"
    return f"{x / 60:.1f} min" if x >= 90 else f"{x:.0f} s"


def format_markdown(result: dict) -> str:
    b = result["budget"]
    arms = result["arms"]
    lines = ["# Tokenizer ablation", ""]
    lines.append(
        f"Equal budget: every arm pre-trained {b['max_steps']:,} steps x {b['windows_per_step']} windows "
        f"({b['micro_batch']} per rank x {b['gradient_accumulation']} accumulation x {b['ranks']} rank(s)) of {b['window_bp']} bp "
        f"= {b['bp_per_step']:,} bp per step, {b['bp_total'] / 1e6:.2f} Mbp in all, the same windows in the same order (seed {b['seed']}). "
        "The bp budget is equal; the token counts are not (column 'tokens seen'). "
        f"Model: {result['config']['model']}; DeepSpeed config: {Path(result['config']['ds_config']).name}.")
    lines += ["", "## Pre-training", ""]
    head = ["arm", "tokenizer", "masking", "vocab", "tokens/window (positions)", "tokens seen", "first → final train loss",
            "steps to half the drop", "eval MLM loss", "eval MLM acc", "pre-train wall"]
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] * 3 + [" ---: "] * (len(head) - 3)) + "|"]
    for a in arms:
        p = a.get("pretrain", {})
        c = p.get("convergence", {})
        ev = (p.get("summary") or {}).get("eval") or {}
        tw = a.get("tokens") or {}
        lines.append("| " + " | ".join([
            a["name"], a["tokenizer_name"], a["masking"], f"{a['vocab_size']:,}",
            f"{tw.get('tokens_per_window', 0):.1f} ({tw.get('positions', '–')})" if tw else "–",
            f"{p['tokens_seen'] / 1e6:.2f} M" if p.get("tokens_seen") else "–",
            f"{_f(c.get('first_loss'))} → {_f(c.get('final_loss'))}" if c else "–",
            _f(c.get("half_drop_step"), "{:d}") if c else "–",
            _f(ev.get("eval_loss")), _f(ev.get("eval_mlm_accuracy")), _secs(a.get("pretrain_wall_s")),
        ]) + " |")
    names = result.get("gue_datasets") or []
    if names:
        seeds = result["config"]["gue_seeds"]
        lines += ["", "## GUE (test MCC x 100, mean ± std over seeds " + seeds + ")", ""]
        head = ["arm"] + names + ["mean", "GUE wall"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(head) - 1)) + "|"]
        for a in arms:
            g = a.get("gue") or {}
            cells = [a["name"]]
            for n in names:
                d = (g.get("datasets") or {}).get(n)
                cells.append(f"{d['mcc_mean']:.2f} ± {d['mcc_std']:.2f}" if d else "–")
            o = g.get("overall")
            cells.append(f"{o['mcc_mean']:.2f} ± {o['mcc_std']:.2f}" if o else "–")
            cells.append(_secs(a.get("gue_wall_s")))
            lines.append("| " + " | ".join(cells) + " |")
        controls = result.get("controls") or {}
        for label, g in controls.items():
            cells = [f"*{label}, random init (control)*"]
            for n in names:
                d = g["datasets"].get(n)
                cells.append(f"{d['mcc_mean']:.2f} ± {d['mcc_std']:.2f}" if d else "–")
            cells += [f"{g['overall']['mcc_mean']:.2f} ± {g['overall']['mcc_std']:.2f}", _secs(g.get("gue_wall_s"))]
            lines.append("| " + " | ".join(cells) + " |")
        gc = result["config"]
        if controls:
            lines += ["", "Control rows: the same architecture and GUE settings from random init, with that tokenizer and no "
                          "pre-training; an arm's gain over its tokenizer's control is what its pre-training added."]
        lines += ["", f"GUE: train subset {gc['max_train_samples'] or 'all'}, dev/test subset {gc['max_eval_samples'] or 'all'}, "
                      f"lr {gc['gue_lr']}, batch {gc['gue_batch_size']}, steps {gc['gue_max_steps'] if gc['gue_max_steps'] > 0 else 'recipe'}; "
                      "the state with the best dev MCC is scored on test."]
    lines += ["", "## Notes", ""]
    lines.append("- Training losses are over different vocabularies (a uniform guess costs ln|V| nats), and with overlapping "
                 "k-mers a masked token can be read from its unmasked neighbours: compare a loss curve's shape and speed across "
                 "arms, not its height. 'Steps to half the drop': first step at which the smoothed loss has fallen half-way "
                 "from its first-10% mean to its last-10% mean.")
    spans = [a["name"] for a in arms if a["masking"] in ("dnabert", "randommask") and not a["overlapping"]]
    if spans:
        lines.append(f"- {', '.join(spans)}: a span masking policy with a non-overlapping tokenizer; the trainer then uses "
                     "span unit 1 (DNABERT span m = 1 is single-token masking; RandomMask's boundary grows from 1 token).")
    failed = [a["name"] for a in arms if a.get("error")]
    if failed:
        lines.append(f"- Failed arms (see ablation.json and their logs): {', '.join(failed)}.")
    lines += ["", "Plot: `loss_curves.png` (training loss and MLM accuracy per step, every arm)."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# The whole ablation
# --------------------------------------------------------------------------------------------------


def _plan_key(plan: dict) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:16]


def run_ablation(cfg: AblationConfig | None = None, **fields) -> dict:
    """Pre-train and evaluate every arm (skipping finished work), then write ablation.json/.md and
    loss_curves.png. Returns the result dict; arms that failed carry "error" and the others still run."""
    from megadna.model import model_config
    from megadna.shards import read_manifest

    cfg = cfg or AblationConfig(**fields)
    if not LAUNCHER.is_file():
        raise InputError(f"{LAUNCHER}: the pre-training launcher is missing; run the ablation from a megadna checkout (pip install -e .)")
    out = Path(cfg.out)
    (out / "arms").mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cfg.data)
    if cfg.gue_dir:
        from megadna.gue import select_datasets

        gue_names = select_datasets(cfg.gue_dir, cfg.datasets)
    else:
        gue_names = []
    ds_path = ds_config_path(cfg)
    ranks = num_ranks(cfg)
    window_bp = int(manifest["window_config"]["window"])
    bud = budget(cfg, ds_path, ranks, window_bp)
    # Resolve every arm first (tokenizers, BPE training, plans): bad input stops the run before any training.
    planned = []
    for arm in cfg.arm_list():
        arm_dir = out / "arms" / arm.name
        spec, tok = resolve_tokenizer(arm.tokenizer, cfg)
        tokens = window_tokens(tok, cfg.data, model_config(cfg.model, vocab_size=tok.vocab_size).max_position_embeddings)
        plan = {"tokenizer": spec, "tokenizer_config": tok.to_dict() | {"vocab_size": tok.vocab_size}, "masking": arm.masking,
                "model": cfg.model, "max_steps": cfg.max_steps, "seed": cfg.seed, "data": str(Path(cfg.data).resolve()),
                "deepspeed_config": json.loads(ds_path.read_text()), "ranks": ranks, "max_tokens": tokens["max_tokens"],
                "pretrain_args": cfg.pretrain_args}
        state = _read_json(arm_dir / "arm.json") or {}
        if state.get("plan") and state["plan"] != plan:
            diff = ", ".join(k for k in plan if state["plan"].get(k) != plan[k])
            raise InputError(f"{arm_dir}: this arm was started with another plan (differs in: {diff}); use another --out, "
                             "or delete that arm's folder to start it over")
        planned.append((arm, arm_dir, spec, tok, tokens, plan, state))

    results = []
    for arm, arm_dir, spec, tok, tokens, plan, state in planned:
        arm_dir.mkdir(parents=True, exist_ok=True)
        state.update(plan=plan, plan_key=_plan_key(plan))
        _write_json(arm_dir / "arm.json", state)
        record: dict = {"name": arm.name, "tokenizer": arm.tokenizer, "masking": arm.masking, "dir": str(arm_dir),
                        "tokenizer_name": tok.name, "vocab_size": tok.vocab_size, "overlapping": tok.overlapping, "tokens": tokens}
        results.append(record)
        try:
            summary = run_pretrain(arm, spec, cfg, ds_path, ranks, arm_dir, tokens["max_tokens"], state)
            record["pretrain"] = {"summary": summary, "convergence": convergence(read_metrics(arm_dir / "pretrain")),
                                  "tokens_seen": tokens["tokens_per_window"] * bud["windows_per_step"] * cfg.max_steps,
                                  "positions_computed": tokens["positions"] * bud["windows_per_step"] * cfg.max_steps}
            if gue_names:
                record["gue"] = _gue_summary(run_arm_gue(arm.name, cfg, arm_dir, state))
        except ArmFailed as e:  # the other arms still run; the table marks this one
            log.error("%s", e)
            record["error"] = str(e)
        record["pretrain_wall_s"] = state.get("pretrain_wall_s")
        record["gue_wall_s"] = state.get("gue_wall_s")
    controls = {}
    if gue_names and cfg.gue_random_control:
        # One control per tokenizer (two arms that differ only in masking share it).
        for arm, _, spec, tok, _, _, _ in planned:
            label = Path(spec).name if Path(spec).is_dir() else spec
            if label in controls:
                continue
            control_dir = out / "controls" / label
            control_dir.mkdir(parents=True, exist_ok=True)
            state = _read_json(control_dir / "arm.json") or {}
            controls[label] = _gue_summary(run_arm_gue(f"{label} (random init)", cfg, control_dir, state, random_init_tokenizer=spec))
            controls[label]["gue_wall_s"] = state.get("gue_wall_s")
        for record, (_, _, spec, _, _, _, _) in zip(results, planned):
            record["control"] = Path(spec).name if Path(spec).is_dir() else spec
    result = {"config": dataclasses.asdict(cfg) | {"ds_config": str(ds_path), "ranks": ranks}, "budget": bud,
              "gue_datasets": gue_names, "arms": results, "controls": controls}
    _write_json(out / "ablation.json", result)
    (out / "ablation.md").write_text(format_markdown(result))
    plot_loss_curves(results, out / "loss_curves.png", cfg.max_steps)
    return result
