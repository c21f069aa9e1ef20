"""CPU stand-in for the Ascend 310 runner (ascend310_infer/): same flags, inputs and output files.

    python -m src.deploy.infer_cpu --mindir_path resnet50.mindir --dataset_path preprocess_Result/img_data
    python -m src.deploy.infer_cpu --backend openvino --model_path resnet50.onnx --dataset_path ...
    python -m src.deploy.infer_cpu --backend openvino --precision int8 --model_path resnet50_int8.onnx ...

Runs the model on CPU, one *.bin input file (sorted by name) per call: --backend mindspore (default) runs the
MindIR through MindSpore (`nn.GraphCell(ms.load(path))`); onnxruntime / openvino run the ONNX export
(src/deploy/engines.py) in --precision fp32, bf16 (openvino) or int8 (an int8 file of export.py --quantize int8).
It writes <output_dir>/result_Files/<name>_<k>.bin per output k and
the average latency to <output_dir>/time_Result/test_perform_static.txt (see src/deploy/infer_data.py).
"""
import argparse
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import mind_ir_pb2

from src.deploy.engines import add_engine_arguments, check_backend, check_threads, open_engine
from src.deploy.infer_data import RESULT_DIR, list_input_files, read_array, result_name, write_latency
from src.deploy.quantize import check_precision
from src.runtime.atomic_file import write_atomic
from src.runtime.cli import run
from src.runtime.context import init_context, set_cpu_threads
from src.runtime.log import Progress, get_logger

logger = get_logger()
_FLOAT = 1  # mind_ir TensorProto.DataType FLOAT


def mindir_input_shape(mindir_path):
    """Shape of the MindIR's single float32 input, read from the file's graph description."""
    model = mind_ir_pb2.ModelProto()
    with open(mindir_path, "rb") as f:
        model.ParseFromString(f.read())
    inputs = [tensor for value in model.graph.input for tensor in value.tensor]
    if len(inputs) != 1:
        raise ValueError(f"{mindir_path}: expected a model with one input, found {len(inputs)}")
    if inputs[0].data_type != _FLOAT:
        raise ValueError(f"{mindir_path}: the input is not float32 (MindIR data_type {inputs[0].data_type})")
    return tuple(int(d) for d in inputs[0].dims)


def mindspore_runner(mindir_path, threads):
    """numpy (input) -> list of numpy outputs, through the MindIR in MindSpore."""
    set_cpu_threads(threads)
    net = nn.GraphCell(ms.load(mindir_path))

    def forward(x):
        outputs = net(ms.Tensor(x))
        return [out.asnumpy() for out in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]

    return forward


def engine_runner(engine):
    """numpy (input) -> [numpy output], through an engine of src.deploy.engines."""
    return lambda x: [engine(x)]


def run_model(forward, input_files, output_dir, input_shape):
    """Run every input file through `forward`; write its outputs. Returns the mean latency (ms) per call."""
    count = int(np.prod(input_shape))
    result_dir = os.path.join(output_dir, RESULT_DIR)
    os.makedirs(result_dir, exist_ok=True)
    # One untimed call compiles the graph, as Model::Build does before the C++ runner's timed calls.
    forward(np.zeros(input_shape, np.float32))
    progress = Progress(len(input_files), "inference", logger)
    total = 0.0
    for path in input_files:
        x = read_array(path, np.float32, count).reshape(input_shape)
        start = time.perf_counter()
        outputs = forward(x)
        total += time.perf_counter() - start
        for k, out in enumerate(outputs):
            write_atomic(os.path.join(result_dir, result_name(path, k)), out.tobytes())
        progress.update()
    return 1000.0 * total / len(input_files)


def parse_args(argv=None):
    # No config here, so not src.runtime.cli.make_parser (whose help offers config overrides).
    parser = argparse.ArgumentParser(prog="python -m src.deploy.infer_cpu",
                                     description="Run an exported model (MindIR or ONNX) on CPU over preprocessed "
                                                 "*.bin inputs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mindir_path", "--model_path", dest="model_path", required=True,
                        help="exported model: MINDIR for --backend mindspore, ONNX for the others (export.py "
                             "--file_format)")
    parser.add_argument("--dataset_path", required=True, help="folder of float32 *.bin inputs (preprocess img_data)")
    parser.add_argument("--device_id", type=int, default=0, help="accepted for the C++ runner's interface")
    parser.add_argument("--output_dir", default=".", help=f"gets {RESULT_DIR}/ and time_Result/")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input is 1x3xSxS; default: the shape stored in the model")
    add_engine_arguments(parser, "what runs the model: mindspore (a MindIR), onnxruntime or openvino (an ONNX file)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_precision(args.precision, check_backend(args.backend))
    threads = check_threads(args.threads)
    if not os.path.isfile(args.model_path):
        raise FileNotFoundError(f"model not found: {args.model_path}")
    want = ".mindir" if args.backend == "mindspore" else ".onnx"
    if not args.model_path.lower().endswith(want):
        raise ValueError(f"--backend {args.backend} runs a {want} file (export.py --file_format "
                         f"{want[1:].upper()}), got {args.model_path}")
    inputs = list_input_files(args.dataset_path)
    engine = None
    if args.backend != "mindspore":
        engine = open_engine(args.backend, args.model_path, threads, args.precision)
    if args.image_size:
        shape = (1, 3, args.image_size, args.image_size)
    elif engine is None:
        shape = mindir_input_shape(args.model_path)
    else:  # one image per input file; the engine runs it in the model's batch
        shape = (1,) + engine.input_shape[1:]
        if engine.batch > 1:
            logger.warning("%s takes batches of %d: each input runs padded to %d images (export.py --batch_size 1 "
                           "wastes nothing)", args.model_path, engine.batch, engine.batch)
    expected, size = 4 * int(np.prod(shape)), os.path.getsize(inputs[0])
    if size != expected:
        raise ValueError(f"{inputs[0]} has {size} bytes, the model input (float32 {'x'.join(map(str, shape))}) "
                         f"takes {expected}: preprocess with the image_size the model was exported for")
    init_context("CPU", args.device_id)
    logger.info("%s (%s, %d thread(s)): %d inputs of shape %s, in %s", args.model_path, args.backend, threads,
                len(inputs), "x".join(map(str, shape)), args.precision)
    forward = mindspore_runner(args.model_path, threads) if engine is None else engine_runner(engine)
    mean_ms = run_model(forward, inputs, args.output_dir, shape)
    path = write_latency(args.output_dir, mean_ms, len(inputs))
    print(f"inference: {len(inputs)} inputs, {mean_ms:.3f} ms per input on average ({path})")


if __name__ == "__main__":
    run(main)
