"""Timing helpers shared by tools/bench_data.py and tools/bench_train.py.

The machine a benchmark runs on may be shared (other jobs, other agents' tests), so an absolute figure
is only as good as the moment it was taken. A *ratio* (ours vs a reference) is only meaningful when
both sides are timed at the same moment: `interleave` runs the cases in turn, in the same process,
reversing their order every repeat so that a drift in the machine's load hits both alike, and the
reports use the median over repeats. Per-core figures on the data path use the process's CPU time
(`time.process_time`), which a loaded machine inflates far less than wall time; training figures
use wall time, because DataLoader workers and intra-op threads are not in the process's CPU clock
as a single core's work.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Timing:
    """One timed run of a case: wall and CPU seconds, and the work done (tokens, bp, ...)."""

    wall_s: float
    cpu_s: float
    work: float

    @property
    def per_wall_s(self) -> float:
        return self.work / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.work / self.cpu_s


def timed(fn: Callable[[], float], sync: Callable[[], None] | None = None) -> Timing:
    """Run fn() (which returns the work it did) and time it; sync() is called before each clock read
    (torch.cuda.synchronize on a GPU, whose kernels run behind the host)."""
    if sync:
        sync()
    w0, c0 = time.perf_counter(), time.process_time()
    work = fn()
    if sync:
        sync()
    return Timing(time.perf_counter() - w0, time.process_time() - c0, float(work))


def interleave(cases: dict[str, Callable[[], float]], repeats: int, sync: Callable[[], None] | None = None) -> dict[str, list[Timing]]:
    """Time every case `repeats` times, alternating: A B, B A, A B, ... (one process, one moment)."""
    names = list(cases)
    out: dict[str, list[Timing]] = {n: [] for n in names}
    for r in range(repeats):
        for n in names if r % 2 == 0 else names[::-1]:
            out[n].append(timed(cases[n], sync))
    return out


def median(xs) -> float:
    return statistics.median(list(xs))


def median_ratio(a: list[Timing], b: list[Timing], cpu: bool = False) -> float:
    """Median over repeats of (a's rate / b's rate), each repeat's pair taken at the same moment."""
    if cpu:
        return median(x.per_cpu_s / y.per_cpu_s for x, y in zip(a, b))
    return median(x.per_wall_s / y.per_wall_s for x, y in zip(a, b))


def machine(torch_threads: int | None = None) -> dict:
    """What the figures were taken on: cores, load, versions, date (for the report's machine note)."""
    info = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch_threads if torch_threads is not None else torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def markdown_table(rows: list[dict]) -> str:
    """Rows of {column: value} as a GitHub markdown table (columns from the first row)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**not met**"
