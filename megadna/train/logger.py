"""What a run reports, in one place: the per-step record (metrics.jsonl), the periodic log line,
TensorBoard scalars and the progress bar. Figures arrive as named fields (`StepResult`, `Throughput`),
never as tensor indices. Only rank 0 writes; other ranks get a logger whose writers are all off.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from megadna.errors import InputError
from megadna.jsonfile import read_jsonl, write_text
from megadna.rundir import RunDir
from megadna.train.metrics import format_eta


@dataclass(frozen=True)
class StepResult:
    """One optimizer step's figures, already averaged over micro steps and ranks."""

    step: int
    loss: float
    mlm_accuracy: float
    mask_ratio: float  # realised share of maskable tokens masked
    mask_boundary: int  # the masking curriculum's span bound at this step, in tokens
    seq_len: int  # the sequence-length curriculum's tokens per sequence at this step
    lr: float
    stop_requested: bool  # some rank got SIGTERM/SIGINT: every rank saves and stops together
    samples: list[int] | None = None  # --record_samples: the step's sample keys in global batch order


@dataclass(frozen=True)
class Throughput:
    """Figures over the window since the last log line (all ranks together)."""

    tokens_per_s: float
    mfu: float | None  # None where the device's peak is unknown (a CPU)
    data_wait_share: float
    seconds_per_step: float
    grad_norm: float


class RunLogger:
    def __init__(self, run: RunDir, resume_step: int, max_steps: int, is_main: bool, progress: bool):
        self.max_steps = max_steps
        self.is_main = is_main
        self._window_losses: list[float] = []
        self._jsonl = self._tb = self._bar = None
        if not is_main:
            return
        self._jsonl = _open_metrics(run, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(run.tensorboard))
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=max_steps, initial=resume_step, desc="pre-training", unit="step", dynamic_ncols=True, file=sys.stderr)

    def record(self, r: StepResult) -> None:
        """Every step: one JSON line (rank 0) and the progress bar."""
        self._window_losses.append(r.loss)
        if not self.is_main:
            return
        line = {"step": r.step, "loss": r.loss, "mask_boundary": r.mask_boundary, "seq_len": r.seq_len, "mlm_accuracy": r.mlm_accuracy, "lr": r.lr}
        if r.samples is not None:  # --record_samples: the step's sample keys in global batch order
            line["samples"] = r.samples
        self._jsonl.write(json.dumps(line) + "\n")
        self._jsonl.flush()
        if self._bar is not None:
            self._bar.update(1)

    def log(self, r: StepResult, t: Throughput, position: int) -> None:
        """Every log_interval steps: the one-line summary and TensorBoard scalars (rank 0)."""
        # One step's loss swings by +-0.2 on small batches: the window mean is what shows a trend.
        mean = sum(self._window_losses) / max(1, len(self._window_losses))
        self._window_losses = []
        if not self.is_main:
            return
        eta = (self.max_steps - r.step) * t.seconds_per_step
        mfu = f"{t.mfu:.1%}" if t.mfu is not None else "n/a"
        line = (
            f"step {r.step}/{self.max_steps} | loss {r.loss:.4f} (mean {mean:.4f}) | mlm acc {r.mlm_accuracy:.3f} | lr {r.lr:.2e} | "
            f"boundary {r.mask_boundary} | len {r.seq_len} | mask {r.mask_ratio:.3f} | {t.tokens_per_s / 1e3:.1f}k tok/s | MFU {mfu} | "
            f"data {t.data_wait_share:.1%} | gnorm {t.grad_norm:.2f} | pos {position} | ETA {format_eta(eta)}"
        )
        self.write(line)
        scalars = {
            "train/loss": r.loss, "train/loss_window_mean": mean, "train/mlm_accuracy": r.mlm_accuracy, "train/lr": r.lr,
            "train/mask_boundary": r.mask_boundary, "train/seq_len": r.seq_len, "train/mask_ratio": r.mask_ratio, "train/grad_norm": t.grad_norm,
            "perf/tokens_per_s": t.tokens_per_s, "perf/data_wait_share": t.data_wait_share,
        }
        if t.mfu is not None:
            scalars["perf/mfu"] = t.mfu
        self.scalars(scalars, r.step)

    def eval(self, result: dict) -> None:
        if not self.is_main:
            return
        self.write(f"eval @ step {result['step']}: loss {result['eval_loss']:.4f} | MLM accuracy {result['eval_mlm_accuracy']:.4f} | len {result['seq_len']}")
        self.scalars({"eval/loss": result["eval_loss"], "eval/mlm_accuracy": result["eval_mlm_accuracy"]}, result["step"])

    def write(self, line: str) -> None:
        if not self.is_main:
            return
        if self._bar is not None:
            self._bar.write(line)  # keeps the bar below the line
        else:
            print(line, flush=True)

    def scalars(self, values: dict, step: int) -> None:
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)

    def close(self) -> None:
        for w in (self._bar, self._tb, self._jsonl):
            if w is not None:
                w.close()


def _open_metrics(run: RunDir, resume_step: int):
    """metrics.jsonl for appending. On resume, lines past the checkpoint's step (written after it by the
    interrupted run) are dropped first, so the file reads as one uninterrupted run. A malformed last line
    is what a crash mid-write leaves: it is past the checkpoint too, and dropped with a warning; a
    malformed line before it is an InputError naming the line (the file was edited or damaged)."""
    if run.metrics.exists():
        try:
            records = read_jsonl(run.metrics, allow_torn_tail=True)
        except InputError as e:
            raise InputError(f"{e}; metrics.jsonl only logs the run: repair that line or move the file away to resume") from None
        for n, r in enumerate(records, 1):
            if not (isinstance(r, dict) and isinstance(r.get("step"), int)):
                raise InputError(f"{run.metrics}: record {n} is {json.dumps(r)[:80]}, not a step record with an integer "
                                 f"'step'; repair or move the file away to resume (it only logs the run)")
        kept = [r for r in records if r["step"] <= resume_step]
        write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in kept))
    return open(run.metrics, "a")
