#!/usr/bin/env bash
# Data-parallel training on 8 Ascend devices, one process per device, from an HCCL rank table
# (the seed's argument order). For a msrun launch use run_distribute_train_gpu.sh with DEVICE_TARGET=Ascend.
usage() {
  echo "usage: bash run_distribute_train.sh [RANK_TABLE_FILE] [DATASET_PATH] [PRETRAINED_CKPT_PATH] [LOSS_NAME] [train.py options...]"
  echo "  PRETRAINED_CKPT_PATH: backbone weights to start from; 'none' for random init"
  echo "  RANK_SIZE (default 8). Logs: ./train_parallel<rank>/log.txt; exit status: the first failing rank's"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die_usage "4 arguments needed, got $#"
RANK_TABLE_FILE=$(abs_path "$1"); DATASET_PATH=$(abs_path "$2"); CKPT_PATH="$3"; LOSS_NAME="$4"; shift 4
need_file "$RANK_TABLE_FILE" RANK_TABLE_FILE
need_dir "$DATASET_PATH" DATASET_PATH
need_loss "$LOSS_NAME"
set_ckpt_args "$CKPT_PATH" PRETRAINED_CKPT_PATH
export RANK_TABLE_FILE RANK_SIZE="${RANK_SIZE:-8}" DEVICE_NUM="${RANK_SIZE:-8}"
pids=()
for ((i = 0; i < RANK_SIZE; i++)); do
  export DEVICE_ID=$i RANK_ID=$i
  fresh_dir "train_parallel$i"
  "$PYTHON" "$REPO/train.py" --run_distribute --device_target Ascend --loss_name "$LOSS_NAME" \
    --dataset_path "$DATASET_PATH" --output_dir "train_parallel$i" "${CKPT_ARGS[@]}" "$@" \
    > "train_parallel$i/log.txt" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    rc=$?; echo "rank $i failed with exit status $rc, see train_parallel$i/log.txt" >&2
    [ "$status" -ne 0 ] || status=$rc
  fi
done
exit "$status"
