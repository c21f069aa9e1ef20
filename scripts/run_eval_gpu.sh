#!/usr/bin/env bash
# Evaluate a checkpoint on one GPU (the seed's argument order).
usage() {
  echo "usage: bash run_eval_gpu.sh [DATASET_PATH] [CHECKPOINT_PATH] [DEVICE_ID] [LOSS_NAME](optional) [eval.py options...]"
  echo "  LOSS_NAME picks the stage config for image size and eval settings (default triplet)"
  echo "  DEVICE_TARGET=CPU overrides the device (default GPU). Logs: ./eval/log.txt"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 3 ] || die_usage "at least 3 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); CKPT_PATH=$(abs_path "$2"); DEVICE_ID="$3"; shift 3
LOSS_NAME=triplet
if [ $# -ge 1 ] && [[ "$1" != --* ]]; then LOSS_NAME="$1"; shift; fi
need_dir "$DATASET_PATH" DATASET_PATH
need_file "$CKPT_PATH" CHECKPOINT_PATH
need_int "$DEVICE_ID" DEVICE_ID
need_loss "$LOSS_NAME"
fresh_dir eval
run_logged eval/log.txt "$PYTHON" "$REPO/eval.py" --device_target "${DEVICE_TARGET:-GPU}" --device_id "$DEVICE_ID" \
  --loss_name "$LOSS_NAME" --dataset_path "$DATASET_PATH" --ckpt_path "$CKPT_PATH" "$@"
