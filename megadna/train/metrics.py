"""Throughput, MFU and the one-line training log.

MFU = achieved model FLOP/s / the device's dense peak. The model's FLOPs per token come from
`BertForMLM.flops_per_token` (beside the architecture); the peak from the table below, or from
MEGADNA_PEAK_TFLOPS when the device is not in it. On a CPU there is no meaningful peak, so MFU is
reported as unknown rather than a made-up figure.
"""

from __future__ import annotations

import os
import time

# Dense (no sparsity) peak TFLOP/s per GPU for the dtypes we train in, from the vendors' datasheets.
PEAK_TFLOPS = {
    ("H100", "bf16"): 989.0,  # SXM; the PCIe card is 756: set MEGADNA_PEAK_TFLOPS for it
    ("H200", "bf16"): 989.0,
    ("A100", "bf16"): 312.0,
    ("L40S", "bf16"): 362.0,
    ("A10G", "bf16"): 125.0,
}
for (_name, _), _v in list(PEAK_TFLOPS.items()):
    PEAK_TFLOPS[(_name, "fp16")] = _v
    PEAK_TFLOPS[(_name, "fp32")] = _v / 2 if _name in ("H100", "H200") else _v / 4  # TF32 tensor cores


def peak_flops(device_name: str, dtype: str) -> float | None:
    """Dense peak FLOP/s of one device, or None when unknown (e.g. a CPU)."""
    env = os.environ.get("MEGADNA_PEAK_TFLOPS")
    if env:
        return float(env) * 1e12
    for (name, dt), tflops in PEAK_TFLOPS.items():
        if name in device_name and dt == dtype:
            return tflops * 1e12
    return None


class Meter:
    """Times steps and the share of each step spent waiting for the data loader."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.t0 = time.perf_counter()
        self.data_wait = 0.0
        self.tokens = 0
        self.steps = 0

    def window(self) -> dict:
        """Figures since the last call: seconds, tokens/s, data-wait share; then restart the window."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        out = {"seconds": dt, "tokens_per_s": self.tokens / dt, "data_wait_share": self.data_wait / dt, "steps": self.steps}
        self.reset()
        return out


def format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
