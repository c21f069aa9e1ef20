#!/usr/bin/env bash
# Evaluate a checkpoint on one Ascend device (the seed's argument order).
usage() {
  echo "usage: bash run_eval.sh [DATASET_PATH] [CKPT_PATH] [DEVICE_ID] [eval.py options...]"
  echo "  DEVICE_ID defaults to 0; DEVICE_TARGET=CPU|GPU overrides the device. Logs: ./eval/log.txt"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || die_usage "at least 2 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); CKPT_PATH=$(abs_path "$2"); DEVICE_ID="${3:-0}"; shift $(( $# >= 3 ? 3 : 2 ))
need_dir "$DATASET_PATH" DATASET_PATH
need_file "$CKPT_PATH" CKPT_PATH
need_int "$DEVICE_ID" DEVICE_ID
fresh_dir eval
run_logged eval/log.txt "$PYTHON" "$REPO/eval.py" --device_target "${DEVICE_TARGET:-Ascend}" --device_id "$DEVICE_ID" \
  --dataset_path "$DATASET_PATH" --ckpt_path "$CKPT_PATH" "$@"
