#!/usr/bin/env bash
# Offline inference on CPU, the Ascend 310 chain with src/deploy/infer_cpu.py as the runner:
# preprocess -> runner -> postprocess. Each step stops the chain with its own exit status when it fails.
usage() {
  echo "usage: bash run_infer_cpu.sh [MODEL_PATH] [DATASET_PATH] [preprocess.py options...]"
  echo "  MODEL_PATH: export.py's MindIR, or its ONNX file with BACKEND=onnxruntime or BACKEND=openvino."
  echo "  preprocess.py options (e.g. --eval_list test.txt --image_size 224; default list test_half.txt) must"
  echo "  match the exported model. Writes preprocess.log, infer.log, postprocess.log, preprocess_Result/,"
  echo "  result_Files/, time_Result/ and acc.log in the current folder."
  echo "  RECALL_KS=1,10 (environment) sets the K of Recall@K reported in acc.log (default 1,10,100,1000)."
  echo "  BACKEND=mindspore|onnxruntime|openvino (environment) runs the model (default mindspore); THREADS=N"
  echo "  its threads (default: every core)."
  echo "  PRECISION=fp32|bf16|int8 (environment): bf16 runs the float32 ONNX file in bfloat16 (openvino, on CPUs"
  echo "  with AVX512_BF16 or AMX); int8 runs an int8 ONNX file (export.py --quantize int8). Default fp32."
}
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || die_usage "at least 2 arguments needed, got $#"
MODEL_PATH=$(abs_path "$1"); DATASET_PATH=$(abs_path "$2"); shift 2
need_file "$MODEL_PATH" MODEL_PATH
need_dir "$DATASET_PATH" DATASET_PATH
BACKEND=${BACKEND:-mindspore}
case "$BACKEND" in
  mindspore) WANT=.mindir ;;
  onnxruntime|openvino) WANT=.onnx ;;
  *) die_usage "BACKEND must be mindspore, onnxruntime or openvino, got '$BACKEND'" ;;
esac
PRECISION=${PRECISION:-fp32}
case "$PRECISION" in
  fp32) ;;
  bf16) [ "$BACKEND" = openvino ] || die_usage "PRECISION=bf16 runs on BACKEND=openvino, got BACKEND=$BACKEND" ;;
  int8) [ "$BACKEND" != mindspore ] || die_usage "PRECISION=int8 runs on BACKEND=onnxruntime or openvino" ;;
  *) die_usage "PRECISION must be fp32, bf16 or int8, got '$PRECISION'" ;;
esac
[[ "${MODEL_PATH,,}" == *"$WANT" ]] || die_usage "BACKEND=$BACKEND runs a $WANT file, got MODEL_PATH '$MODEL_PATH'"
[ -z "${THREADS:-}" ] || need_int "$THREADS" THREADS

run_step() {  # run_step NAME LOG CMD...: run one step; if it fails, stop here with its exit status
  local name="$1" log="$2" status=0
  shift 2
  run_logged "$log" "$@" || status=$?
  if [ "$status" -ne 0 ]; then
    echo "error: $name failed with exit status $status (log: $PWD/$log); later steps not run" >&2
    exit "$status"
  fi
}

run_step preprocess preprocess.log "$PYTHON" "$REPO/preprocess.py" --dataset_path "$DATASET_PATH" "$@" \
  --output_path preprocess_Result
fresh_dir result_Files
fresh_dir time_Result
THREAD_ARGS=()
[ -z "${THREADS:-}" ] || THREAD_ARGS=(--threads "$THREADS")
run_step inference infer.log "$PYTHON" -m src.deploy.infer_cpu --model_path "$MODEL_PATH" \
  --backend "$BACKEND" --precision "$PRECISION" "${THREAD_ARGS[@]}" --dataset_path preprocess_Result/img_data --output_dir .
rm -f acc.log
run_step postprocess postprocess.log "$PYTHON" "$REPO/postprocess.py" --result_path result_Files \
  --label_path preprocess_Result/label --output acc.log --recall_ks "${RECALL_KS:-1,10,100,1000}"
echo "R@1: $(sed -n 's/^eval_recall: //p' acc.log) (acc.log in $PWD)"
