#!/usr/bin/env bash
# Offline inference on an Ascend 310/310P (or a CPU) with MindSpore Lite: build the runner, preprocess, run it,
# compute the metrics.
# Each step stops the chain with its own exit status when it fails.
usage() {
  echo "usage: bash run_infer_310.sh [MINDIR_PATH] [DATASET_PATH] [DEVICE_ID] [preprocess.py options...]"
  echo "  DEVICE_ID defaults to 0. preprocess.py options (e.g. --eval_list test.txt --image_size 224; default"
  echo "  list test_half.txt) must match the exported MindIR. Writes build.log, preprocess.log, infer.log,"
  echo "  postprocess.log, preprocess_Result/, result_Files/, time_Result/ and acc.log in the current folder."
  echo "  Environment: MS_LITE_HOME (or LITE_HOME): the unpacked MindSpore Lite package the runner is built"
  echo "  against; DEVICE_TYPE=Ascend (default) or CPU (the same runner on Lite's CPU backend);"
  echo "  RECALL_KS=1,10 sets the K of Recall@K reported in acc.log (default 1,10,100,1000)."
}
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || die_usage "at least 2 arguments needed, got $#"
MINDIR_PATH=$(abs_path "$1"); DATASET_PATH=$(abs_path "$2"); shift 2
DEVICE_ID=0
if [ $# -ge 1 ] && [[ "$1" != -* ]]; then DEVICE_ID="$1"; shift; fi
need_file "$MINDIR_PATH" MINDIR_PATH
need_dir "$DATASET_PATH" DATASET_PATH
need_int "$DEVICE_ID" DEVICE_ID
DEVICE_TYPE="${DEVICE_TYPE:-Ascend}"
case "$DEVICE_TYPE" in Ascend|CPU) ;; *) die_usage "DEVICE_TYPE must be Ascend or CPU, got '$DEVICE_TYPE'" ;; esac
INFER_DIR="$REPO/ascend310_infer"
RUNNER_DIR="${INFER_OUT_DIR:-$INFER_DIR/out}"

run_step() {  # run_step NAME LOG CMD...: run one step; if it fails, stop here with its exit status
  local name="$1" log="$2" status=0
  shift 2
  run_logged "$log" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "error: $name failed with exit status $status (log: $PWD/$log); later steps not run" >&2
    exit "$status"
  fi
}

# Build first: a missing toolchain should not cost a preprocessing pass over the whole list.
run_step build build.log bash "$INFER_DIR/build.sh"
run_step preprocess preprocess.log "$PYTHON" "$REPO/preprocess.py" --dataset_path "$DATASET_PATH" "$@" \
  --output_path preprocess_Result
fresh_dir result_Files
fresh_dir time_Result
# The runner needs Lite's (and on Ascend CANN's) environment; the Python steps do not get it.
run_step inference infer.log bash -c 'set +u; source "$1"; shift; exec "$@"' _ "$RUNNER_DIR/env.sh" \
  "$RUNNER_DIR/main" --mindir_path="$MINDIR_PATH" --dataset_path="$PWD/preprocess_Result/img_data" \
  --device_id="$DEVICE_ID" --device_type="$DEVICE_TYPE"
rm -f acc.log
run_step postprocess postprocess.log "$PYTHON" "$REPO/postprocess.py" --result_path result_Files \
  --label_path preprocess_Result/label --output acc.log --recall_ks "${RECALL_KS:-1,10,100,1000}"
echo "R@1: $(sed -n 's/^eval_recall: //p' acc.log) (acc.log in $PWD)"
