"""tools/gpu_check.sh --dry-run: every step of the GPU check runs on a CPU with `tiny` and the report
names each result (the GPU run itself needs a GPU: docs/BENCHMARKS.md)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_passes_every_step_and_writes_the_report(tmp_path):
    from megadna.experiments.gpu_check import STEPS

    for attempt in range(2):  # the second run into the same folder (a retry) must pass as the first did
        r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "gc")], cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
        results = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
        failed = {k: results[k] for k in STEPS if not results[k]["ok"]}
        assert r.returncode == 0 and not failed, (attempt, failed, r.stdout[-2000:], r.stderr[-2000:])
    assert results["fp16"]["resumed_at"] == 2 and len(results["fp16"]["losses"]) == 4
    assert results["resume"]["bitwise"] and results["pretrain"]["tokens_per_s"] > 0 and results["pretrain"]["windows"] >= 2
    assert results["sdpa"]["backend"] in ("flash", "efficient", "math", "cudnn")
    report = (tmp_path / "gc" / "gpu_check.md").read_text()
    assert report.startswith("# megadna GPU check: cpu (dry run)") and "DRY RUN" in report and "resume equals uninterrupted | bitwise" in report
    assert "control (first halves, no resume between): 0.00e+00" in report


def test_without_a_gpu_the_real_run_refuses_and_points_to_the_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "--out", str(tmp_path / "gc")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "no CUDA device here; run with --dry-run" in r.stderr
