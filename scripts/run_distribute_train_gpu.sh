#!/usr/bin/env bash
# Data-parallel training with msrun: 8 GPUs by default (the seed's argument order), on one node or several.
usage() {
  echo "usage: bash run_distribute_train_gpu.sh [DATASET_PATH] [LOSS_NAME] [CHECKPOINT_PATH] [train.py options...]"
  echo "  CHECKPOINT_PATH: backbone weights to start from; 'none' for random init"
  echo "  Environment: WORKER_NUM workers (devices) on this node (default 8), DEVICE_TARGET (default GPU;"
  echo "  Ascend and CPU work too), MASTER_PORT (default 8118)."
  echo "  Several nodes: run this on every node with the same NODE_NUM (nodes), WORKER_NUM, MASTER_ADDR (node 0's"
  echo "  address, reachable from all) and MASTER_PORT, and its own NODE_RANK (0 .. NODE_NUM-1); node 0 first."
  echo "  Ranks: NODE_RANK * WORKER_NUM + local index. DATASET_PATH (and CHECKPOINT_PATH) must be readable at the"
  echo "  same path on every node. Logs: ./train_parallel/log.txt and ./train_parallel/worker_<rank>.log"
}
source "$(dirname "$0")/common.sh"
[ $# -ge 3 ] || die_usage "3 arguments needed, got $#"
DATASET_PATH=$(abs_path "$1"); LOSS_NAME="$2"; CKPT_PATH="$3"; shift 3
need_dir "$DATASET_PATH" DATASET_PATH
need_loss "$LOSS_NAME"
WORKER_NUM="${WORKER_NUM:-8}"; need_int "$WORKER_NUM" WORKER_NUM
NODE_NUM="${NODE_NUM:-1}"; need_int "$NODE_NUM" NODE_NUM
NODE_RANK="${NODE_RANK:-0}"; need_int "$NODE_RANK" NODE_RANK
MASTER_PORT="${MASTER_PORT:-8118}"; need_int "$MASTER_PORT" MASTER_PORT
[ "$WORKER_NUM" -ge 1 ] && [ "$NODE_NUM" -ge 1 ] || die_usage "WORKER_NUM and NODE_NUM must be at least 1"
[ "$NODE_RANK" -lt "$NODE_NUM" ] || die_usage "NODE_RANK must be below NODE_NUM=$NODE_NUM, got $NODE_RANK"
if [ "$NODE_NUM" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  die_usage "NODE_NUM=$NODE_NUM needs MASTER_ADDR: the address of node 0 that every node can reach"
fi
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
set_ckpt_args "$CKPT_PATH" CHECKPOINT_PATH
MSRUN="$(dirname "$PYTHON")/msrun"; [ -x "$MSRUN" ] || MSRUN=msrun
fresh_dir train_parallel
echo "node $NODE_RANK of $NODE_NUM: ranks $((NODE_RANK * WORKER_NUM))-$(((NODE_RANK + 1) * WORKER_NUM - 1)) of" \
  "$((NODE_NUM * WORKER_NUM)), scheduler $MASTER_ADDR:$MASTER_PORT"
run_logged train_parallel/log.txt "$MSRUN" --worker_num="$((NODE_NUM * WORKER_NUM))" \
  --local_worker_num="$WORKER_NUM" --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" \
  --node_rank="$NODE_RANK" --log_dir=train_parallel --join=True \
  "$REPO/train.py" --run_distribute --device_target "${DEVICE_TARGET:-GPU}" --loss_name "$LOSS_NAME" \
  --dataset_path "$DATASET_PATH" --output_dir train_parallel "${CKPT_ARGS[@]}" "$@"
