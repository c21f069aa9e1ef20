#!/usr/bin/env bash
# The quick start, on CPU: set up .venv, build a small instance-retrieval set from the photos bundled
# with scikit-image, and run the whole recipe on it:
#   baselines without learning (raw pixels, untrained backbone, BatchNorm statistics alone)
#   -> softmax pre-training -> quadruplet fine-tuning -> evaluation (+ retrieval picture)
#   -> export (MindIR) -> the CPU inference chain (scripts/run_infer_cpu.sh),
# printing Recall@1 and MAP@R on the test products (disjoint from the training ones) with 95% intervals (a
# bootstrap over the test products) after each stage, and each stage's gain over the stage it started from with a
# paired interval.
# Re-running reuses .venv, the data and any stage whose final checkpoint exists (delete a stage's
# folder to redo it).
# Usage: [DEMO_SEED=1] bash scripts/run_demo.sh [OUTPUT_DIR (default ./demo_output)]
#   DEMO_SEED draws the data set (which regions are test products, the views) and seeds every training run.
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

# The demo's sizes (docs/learning.md "How the demo was sized" says how they were chosen). The photo
# set: 4 x 4 regions ("products") per photo, 3 of them test products, 10 views each, 32 px; the views
# turn by any angle and half of them are mirrored, so that no product is found by its pixels alone.
DATA="$OUT/data"
GRID=4 TEST_REGIONS=3 VIEWS=10 SIZE=32
VIEWPOINT=(--rotation 180 --flip)
SOFTMAX_EPOCHS=8 FINETUNE_EPOCHS=6 FINETUNE_LR=0.03
SEED=${DEMO_SEED:-1}
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "error: DEMO_SEED must be a non-negative integer, got '$SEED'" >&2; exit 2; }
# A folder holds the run of one seed: its data and stages are reused only by the same seed.
if [ -f "$OUT/demo_seed" ] && [ "$(cat "$OUT/demo_seed")" != "$SEED" ]; then
  echo "error: $OUT holds the demo run of DEMO_SEED=$(cat "$OUT/demo_seed"), not $SEED: choose another OUTPUT_DIR" >&2
  exit 2
fi
echo "$SEED" > "$OUT/demo_seed"
COMMON=(--image_size "$SIZE" --eval_batch_size 64)
# Training augmentation: mirrored views exist, so flips are fair; crops keep at least a quarter of a view.
AUGMENT=(--hflip true --crop_scale_min 0.25)
# The seed of every training run and of the random initialisation (config key seed).
EVAL=(--dataset_path "$DATA" --eval_list test.txt --recall_ks 1,10 --seed "$SEED" "${COMMON[@]}")
START=$SECONDS
step() { local t=$((SECONDS - START)); printf '\n=== [%02d:%02d] %s\n' $((t / 60)) $((t % 60)) "$*"; }
recall() { sed -n 's/^eval_recall: //p' "$1"; }
map_r() { sed -n 's/^map@r  *//p' "$1"; }
# evaluate NAME eval.py-options...: eval.py on the test products, its output in OUT/eval_NAME.txt and its features
# in OUT/eval_NAME.npz (the summary's intervals are computed from them)
evaluate() {
  local name="$1"; shift
  "$PY" "$REPO/eval.py" "$@" "${EVAL[@]}" --save_features "$OUT/eval_$name.npz" | tee "$OUT/eval_$name.txt"
}

if [ -f "$DATA/test.txt" ]; then
  step "reusing the demo dataset in $DATA"
else
  step "building the demo dataset in $DATA from scikit-image's photos"
  rm -rf "$DATA.partial"
  "$PY" -m src.data.demo_photos --output_path "$DATA.partial" --grid "$GRID" --test_regions "$TEST_REGIONS" \
    --views "$VIEWS" --size "$SIZE" --seed "$SEED" "${VIEWPOINT[@]}"
  # Prefix lists as long as their sources (SOP's half/tiny sizes exceed this set).
  TRAIN_N=$(($(wc -l < "$DATA.partial/Ebay_train.txt") - 1)) TEST_N=$(($(wc -l < "$DATA.partial/Ebay_test.txt") - 1))
  "$PY" -m src.data.sop_lists "$DATA.partial" --train-half "$TRAIN_N" --train-tiny "$TRAIN_N" \
    --test-half "$TEST_N" --test-tiny "$TEST_N"
  mv "$DATA.partial" "$DATA"
fi
CLASSES=$(awk '{print $2}' "$DATA/train.txt" | sort -u | wc -l)

step "baseline without learning: raw-pixel nearest neighbours (best of 8/16/32 px, RGB and gray)"
"$PY" -m src.evaluation.baselines --dataset_path "$DATA" --eval_list test.txt --recall_ks 1,10 \
  --save_features "$OUT/eval_raw_pixels.npz" | tee "$OUT/eval_raw_pixels.txt"

step "untrained backbone (random initialisation)"
evaluate untrained --random_init

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
    --epoch_size "$epochs" --log_interval 10 --seed "$SEED" "$@" "${COMMON[@]}"
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
evaluate bn_only --ckpt_path "$STAGE_CKPT"

train_stage softmax softmax "$SOFTMAX_EPOCHS" "stage 1: softmax pre-training on $CLASSES training products" \
  --class_num "$CLASSES" --batch_size 64 --lr_init 0.02 --lr_max 0.2 --warmup_epochs 2 --lr_decay_mode cosine \
  "${AUGMENT[@]}" --run_eval --eval_list test.txt --eval_interval 2
SOFTMAX_CKPT=$STAGE_CKPT
"$PY" -m src.training.history "$OUT/softmax/history.csv" --title "demo: softmax pre-training"
step "evaluation after softmax pre-training"
evaluate softmax --ckpt_path "$SOFTMAX_CKPT"

# Quadruplet (the seed's margin sample mining) on P x K batches of 12 products x 5 of their views, with the hinge
# for every anchor instead of once per batch, the rate decayed to 0 along a cosine (docs/learning.md
# "Fine-tuning that adds to softmax": the seed's once-per-batch hinge lowers Recall@1 here).
train_stage quadruplet quadruplet "$FINETUNE_EPOCHS" "stage 2: quadruplet fine-tuning from $SOFTMAX_CKPT" \
  --ckpt_path "$SOFTMAX_CKPT" --batch_size 60 --samples_each_class 5 --mining anchor --lr_max "$FINETUNE_LR" \
  --lr_end 0 --lr_decay_mode cosine "${AUGMENT[@]}"
FINETUNE_CKPT=$STAGE_CKPT
step "evaluation after quadruplet fine-tuning, with the retrieval picture"
evaluate quadruplet --ckpt_path "$FINETUNE_CKPT" --save_retrievals "$OUT/retrievals.png"

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

step "retrieval: index the test gallery without its first image, then search it with that image"
mkdir -p "$OUT/retrieval"
QUERY_LINE=$(head -n 1 "$DATA/test.txt")
tail -n +2 "$DATA/test.txt" > "$OUT/retrieval/gallery.txt"
"$PY" "$REPO/retrieve.py" index --ckpt_path "$FINETUNE_CKPT" --dataset_path "$DATA" \
  --list "$OUT/retrieval/gallery.txt" --index_dir "$OUT/retrieval/index" "${COMMON[@]}"
"$PY" "$REPO/retrieve.py" search --index_dir "$OUT/retrieval/index" "$DATA/${QUERY_LINE% *}" --top_k 5 \
  --json "$OUT/retrieval/search.json" --picture "$OUT/retrieval/search.png"
echo "  (the query is product ${QUERY_LINE##* }: results with label ${QUERY_LINE##* } are other views of it)"

TEST_IMAGES=$(wc -l < "$DATA/test.txt")
TEST_CLASSES=$(awk '{print $2}' "$DATA/test.txt" | sort -u | wc -l)
step "Recall@1 and MAP@R on the $TEST_CLASSES test products ($TEST_IMAGES images; none of them seen in training; DEMO_SEED=$SEED)"
echo "  95% intervals: a bootstrap over the test products; a gain's interval resamples the same products for both"
echo "  (the raw-pixel row is its best variant: $(sed -n 's/^best: raw pixels //p' "$OUT/eval_raw_pixels.txt"))"
RAW="raw pixels, no learning" UNTRAINED="untrained backbone" BN="BatchNorm statistics only"
SOFTMAX="softmax pre-training" FINETUNED="quadruplet fine-tuning"
"$PY" -m src.evaluation.bootstrap "$RAW=$OUT/eval_raw_pixels.npz" "$UNTRAINED=$OUT/eval_untrained.npz" \
  "$BN=$OUT/eval_bn_only.npz" "$SOFTMAX=$OUT/eval_softmax.npz" "$FINETUNED=$OUT/eval_quadruplet.npz" \
  --gain "$SOFTMAX:$UNTRAINED" --gain "$FINETUNED:$SOFTMAX" --gain "$FINETUNED:$RAW" --gain "$FINETUNED:$BN" \
  2> >(grep -v " INFO " >&2) | tee "$OUT/summary.txt"  # the table alone: the start-up INFO lines stay out of it
if [ "$(recall "$OUT/infer/acc.log")" != "$(recall "$OUT/eval_quadruplet.txt")" ] \
   || [ "$(map_r "$OUT/infer/acc.log")" != "$(map_r "$OUT/eval_quadruplet.txt")" ]; then
  echo "error: the inference chain's Recall@1 / MAP@R differ from eval.py's" >&2
  exit 1
fi
echo "  the inference chain on the exported MindIR: Recall@1 $(recall "$OUT/infer/acc.log"), MAP@R" \
  "$(map_r "$OUT/infer/acc.log"), equal to eval.py's after fine-tuning"
echo "outputs in $OUT:"
echo "  data/                   the demo dataset (SOP layout: Ebay_*.txt, train.txt, test.txt)"
echo "  bn_only/, softmax/, quadruplet/  each stage's ckpt/, resolved config.yaml and history.csv"
echo "  softmax/history.png     the softmax stage's loss and test Recall@1 against epoch"
echo "  eval_*.txt, eval_*.npz  the evaluations (raw pixels, untrained, BatchNorm only, softmax, quadruplet), features"
echo "  summary.txt             the table above"
echo "  retrievals.png          6 test queries with their top 5 after fine-tuning"
echo "  resnet50.mindir         the exported feature network"
echo "  infer/                  the inference chain's files, chain.log and acc.log"
echo "  retrieval/              the test gallery's index, a held-out query's top 5 (search.json, search.png)"
echo "search the index from a browser (http://127.0.0.1:8080/; Ctrl-C stops it):"
printf '  %q %q serve --index_dir %q\n' "$PY" "$REPO/retrieve.py" "$OUT/retrieval/index"
