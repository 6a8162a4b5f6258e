#!/usr/bin/env bash
# The main job on the built-in demo default (what `make demo` runs): a synthetic genome -> shards ->
# DeepSpeed ZeRO-2 pre-training on two local ranks -> export -> GUE-style evaluation. Offline, CPU is enough.
set -euo pipefail
OUT=${1:-demo_out}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
# On a GPU: the default ZeRO-2 bf16 config. On a CPU, where bf16 is emulated (~3x slower), the same
# ZeRO-2 set-up in fp32 with a tiny model's learning rate, and one thread per rank so the two ranks
# do not fight over the cores.
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  DS_CONFIG=ds_configs/z2.json
else
  DS_CONFIG=ds_configs/cpu_tiny.json
  export OMP_NUM_THREADS=1
fi
# --kmer_basis and --seq_len_schedule are what let a small model learn the k-mer overlap in a few hundred
# steps (docs/PAPER.md): without them the tiny model plateaus at k-mer frequencies. The basis has a cost: its table
# is mostly composition, and the demo's fine-tuning loses to random init by ~26 MCC with it, ~1 without (PAPER.md).
echo "== 1/3 pre-training (DeepSpeed ZeRO-2, 2 ranks, $DS_CONFIG) on the built-in synthetic genome"
deepspeed --num_gpus 2 launchers/pretrain.py --deepspeed_config "$DS_CONFIG" \
  --save_dir "$OUT/pretrain" --model tiny --tokenizer kmer6 --masking randommask \
  --kmer_basis true --seq_len_schedule 34:0.3,130:1 \
  --max_steps 600 --save_interval 200 --eval_interval 200 --log_interval 50 --progress false
python - "$OUT/pretrain" <<'PY'
import sys
from megadna.rundir import RunDir
run = RunDir(sys.argv[1])
losses = [r["loss"] for r in run.read_metrics()]
k = max(1, len(losses) // 10)
print(f"pre-training loss: first {k} steps {sum(losses[:k]) / k:.3f} -> last {k} steps {sum(losses[-k:]) / k:.3f}")
print(f"held-out eval: {run.read_summary().get('eval')}")
PY
echo "== 2/3 export to Hugging Face format"
python tools/export_hf.py "$OUT/pretrain" "$OUT/hf_export" --overwrite

echo "== 3/3 GUE-style evaluation on the built-in demo task (planted motifs): pre-trained vs random init, same rows and seeds"
# 10,000 test rows: the paired interval is a bootstrap over them. 600-step pre-training runs read ~3 MCC above random
# init on this probe; 1,500 rows leave a +-5.5 interval around that, 10,000 about +-2.2 (docs/PAPER.md).
python -c "from megadna.data.synthetic import write_demo_gue; write_demo_gue('$OUT/demo_gue', seed=0, n_test=10000)"
COMMON=(--gue_dir "$OUT/demo_gue" --datasets demo/motif --models "$OUT/hf_export" --init_random_control --progress false)
echo "-- probe: frozen encoder, mean-pooled features, logistic regression (C chosen on dev), 3 seeds"
python launchers/finetune_gue.py "${COMMON[@]}" --seeds 42,43,44 --mode probe --output_dir "$OUT/gue_probe"
echo "-- fine-tuning: the whole model, learning rate chosen on dev per arm (a tiny model barely moves at GUE's 3e-5),"
echo "   the classifier on the mean over tokens: MLM pre-training leaves [CLS] attending to itself (docs/PAPER.md)"
python launchers/finetune_gue.py "${COMMON[@]}" --seeds 42,43 --lr 3e-4,1e-3 --warmup_steps 10 --epochs 3 --eval_steps 50 --head_pooling mean --output_dir "$OUT/gue_finetune"
echo "plots: $OUT/gue_probe/comparison.png, $OUT/gue_finetune/comparison.png"
