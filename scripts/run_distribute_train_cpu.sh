#!/usr/bin/env bash
# Data-parallel training on CPU processes with msrun (2 workers by default): the GPU launcher on CPU.
usage() {
  echo "usage: bash run_distribute_train_cpu.sh [DATASET_PATH] [LOSS_NAME] [CHECKPOINT_PATH] [train.py options...]"
  echo "  WORKER_NUM workers on this node (default 2), MASTER_PORT (default 8118); several nodes: NODE_NUM,"
  echo "  NODE_RANK, MASTER_ADDR as for run_distribute_train_gpu.sh. Logs: ./train_parallel/"
}
[ $# -ge 3 ] || { usage >&2; exit 2; }
WORKER_NUM="${WORKER_NUM:-2}" DEVICE_TARGET=CPU exec bash "$(dirname "$0")/run_distribute_train_gpu.sh" "$@"
