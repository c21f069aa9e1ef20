#!/usr/bin/env bash
# The quick start, on CPU: set up .venv, build a small instance-retrieval set from the photos bundled
# with scikit-image, and run the whole recipe on it:
#   untrained backbone -> softmax pre-training -> quadruplet fine-tuning -> evaluation (+ retrieval picture)
#   -> export (MindIR) -> the CPU inference chain (scripts/run_infer_cpu.sh),
# printing Recall@1 on the test products (disjoint from the training ones) after each stage.
# Re-running reuses .venv, the data and any stage whose final checkpoint exists (delete a stage's
# folder to redo it).
# Usage: bash scripts/run_demo.sh [OUTPUT_DIR (default ./demo_output)]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-demo_output}" && cd "${1:-demo_output}" && pwd)"
PYTHON_BOOT=${PYTHON:-python3}
if [ ! -x "$REPO/.venv/bin/python" ]; then
  echo "[demo] creating $REPO/.venv with $("$PYTHON_BOOT" --version)"
  "$PYTHON_BOOT" -m venv "$REPO/.venv"
fi
echo "[demo] installing requirements-demo.txt into $REPO/.venv"
"$REPO/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$REPO/requirements-demo.txt"
PY="$REPO/.venv/bin/python"
# GLOG_v=2: MindSpore's C++ log shows warnings and errors, not its INFO flood (no warning appears
# on a normal run; GLOG_v=3 would keep errors only).
export PYTHONPATH="$REPO" GLOG_v="${GLOG_v:-2}"

# The demo's sizes (README "Quick start" says how they were chosen). The photo set: 3 x 3 regions
# ("products") per photo, 3 of them test products, 5 views each, 64 px.
DATA="$OUT/data"
GRID=3 TEST_REGIONS=3 VIEWS=5 SIZE=64
SOFTMAX_EPOCHS=4 FINETUNE_EPOCHS=4
COMMON=(--image_size 64 --hflip false --eval_batch_size 32)
EVAL=(--dataset_path "$DATA" --eval_list test.txt --recall_ks 1,10 "${COMMON[@]}")
START=$SECONDS
step() { local t=$((SECONDS - START)); printf '\n=== [%02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }
recall() { sed -n 's/^eval_recall: //p' "$1"; }

if [ -f "$DATA/test.txt" ]; then
  step "reusing the demo dataset in $DATA"
else
  step "building the demo dataset in $DATA from scikit-image's photos"
  rm -rf "$DATA.partial"
  "$PY" -m src.demo_photos --output_path "$DATA.partial" --grid "$GRID" --test_regions "$TEST_REGIONS" \
    --views "$VIEWS" --size "$SIZE"
  # Prefix lists as long as their sources (SOP's half/tiny sizes exceed this set).
  TRAIN_N=$(($(wc -l < "$DATA.partial/Ebay_train.txt") - 1)) TEST_N=$(($(wc -l < "$DATA.partial/Ebay_test.txt") - 1))
  "$PY" -m src.sop_lists "$DATA.partial" --train-half "$TRAIN_N" --train-tiny "$TRAIN_N" \
    --test-half "$TEST_N" --test-tiny "$TEST_N"
  mv "$DATA.partial" "$DATA"
fi
CLASSES=$(awk '{print $2}' "$DATA/train.txt" | sort -u | wc -l)

step "untrained backbone (random initialisation)"
"$PY" "$REPO/eval.py" --random_init "${EVAL[@]}" | tee "$OUT/eval_untrained.txt"

final_ckpt() {  # final_ckpt STAGE EPOCHS: the stage's final checkpoint, or nothing
  local f
  for f in "$OUT/$1"/ckpt/resnet50_"$1"-"$2"_*.ckpt; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  return 0
}
# train_stage STAGE EPOCHS TITLE [train.py options...]: reuse the stage's final checkpoint if it exists, else
# train the stage (stopping with a message if it leaves no final checkpoint); sets STAGE_CKPT.
train_stage() {
  local stage="$1" epochs="$2" title="$3"
  shift 3
  STAGE_CKPT=$(final_ckpt "$stage" "$epochs")
  if [ -n "$STAGE_CKPT" ]; then
    step "$title: reusing $STAGE_CKPT"
    return 0
  fi
  step "$title"
  "$PY" "$REPO/train.py" --loss_name "$stage" --dataset_path "$DATA" --output_dir "$OUT/$stage" \
    --epoch_size "$epochs" --log_interval 6 "$@" "${COMMON[@]}"
  STAGE_CKPT=$(final_ckpt "$stage" "$epochs")
  if [ -z "$STAGE_CKPT" ]; then
    echo "error: the $stage stage wrote no final checkpoint under $OUT/$stage/ckpt" >&2
    exit 1
  fi
}

train_stage softmax "$SOFTMAX_EPOCHS" "stage 1: softmax pre-training on $CLASSES training products" \
  --class_num "$CLASSES" --batch_size 32 --lr_max 0.05 --lr_decay_mode cosine
SOFTMAX_CKPT=$STAGE_CKPT
step "evaluation after softmax pre-training"
"$PY" "$REPO/eval.py" --ckpt_path "$SOFTMAX_CKPT" "${EVAL[@]}" | tee "$OUT/eval_softmax.txt"

# Quadruplet (the seed's margin sample mining) on P x K batches: 6 products x all 5 of their views.
train_stage quadruplet "$FINETUNE_EPOCHS" "stage 2: quadruplet fine-tuning from $SOFTMAX_CKPT" \
  --ckpt_path "$SOFTMAX_CKPT" --batch_size 30 --samples_each_class "$VIEWS" --lr_max 0.01
FINETUNE_CKPT=$STAGE_CKPT
step "evaluation after quadruplet fine-tuning, with the retrieval picture"
"$PY" "$REPO/eval.py" --ckpt_path "$FINETUNE_CKPT" "${EVAL[@]}" --save_retrievals "$OUT/retrievals.png" \
  | tee "$OUT/eval_quadruplet.txt"

step "export to MindIR"
"$PY" "$REPO/export.py" --ckpt_file "$FINETUNE_CKPT" --file_name "$OUT/resnet50" "${COMMON[@]}"

step "CPU inference chain: preprocess -> MindIR runner -> postprocess (log: $OUT/infer/chain.log)"
mkdir -p "$OUT/infer"
if ! (cd "$OUT/infer" && RECALL_KS=1,10 bash "$REPO/scripts/run_infer_cpu.sh" "$OUT/resnet50.mindir" "$DATA" \
      --eval_list test.txt "${COMMON[@]}" > chain.log 2>&1); then
  tail -n 20 "$OUT/infer/chain.log" >&2
  echo "error: the inference chain failed (log: $OUT/infer/chain.log)" >&2
  exit 1
fi
tail -n 1 "$OUT/infer/chain.log"

TEST_IMAGES=$(wc -l < "$DATA/test.txt")
TEST_CLASSES=$(awk '{print $2}' "$DATA/test.txt" | sort -u | wc -l)
step "Recall@1 on the $TEST_CLASSES test products ($TEST_IMAGES images; none of them seen in training)"
printf '  %-40s %s\n' "untrained backbone (random init)" "$(recall "$OUT/eval_untrained.txt")" \
  "after softmax pre-training" "$(recall "$OUT/eval_softmax.txt")" \
  "after quadruplet fine-tuning" "$(recall "$OUT/eval_quadruplet.txt")" \
  "inference chain on the exported MindIR" "$(recall "$OUT/infer/acc.log")"
if [ "$(recall "$OUT/infer/acc.log")" != "$(recall "$OUT/eval_quadruplet.txt")" ]; then
  echo "error: the inference chain's Recall@1 differs from eval.py's" >&2
  exit 1
fi
echo "  (the chain's Recall@1 equals eval.py's)"
echo "outputs in $OUT:"
echo "  data/                   the demo dataset (SOP layout: Ebay_*.txt, train.txt, test.txt)"
echo "  softmax/, quadruplet/   each stage's ckpt/ and resolved config.yaml"
echo "  eval_*.txt              the three evaluations"
echo "  retrievals.png          6 test queries with their top 5 after fine-tuning"
echo "  resnet50.mindir         the exported feature network"
echo "  infer/                  the inference chain's files, chain.log and acc.log"
