#!/usr/bin/env bash
# Data-parallel training on 8 Ascend devices per server, one process per device, from an HCCL rank table
# (the seed's argument order). For a msrun launch use run_distribute_train_gpu.sh with DEVICE_TARGET=Ascend.
usage() {
  echo "usage: bash run_distribute_train.sh [RANK_TABLE_FILE] [DATASET_PATH] [PRETRAINED_CKPT_PATH] [LOSS_NAME] [train.py options...]"
  echo "  PRETRAINED_CKPT_PATH: backbone weights to start from; 'none' for random init"
  echo "  DEVICE_NUM devices on this server (default 8). Several servers: one rank table listing all of them,"
  echo "  and on each server RANK_SIZE (all ranks, default DEVICE_NUM) and RANK_START (its first rank: 0, 8, 16...)."
  echo "  Logs: ./train_parallel<rank>/log.txt; exit status: the first failing rank's"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 4 ] || die_usage "4 arguments needed, got $#"
RANK_TABLE_FILE=$(abs_path "$1"); DATASET_PATH=$(abs_path "$2"); CKPT_PATH="$3"; LOSS_NAME="$4"; shift 4
need_file "$RANK_TABLE_FILE" RANK_TABLE_FILE
need_dir "$DATASET_PATH" DATASET_PATH
need_loss "$LOSS_NAME"
set_ckpt_args "$CKPT_PATH" PRETRAINED_CKPT_PATH
DEVICE_NUM="${DEVICE_NUM:-8}"; need_int "$DEVICE_NUM" DEVICE_NUM
RANK_SIZE="${RANK_SIZE:-$DEVICE_NUM}"; need_int "$RANK_SIZE" RANK_SIZE
RANK_START="${RANK_START:-0}"; need_int "$RANK_START" RANK_START
[ "$DEVICE_NUM" -ge 1 ] || die_usage "DEVICE_NUM must be at least 1"
[ $((RANK_START + DEVICE_NUM)) -le "$RANK_SIZE" ] ||
  die_usage "RANK_START=$RANK_START + DEVICE_NUM=$DEVICE_NUM exceeds RANK_SIZE=$RANK_SIZE (all ranks of the rank table)"
export RANK_TABLE_FILE RANK_SIZE DEVICE_NUM
pids=()
for ((i = 0; i < DEVICE_NUM; i++)); do
  rank=$((RANK_START + i))
  export DEVICE_ID=$i RANK_ID=$rank
  fresh_dir "train_parallel$rank"
  "$PYTHON" "$REPO/train.py" --run_distribute --device_target Ascend --loss_name "$LOSS_NAME" \
    --dataset_path "$DATASET_PATH" --output_dir "train_parallel$rank" "${CKPT_ARGS[@]}" "$@" \
    > "train_parallel$rank/log.txt" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  rc=0
  wait "${pids[$i]}" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "rank $((RANK_START + i)) failed with exit status $rc, see train_parallel$((RANK_START + i))/log.txt" >&2
    [ "$status" -ne 0 ] || status=$rc
  fi
done
exit "$status"
