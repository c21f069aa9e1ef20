#!/usr/bin/env bash
# Standalone training on one Ascend device (the seed's argument order).
usage() {
  echo "usage: bash run_standalone_train.sh [DATASET_PATH] [CKPT_PATH] [DEVICE_ID] [LOSS_NAME] [train.py options...]"
  echo "  CKPT_PATH: backbone weights to start from (ImageNet ResNet-50 or softmax stage); 'none' for random init"
  echo "  DEVICE_TARGET=CPU|GPU overrides the device (default Ascend). Logs: ./train/log.txt"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die_usage "4 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); CKPT_PATH="$2"; DEVICE_ID="$3"; LOSS_NAME="$4"; shift 4
need_dir "$DATASET_PATH" DATASET_PATH
need_int "$DEVICE_ID" DEVICE_ID
need_loss "$LOSS_NAME"
set_ckpt_args "$CKPT_PATH" CKPT_PATH
fresh_dir train
run_logged train/log.txt "$PYTHON" "$REPO/train.py" --device_target "${DEVICE_TARGET:-Ascend}" --device_id "$DEVICE_ID" \
  --loss_name "$LOSS_NAME" --dataset_path "$DATASET_PATH" --output_dir train "${CKPT_ARGS[@]}" "$@"
