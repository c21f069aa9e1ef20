#!/usr/bin/env bash
# Data-parallel training with msrun: 8 GPUs by default (the seed's argument order).
usage() {
  echo "usage: bash run_distribute_train_gpu.sh [DATASET_PATH] [LOSS_NAME] [CHECKPOINT_PATH] [train.py options...]"
  echo "  CHECKPOINT_PATH: backbone weights to start from; 'none' for random init"
  echo "  WORKER_NUM (default 8), DEVICE_TARGET (default GPU; CPU works too), MASTER_PORT (default 8118)"
  echo "  Logs: ./train_parallel/log.txt and ./train_parallel/worker_<rank>.log"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 3 ] || die_usage "3 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); LOSS_NAME="$2"; CKPT_PATH="$3"; shift 3
need_dir "$DATASET_PATH" DATASET_PATH
need_loss "$LOSS_NAME"
WORKER_NUM="${WORKER_NUM:-8}"; need_int "$WORKER_NUM" WORKER_NUM
set_ckpt_args "$CKPT_PATH" CHECKPOINT_PATH
MSRUN="$(dirname "$PYTHON")/msrun"; [ -x "$MSRUN" ] || MSRUN=msrun
fresh_dir train_parallel
run_logged train_parallel/log.txt "$MSRUN" --worker_num="$WORKER_NUM" --local_worker_num="$WORKER_NUM" \
  --master_port="${MASTER_PORT:-8118}" --log_dir=train_parallel --join=True \
  "$REPO/train.py" --run_distribute --device_target "${DEVICE_TARGET:-GPU}" --loss_name "$LOSS_NAME" \
  --dataset_path "$DATASET_PATH" --output_dir train_parallel "${CKPT_ARGS[@]}" "$@"
