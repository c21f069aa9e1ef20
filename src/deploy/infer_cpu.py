"""CPU stand-in for the Ascend 310 runner (ascend310_infer/): same flags, inputs and output files.

    python -m src.deploy.infer_cpu --mindir_path resnet50.mindir --dataset_path preprocess_Result/img_data

Runs the MindIR through MindSpore on CPU (`nn.GraphCell(ms.load(path))`), one *.bin input file
(sorted by name) per call, and writes <output_dir>/result_Files/<name>_<k>.bin per output k and
the average latency to <output_dir>/time_Result/test_perform_static.txt (see src/deploy/infer_data.py).
"""
import argparse
import os
import time

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import mind_ir_pb2

from src.deploy.infer_data import RESULT_DIR, list_input_files, read_array, result_name, write_latency
from src.runtime.atomic_file import write_atomic
from src.runtime.cli import run
from src.runtime.context import init_context
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


def run_mindir(mindir_path, input_files, output_dir, input_shape):
    """Run every input file through the model; write its outputs. Returns the mean latency (ms) per call."""
    net = nn.GraphCell(ms.load(mindir_path))
    count = int(np.prod(input_shape))
    result_dir = os.path.join(output_dir, RESULT_DIR)
    os.makedirs(result_dir, exist_ok=True)
    # One untimed call compiles the graph, as Model::Build does before the C++ runner's timed calls.
    net(ms.Tensor(np.zeros(input_shape, np.float32))).asnumpy()
    progress = Progress(len(input_files), "inference", logger)
    total = 0.0
    for path in input_files:
        x = ms.Tensor(read_array(path, np.float32, count).reshape(input_shape))
        start = time.perf_counter()
        outputs = net(x)
        outputs = [out.asnumpy() for out in (outputs if isinstance(outputs, (tuple, list)) else (outputs,))]
        total += time.perf_counter() - start
        for k, out in enumerate(outputs):
            write_atomic(os.path.join(result_dir, result_name(path, k)), out.tobytes())
        progress.update()
    return 1000.0 * total / len(input_files)


def parse_args(argv=None):
    # No config here, so not src.runtime.cli.make_parser (whose help offers config overrides).
    parser = argparse.ArgumentParser(prog="python -m src.deploy.infer_cpu",
                                     description="Run a MindIR on CPU over preprocessed *.bin inputs.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--mindir_path", required=True, help="exported model (export.py --file_format MINDIR)")
    parser.add_argument("--dataset_path", required=True, help="folder of float32 *.bin inputs (preprocess img_data)")
    parser.add_argument("--device_id", type=int, default=0, help="accepted for the C++ runner's interface")
    parser.add_argument("--output_dir", default=".", help=f"gets {RESULT_DIR}/ and time_Result/")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input is 1x3xSxS; default: the shape stored in the MindIR")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.mindir_path):
        raise FileNotFoundError(f"MindIR not found: {args.mindir_path}")
    inputs = list_input_files(args.dataset_path)
    if args.image_size:
        shape = (1, 3, args.image_size, args.image_size)
    else:
        shape = mindir_input_shape(args.mindir_path)
    expected, size = 4 * int(np.prod(shape)), os.path.getsize(inputs[0])
    if size != expected:
        raise ValueError(f"{inputs[0]} has {size} bytes, the model input (float32 {'x'.join(map(str, shape))}) "
                         f"takes {expected}: preprocess with the image_size the MindIR was exported for")
    init_context("CPU", args.device_id)
    logger.info("%s: %d inputs of shape %s", args.mindir_path, len(inputs), "x".join(map(str, shape)))
    mean_ms = run_mindir(args.mindir_path, inputs, args.output_dir, shape)
    path = write_latency(args.output_dir, mean_ms, len(inputs))
    print(f"inference: {len(inputs)} inputs, {mean_ms:.3f} ms per input on average ({path})")


if __name__ == "__main__":
    run(main)
