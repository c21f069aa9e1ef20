#!/usr/bin/env bash
# The quick start, on CPU: set up .venv, build a small instance-retrieval set from the photos bundled
# with scikit-image, and run the whole recipe on it:
#   baselines without learning (raw pixels, untrained backbone, BatchNorm statistics alone)
#   -> softmax pre-training -> quadruplet fine-tuning -> evaluation (+ retrieval picture)
#   -> export (MindIR) -> the CPU inference chain (scripts/run_infer_cpu.sh),
# printing Recall@1 and MAP@R on the test products (disjoint from the training ones) after each stage.
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

# The demo's sizes (README "Quick start" says how they were chosen and what was measured). The photo
# set: 4 x 4 regions ("products") per photo, 3 of them test products, 10 views each, 32 px; the views
# turn by any angle and half of them are mirrored, so that no product is found by its pixels alone.
DATA="$OUT/data"
GRID=4 TEST_REGIONS=3 VIEWS=10 SIZE=32
VIEWPOINT=(--rotation 180 --flip)
SOFTMAX_EPOCHS=8 FINETUNE_EPOCHS=3 FINETUNE_LR=0.03
COMMON=(--image_size "$SIZE" --eval_batch_size 64)
# Training augmentation: mirrored views exist, so flips are fair; crops keep at least a quarter of a view.
AUGMENT=(--hflip true --crop_scale_min 0.25)
EVAL=(--dataset_path "$DATA" --eval_list test.txt --recall_ks 1,10 "${COMMON[@]}")
START=$SECONDS
step() { local t=$((SECONDS - START)); printf '\n=== [%02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }
recall() { sed -n 's/^eval_recall: //p' "$1"; }
map_r() { sed -n 's/^map@r  *//p' "$1"; }

if [ -f "$DATA/test.txt" ]; then
  step "reusing the demo dataset in $DATA"
else
  step "building the demo dataset in $DATA from scikit-image's photos"
  rm -rf "$DATA.partial"
  "$PY" -m src.data.demo_photos --output_path "$DATA.partial" --grid "$GRID" --test_regions "$TEST_REGIONS" \
    --views "$VIEWS" --size "$SIZE" "${VIEWPOINT[@]}"
  # Prefix lists as long as their sources (SOP's half/tiny sizes exceed this set).
  TRAIN_N=$(($(wc -l < "$DATA.partial/Ebay_train.txt") - 1)) TEST_N=$(($(wc -l < "$DATA.partial/Ebay_test.txt") - 1))
  "$PY" -m src.data.sop_lists "$DATA.partial" --train-half "$TRAIN_N" --train-tiny "$TRAIN_N" \
    --test-half "$TEST_N" --test-tiny "$TEST_N"
  mv "$DATA.partial" "$DATA"
fi
CLASSES=$(awk '{print $2}' "$DATA/train.txt" | sort -u | wc -l)

step "baseline without learning: raw-pixel nearest neighbours (best of 8/16/32 px, RGB and gray)"
"$PY" -m src.evaluation.baselines --dataset_path "$DATA" --eval_list test.txt --recall_ks 1,10 | tee "$OUT/eval_raw_pixels.txt"

step "untrained backbone (random initialisation)"
"$PY" "$REPO/eval.py" --random_init "${EVAL[@]}" | tee "$OUT/eval_untrained.txt"

final_ckpt() {  # final_ckpt FOLDER LOSS EPOCHS: the final checkpoint of a stage's run in OUT/FOLDER, or nothing
  local f
  for f in "$OUT/$1"/ckpt/resnet50_"$2"-"$3"_*.ckpt; do
    if [ -f "$f" ]; then echo "$f"; return 0; fi
  done
  return 0
}
# train_stage FOLDER LOSS EPOCHS TITLE [train.py options...]: reuse the final checkpoint in OUT/FOLDER if it
# exists, else train the stage there (stopping with a message if it leaves no final checkpoint); sets STAGE_CKPT.
train_stage() {
  local folder="$1" loss="$2" epochs="$3" title="$4"
  shift 4
  STAGE_CKPT=$(final_ckpt "$folder" "$loss" "$epochs")
  if [ -n "$STAGE_CKPT" ]; then
    step "$title: reusing $STAGE_CKPT"
    return 0
  fi
  step "$title"
  "$PY" "$REPO/train.py" --loss_name "$loss" --dataset_path "$DATA" --output_dir "$OUT/$folder" \
    --epoch_size "$epochs" --log_interval 10 "$@" "${COMMON[@]}"
  STAGE_CKPT=$(final_ckpt "$folder" "$loss" "$epochs")
  if [ -z "$STAGE_CKPT" ]; then
    echo "error: the $loss stage wrote no final checkpoint under $OUT/$folder/ckpt" >&2
    exit 1
  fi
}

# Baseline without learning: the softmax stage's batches at learning rate 0 for one epoch. The weights stay
# the random initialisation's; only BatchNorm's statistics move to the data's (momentum 0.9, 38 steps).
train_stage bn_only softmax 1 "baseline without learning: BatchNorm statistics only (softmax batches at lr 0, 1 epoch)" \
  --class_num "$CLASSES" --batch_size 64 --lr_init 0 --lr_max 0 --lr_end 0 "${AUGMENT[@]}"
"$PY" "$REPO/eval.py" --ckpt_path "$STAGE_CKPT" "${EVAL[@]}" | tee "$OUT/eval_bn_only.txt"

train_stage softmax softmax "$SOFTMAX_EPOCHS" "stage 1: softmax pre-training on $CLASSES training products" \
  --class_num "$CLASSES" --batch_size 64 --lr_init 0.02 --lr_max 0.2 --warmup_epochs 2 --lr_decay_mode cosine \
  "${AUGMENT[@]}" --run_eval --eval_list test.txt --eval_interval 2
SOFTMAX_CKPT=$STAGE_CKPT
"$PY" -m src.training.history "$OUT/softmax/history.csv" --title "demo: softmax pre-training"
step "evaluation after softmax pre-training"
"$PY" "$REPO/eval.py" --ckpt_path "$SOFTMAX_CKPT" "${EVAL[@]}" | tee "$OUT/eval_softmax.txt"

# Quadruplet (the seed's margin sample mining) on P x K batches of 12 products x 5 of their views, with the hinge
# for every anchor instead of once per batch, the rate decayed to 0 along a cosine (README "Fine-tuning that
# adds to softmax": the seed's once-per-batch hinge lowers Recall@1 here).
train_stage quadruplet quadruplet "$FINETUNE_EPOCHS" "stage 2: quadruplet fine-tuning from $SOFTMAX_CKPT" \
  --ckpt_path "$SOFTMAX_CKPT" --batch_size 60 --samples_each_class 5 --mining anchor --lr_max "$FINETUNE_LR" \
  --lr_end 0 --lr_decay_mode cosine "${AUGMENT[@]}"
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
step "Recall@1 and MAP@R on the $TEST_CLASSES test products ($TEST_IMAGES images; none of them seen in training)"
row() { printf '  %-52s %-9s %s\n' "$1" "$2" "$3"; }
row "" "Recall@1" "MAP@R"
row "raw pixels, no learning ($(sed -n 's/^best: raw pixels //p' "$OUT/eval_raw_pixels.txt"))" \
  "$(recall "$OUT/eval_raw_pixels.txt")" "$(map_r "$OUT/eval_raw_pixels.txt")"
for stage in untrained:"untrained backbone (random init)" bn_only:"BatchNorm statistics only (lr 0)" \
             softmax:"after softmax pre-training" quadruplet:"after quadruplet fine-tuning"; do
  row "${stage#*:}" "$(recall "$OUT/eval_${stage%%:*}.txt")" "$(map_r "$OUT/eval_${stage%%:*}.txt")"
done
row "inference chain on the exported MindIR" "$(recall "$OUT/infer/acc.log")" "$(map_r "$OUT/infer/acc.log")"
if [ "$(recall "$OUT/infer/acc.log")" != "$(recall "$OUT/eval_quadruplet.txt")" ]; then
  echo "error: the inference chain's Recall@1 differs from eval.py's" >&2
  exit 1
fi
echo "  (the chain's Recall@1 equals eval.py's)"
awk -v f="$(recall "$OUT/eval_quadruplet.txt")" -v p="$(recall "$OUT/eval_raw_pixels.txt")" \
    -v b="$(recall "$OUT/eval_bn_only.txt")" -v s="$(recall "$OUT/eval_softmax.txt")" \
    'function side(d) { return d >= 0 ? "above" : "below" } function gap(d) { return d >= 0 ? d : -d }
  BEGIN { printf "  fine-tuned Recall@1: %.4f %s softmax pre-training, %.4f %s raw pixels, %.4f %s BatchNorm statistics alone\n",
          gap(f - s), side(f - s), gap(f - p), side(f - p), gap(f - b), side(f - b) }'
echo "outputs in $OUT:"
echo "  data/                   the demo dataset (SOP layout: Ebay_*.txt, train.txt, test.txt)"
echo "  bn_only/, softmax/, quadruplet/  each stage's ckpt/, resolved config.yaml and history.csv"
echo "  softmax/history.png     the softmax stage's loss and test Recall@1 against epoch"
echo "  eval_*.txt              the evaluations (raw pixels, untrained, BatchNorm only, softmax, quadruplet)"
echo "  retrievals.png          6 test queries with their top 5 after fine-tuning"
echo "  resnet50.mindir         the exported feature network"
echo "  infer/                  the inference chain's files, chain.log and acc.log"
