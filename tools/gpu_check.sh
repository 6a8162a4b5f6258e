#!/usr/bin/env bash
# One command that measures megadna's GPU claims and writes runs/gpu_check/gpu_check.md (device named):
# SDPA kernel, megadna vs HF tokens/s, dnabert-base bf16 ZeRO-2 tokens/s + MFU + data wait, resume
# equality with fused Adam, the fp16 config, peak memory. About 6-8 minutes on one H100/H200.
#   bash tools/gpu_check.sh [--out DIR] [--budget_s 420]   # on a GPU
#   bash tools/gpu_check.sh --dry-run          # the same steps on a CPU with `tiny` (CI runs this)
# Exit code 0 when every step passed, 1 otherwise. Logic: megadna/experiments/gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python   # the project's environment when it has one (make install)
exec "$PY" -m megadna.experiments.gpu_check "$@"
