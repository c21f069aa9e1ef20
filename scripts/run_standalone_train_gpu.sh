#!/usr/bin/env bash
# Standalone training on one GPU (the seed's argument order).
usage() {
  echo "usage: bash run_standalone_train_gpu.sh [DATASET_PATH] [DEVICE_ID] [LOSS_NAME] [CHECKPOINT_PATH] [train.py options...]"
  echo "  CHECKPOINT_PATH: backbone weights to start from; 'none' for random init"
  echo "  DEVICE_TARGET=CPU overrides the device (default GPU). Logs: ./train/log.txt"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die_usage "4 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); DEVICE_ID="$2"; LOSS_NAME="$3"; CKPT_PATH="$4"; shift 4
need_dir "$DATASET_PATH" DATASET_PATH
need_int "$DEVICE_ID" DEVICE_ID
need_loss "$LOSS_NAME"
set_ckpt_args "$CKPT_PATH" CHECKPOINT_PATH
fresh_dir train
run_logged train/log.txt "$PYTHON" "$REPO/train.py" --device_target "${DEVICE_TARGET:-GPU}" --device_id "$DEVICE_ID" \
  --loss_name "$LOSS_NAME" --dataset_path "$DATASET_PATH" --output_dir train "${CKPT_ARGS[@]}" "$@"
