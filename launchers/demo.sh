#!/usr/bin/env bash
# The main job on the built-in demo default (what `make demo` runs): a synthetic genome -> shards ->
# DeepSpeed ZeRO-2 bf16 pre-training on two local ranks -> evaluation. Offline, CPU is enough.
set -euo pipefail
OUT=${1:-demo_out}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
# Two ranks on a CPU share its cores: one thread each keeps them from fighting.
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export OMP_NUM_THREADS=1
fi
echo "== 1/2 pre-training (DeepSpeed ZeRO-2, bf16, 2 ranks) on the built-in synthetic genome"
deepspeed --num_gpus 2 launchers/pretrain.py --deepspeed_config ds_configs/z2.json \
  --save_dir "$OUT/pretrain" --model tiny --tokenizer kmer6 --masking randommask \
  --max_steps 300 --save_interval 100 --eval_interval 100 --log_interval 25 --progress false
python - "$OUT/pretrain" <<'PY'
import json, sys
s = json.load(open(f"{sys.argv[1]}/summary.json"))
print(f"pre-training done: step {s['final_step']}, last losses {[round(x, 3) for x in s['last_losses'][-3:]]}, eval {s.get('eval')}")
PY
