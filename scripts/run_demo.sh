#!/usr/bin/env bash
# The quick start: set up .venv, generate the demo dataset, and run the recipe on CPU:
# untrained baseline -> softmax pre-training -> triplet fine-tuning -> evaluation.
# Re-running reuses .venv and the dataset. Usage: bash scripts/run_demo.sh [OUTPUT_DIR (default ./demo_output)]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-demo_output}" && cd "${1:-demo_output}" && pwd)"
PYTHON_BOOT=${PYTHON:-python3}
if [ ! -x "$REPO/.venv/bin/python" ]; then
  echo "[demo] creating $REPO/.venv"
  "$PYTHON_BOOT" -m venv "$REPO/.venv"
fi
"$REPO/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO/requirements.txt"
PY="$REPO/.venv/bin/python"
export PYTHONPATH="$REPO" GLOG_v="${GLOG_v:-3}"
DATA="$OUT/data"
SMALL=(--image_size 32 --hflip false --eval_batch_size 16)
step() { echo; echo "=== $*"; }

if [ ! -f "$DATA/test.txt" ]; then
  step "generating the demo dataset in $DATA"
  "$PY" -m src.demo_data --output_path "$DATA"
fi

step "untrained backbone"
"$PY" "$REPO/eval.py" --random_init --dataset_path "$DATA" --eval_list test.txt "${SMALL[@]}" | tee "$OUT/eval_untrained.txt"

step "stage 1: softmax pre-training"
"$PY" "$REPO/train.py" --loss_name softmax --dataset_path "$DATA" --output_dir "$OUT/softmax" --class_num 8 \
  --batch_size 12 --epoch_size 8 --lr_max 0.01 --lr_decay_mode const "${SMALL[@]}"
SOFTMAX_CKPT=$(ls -t "$OUT"/softmax/ckpt/resnet50_softmax-*_*.ckpt | head -n 1)
"$PY" "$REPO/eval.py" --ckpt_path "$SOFTMAX_CKPT" --dataset_path "$DATA" --eval_list test.txt "${SMALL[@]}" \
  | tee "$OUT/eval_softmax.txt"

step "stage 2: triplet fine-tuning from $SOFTMAX_CKPT"
"$PY" "$REPO/train.py" --loss_name triplet --dataset_path "$DATA" --output_dir "$OUT/triplet" \
  --ckpt_path "$SOFTMAX_CKPT" --batch_size 12 --epoch_size 4 --lr_max 0.001 "${SMALL[@]}"
TRIPLET_CKPT=$(ls -t "$OUT"/triplet/ckpt/resnet50_triplet-*_*.ckpt | head -n 1)
"$PY" "$REPO/eval.py" --ckpt_path "$TRIPLET_CKPT" --dataset_path "$DATA" --eval_list test.txt "${SMALL[@]}" \
  | tee "$OUT/eval_triplet.txt"

step "Recall@1 on the demo test list"
for stage in untrained softmax triplet; do
  printf '  %-10s %s\n' "$stage" "$(grep '^eval_recall:' "$OUT/eval_$stage.txt")"
done
echo "  checkpoints: $OUT/softmax/ckpt, $OUT/triplet/ckpt"
