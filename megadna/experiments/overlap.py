"""Does a model learn the k-mer overlap? A small in-process MLM run that answers in seconds.

Overlapping k-mers spell every base k times, so under `bert` masking a masked token can nearly
always be read off its unmasked neighbours: a model that has learned the overlap is near 100%
masked-token accuracy, one that has not sits at k-mer frequencies (~1-10%). On random DNA the
overlap is the *only* thing to learn, which makes it a test of the stack (model, masking,
sequence-length pieces, k-mer basis, optimiser) with nothing biological in the way; on a genome
it is the paper's second observation (the loss of overlapping k-mers collapses, non-overlapping
keeps falling).

One process, one thread, no DeepSpeed: the same `BertForMLM`, `apply_masking` and `split_windows`
the trainer uses, with AdamW (warmup then constant LR). Held-out accuracy is measured on fixed
windows the run never trains on, masked as at step 0 with a fixed seed, cut into pieces of the length
being trained (as the trainer's evaluation).

    python tools/learn_overlap.py --tokenizer kmer3 --steps 600 --out reports/overlap_kmer3
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError
from megadna.masking import POLICIES, MaskingConfig, apply_masking
from megadna.model import BertForMLM, model_config
from megadna.seqlen import parse_schedule, seq_len_at, split_windows
from megadna.tokenizers import get_tokenizer
from megadna.tokenizers.kmer import kmer_vocabulary_k


@dataclass
class OverlapConfig:
    tokenizer: str = field(default="kmer3", metadata={"help": "kmer<k> (overlapping) or nkmer<k> (non-overlapping) or base"})
    masking: str = field(default="bert", metadata={"help": f"masking policy: {', '.join(POLICIES)}"})
    model: str = field(default="tiny", metadata={"help": "model preset"})
    kmer_basis: bool = field(default=True, metadata={"help": "k-mer embeddings from per-position base embeddings (k-mer tokenizers)"})
    fasta: str = field(default="", metadata={"help": "windows from this FASTA(.gz) (N-free); empty: uniformly random DNA"})
    window_bp: int = field(default=130, metadata={"help": "bases per window"})
    seq_len_schedule: str = field(default="", metadata={"help": "TOKENS:FRACTION,... as megadna pretrain (empty: whole windows)"})
    batch: int = field(default=16, metadata={"help": "windows per step"})
    steps: int = field(default=600, metadata={"help": "optimizer steps"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW peak learning rate (linear warmup over warmup steps, then constant)"})
    warmup: int = field(default=50, metadata={"help": "warmup steps"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay on matrices (not biases, LayerNorm, embeddings' basis)"})
    eval_every: int = field(default=50, metadata={"help": "steps between held-out evaluations"})
    eval_windows: int = field(default=64, metadata={"help": "held-out windows"})
    seed: int = field(default=0, metadata={"help": "seeds data, init and masks"})

    def __post_init__(self):
        if self.masking not in POLICIES:
            raise InputError(f"--masking must be one of {', '.join(POLICIES)}, got {self.masking!r}")
        parse_schedule(self.seq_len_schedule)
        for name in ("window_bp", "batch", "steps", "eval_every", "eval_windows"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1, got {getattr(self, name)}")


class WindowSampler:
    """N-free windows: uniformly random bases, or random places in a FASTA's contigs."""

    def __init__(self, cfg: OverlapConfig, seed: int):
        self.bp, self.rng = cfg.window_bp, np.random.default_rng(seed)
        self.contigs = []
        if cfg.fasta:
            from megadna.data.genome import read_fasta

            self.contigs = [c.seq for c in read_fasta(cfg.fasta) if len(c.seq) > 4 * self.bp]
            if not self.contigs:
                raise InputError(f"{cfg.fasta}: no contig longer than {4 * self.bp} bp to draw {self.bp}-bp windows from")

    def __call__(self, n: int) -> list[bytes]:
        if not self.contigs:
            return [bytes(b"ACGT"[i] for i in self.rng.integers(0, 4, self.bp)) for _ in range(n)]
        out = []
        while len(out) < n:
            seq = self.contigs[self.rng.integers(len(self.contigs))]
            start = self.rng.integers(len(seq) - self.bp)
            window = seq[start : start + self.bp]
            if b"N" not in window.upper():
                out.append(window.upper())
        return out


def recoverable_share(masked_ids: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """The accuracy ceiling of a model that reads masked tokens off their neighbours: the share of
    predicted (masked) overlapping k-mer tokens all of whose k bases appear in some visible, unchanged
    k-mer token of the same sequence. The rest (a base only masked tokens cover: at the window's ends,
    or under neighbouring masks) can only be guessed. Token t (t >= 1 after [CLS]) spells bases
    t-1 .. t+k-2, so base b is seen when any visible token in [b-k+2, b+1] is a k-mer."""
    from megadna.tokenizers.base import IGNORE_INDEX, N_SPECIAL

    visible = (labels == IGNORE_INDEX) & (masked_ids >= N_SPECIAL)  # unmasked k-mer tokens
    B, L = visible.shape
    # Bases 0 .. L + k - 3 (token t spells t-1 .. t+k-2); pad so every index below is in range.
    width = L + k
    vis = torch.zeros(B, width + 2 * k, dtype=torch.bool, device=visible.device)
    vis[:, k : k + L] = visible  # vis[:, k + t] = visible[:, t]
    seen = torch.zeros(B, width, dtype=torch.bool, device=visible.device)  # seen[:, b]: base b spelled by a visible token
    for t_minus_b in range(-k + 2, 2):  # visible tokens t in [b - k + 2, b + 1]
        seen |= vis[:, k + t_minus_b : k + t_minus_b + width]
    ok = torch.ones(B, L, dtype=torch.bool, device=visible.device)  # ok[:, t]: bases t-1 .. t+k-2 all seen
    for j in range(k):
        start = j - 1  # base t - 1 + j, for t = 0 .. L-1
        if start < 0:
            ok[:, 1:] &= seen[:, : L - 1]
            ok[:, 0] = False  # [CLS]: never predicted anyway
        else:
            ok &= seen[:, start : start + L]
    predicted = labels != IGNORE_INDEX
    return float((ok & predicted).sum()) / max(1, int(predicted.sum()))


def _batch(tokenizer, windows: list[bytes], max_tokens: int) -> torch.Tensor:
    return torch.from_numpy(tokenizer.encode_batch(windows, max_tokens)["input_ids"]).long()


def learn_overlap(cfg: OverlapConfig, log=print) -> dict:
    """Train and return {"config", "curve": [{step, loss, accuracy (train, since the last point),
    heldout_accuracy and heldout_ceiling (`recoverable_share` of the held-out masks; overlapping k-mers
    only, else None), both at the length being trained}], "final_heldout_accuracy", "heldout_ceiling"
    (the last point's), "seconds", "k"}."""
    torch.manual_seed(cfg.seed)
    tokenizer = get_tokenizer(cfg.tokenizer)
    overlapping = getattr(tokenizer, "overlapping", False)
    span_k = tokenizer.k if overlapping else 1
    max_tokens = tokenizer.num_tokens(cfg.window_bp) + 2
    basis = kmer_vocabulary_k(tokenizer) if cfg.kmer_basis else 0
    model = BertForMLM(model_config(cfg.model, tokenizer.vocab_size, kmer_basis=basis, max_position_embeddings=max(512, max_tokens)))
    matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and "kmer_basis" not in n]
    others = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "kmer_basis" not in n)]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    masking, stages = MaskingConfig(policy=cfg.masking), parse_schedule(cfg.seq_len_schedule)
    sample = WindowSampler(cfg, cfg.seed)
    heldout = _batch(tokenizer, WindowSampler(cfg, cfg.seed + 1_000_003)(cfg.eval_windows), max_tokens)

    def mask(ids, step, seed):
        return apply_masking(ids, cfg=masking, k=span_k, global_step=step, seed=seed, rank=0, total_steps=cfg.steps, vocab_size=tokenizer.vocab_size)

    @torch.no_grad()
    def evaluate(length: int) -> tuple[float, float | None]:
        """(held-out accuracy, its recoverable share), at the length being trained (pieces, as the trainer)."""
        ids, _ = split_windows(heldout, None, length)
        masked, labels, _ = mask(ids, 0, cfg.seed + 7)
        model.eval()
        out = model(masked, None, labels)
        model.train()
        ceiling = recoverable_share(masked, labels, tokenizer.k) if overlapping else None
        return float(out["n_correct"]) / max(1, float(out["n_masked"])), ceiling

    curve, window, t0 = [], {"loss": 0.0, "n_masked": 0.0, "n_correct": 0.0, "steps": 0}, time.perf_counter()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup))
        length = seq_len_at(stages, step, cfg.steps, max_tokens)
        ids, _ = split_windows(_batch(tokenizer, sample(cfg.batch), max_tokens), None, length)
        masked, labels, _ = mask(ids, step, cfg.seed)
        out = model(masked, None, labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window["loss"] += float(out["loss"].detach())
        window["n_masked"] += float(out["n_masked"])
        window["n_correct"] += float(out["n_correct"])
        window["steps"] += 1
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            accuracy, ceiling = evaluate(length)
            point = {"step": step + 1, "seq_len": length, "loss": window["loss"] / window["steps"], "accuracy": window["n_correct"] / max(1.0, window["n_masked"]),
                     "heldout_accuracy": accuracy, "heldout_ceiling": ceiling, "seconds": round(time.perf_counter() - t0, 2)}
            curve.append(point)
            window = {"loss": 0.0, "n_masked": 0.0, "n_correct": 0.0, "steps": 0}
            log(f"step {point['step']}/{cfg.steps} | loss {point['loss']:.3f} | acc {point['accuracy']:.3f} | held-out {point['heldout_accuracy']:.3f} | {point['seconds']:.0f} s")
    return {"config": asdict(cfg), "k": span_k, "curve": curve, "heldout_ceiling": curve[-1]["heldout_ceiling"], "final_heldout_accuracy": curve[-1]["heldout_accuracy"],
            "seconds": round(time.perf_counter() - t0, 2)}


def steps_to(curve: list[dict], key: str, threshold: float) -> int | None:
    """First step whose `key` reaches `threshold` (e.g. held-out accuracy 0.5), or None."""
    return next((p["step"] for p in curve if p[key] >= threshold), None)


def plot_curves(results: dict[str, dict], out: str | Path) -> None:
    """Training loss and held-out accuracy of several runs against the step, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        steps = [p["step"] for p in r["curve"]]
        left.plot(steps, [p["loss"] for p in r["curve"]], label=name)
        right.plot(steps, [p["heldout_accuracy"] for p in r["curve"]], label=name)
    left.set(xlabel="optimizer step", ylabel="MLM training loss")
    right.set(xlabel="optimizer step", ylabel="held-out masked-token accuracy", ylim=(0, 1))
    left.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
