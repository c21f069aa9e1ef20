"""Where a training step's time goes, per kind of operator, in our MindSpore network and in the PyTorch reference.

Usage:
  python bench/profile_ops.py [--size 64 --batch 33] [--steps 3] [--eval] [--markdown out.md]

Both frameworks run the bare step on one fixed random batch (no data pipeline): ours is
ResNet50 + Tripletloss + train.py's Momentum in a TrainOneStepCell (GRAPH mode, what train.py's Model runs on
CPU), timed with mindspore.Profiler; the reference is bench/torch_models.py's torch_resnet50 with the same loss
and SGD momentum (bench_train's), timed with torch.profiler, under the tuned jemalloc of bench/common.py (PyTorch's
faster allocator here). `--eval` profiles a forward pass in inference mode instead.

It prints milliseconds per step for each operator kind (self time, summed over calls), the bare
step time, and which oneDNN implementation each framework's convolutions run (ONEDNN_VERBOSE).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import collections
import csv
import glob
import os
import shutil
import sys
import tempfile

import numpy as np

from bench.common import JEMALLOC, measurement_env, print_result, read_result, run_script, time_calls, write_report
from bench.torch_models import torch_resnet50, torch_sgd, torch_triplet_loss

# Operator kind -> (MindSpore op types, PyTorch aten ops). Self times; PyTorch computes the data and
# weight gradients of a convolution in one op, MindSpore in two.
KINDS = {
    # With cpu_kernels native (the CPU default) the convolutions, the BatchNorms (+ the ReLU after bn1/bn2), the max
    # pool and the optimizer are AOT custom kernels (src/kernels/conv.cc, batchnorm.cc, maxpool.cc,
    # momentum.cc), all of op type "Custom"; profile_ms names them by the cell they run in
    # (custom_op_kind). With cpu_kernels=mindspore: Conv2D, BatchNorm, MaxPool, ApplyMomentum and their kin.
    "convolution forward + backward": (("Custom:OneDnnConv2d", "Custom:OneDnnConv2d grad", "Conv2D",
                                        "Conv2DBackpropInput", "Conv2DBackpropFilter"),
                                       ("aten::mkldnn_convolution", "aten::convolution_backward")),
    "batch norm forward": (("BatchNorm", "Custom:CpuBatchNorm2d"),
                           ("aten::native_batch_norm", "aten::_native_batch_norm_legit_no_training")),
    "batch norm backward": (("BatchNormGrad", "Custom:CpuBatchNorm2d grad"), ("aten::native_batch_norm_backward",)),
    "ReLU forward + backward": (("ReLU", "ReluGrad"), ("aten::relu_", "aten::clamp_min_", "aten::clamp_min",
                                                       "aten::relu", "aten::threshold_backward")),
    "max pool forward + backward": (("MaxPool", "MaxPoolGrad", "Custom:CpuMaxPool2d", "Custom:CpuMaxPool2d grad"),
                                    ("aten::max_pool2d_with_indices", "aten::max_pool2d_with_indices_backward")),
    "residual add": (("Add",), ("aten::add",)),
    # The optimizer's ops carry no cell scope ("Default/Custom-op0"): src/kernels/momentum.py's kernel is
    # the one Custom op outside every cell. (AddN also sums the backward's gradients of tensors used twice.)
    "optimizer (momentum, weight decay)": (("ApplyMomentum", "AddN", "Mul", "Custom:?"),
                                           ("aten::add_", "aten::mul_", "aten::_foreach_add_",
                                            "aten::_foreach_mul_")),
}


def triplet_labels(batch):
    return np.array([0, 0, 1] * (batch // 3), np.int32)


def ms_step(size, batch, evaluate):
    """Our bare step (training, or an inference forward) on one fixed random batch."""
    import mindspore as ms
    from mindspore import nn

    from src.kernels import build as cpu_kernels
    from src.losses.factory import create_loss
    from src.models.resnet import ResNet50
    from src.runtime.config import load_config
    from src.runtime.context import init_context
    from src.training.optimizer import momentum_optimizer

    init_context("CPU")
    ms.set_seed(1)
    cfg = load_config("triplet", "CPU")
    kernels = cpu_kernels.resolve(cfg.cpu_kernels, "CPU")
    net = ResNet50(kernels=kernels)  # as train.py builds it
    x = ms.Tensor(np.random.default_rng(0).random((batch, 3, size, size), np.float32))
    if evaluate:
        net.set_train(False)
        return lambda: net(x).asnumpy()
    optimizer = momentum_optimizer(net.trainable_params(), cfg.lr_max, cfg.momentum, cfg.weight_decay, 1.0,
                                   kernels)  # as src.training.trainer chooses it
    train = nn.TrainOneStepCell(nn.WithLossCell(net, create_loss("triplet", cfg)), optimizer)
    train.set_train(True)  # BatchNorm on batch statistics, as Model.train sets it (a Cell starts in inference mode)
    y = ms.Tensor(triplet_labels(batch))
    return lambda: train(x, y).asnumpy()


def torch_step(size, batch, evaluate):
    """The PyTorch reference's bare step on one fixed random batch."""
    import torch

    from src.runtime.config import load_config

    cfg = load_config("triplet", "CPU")
    torch.manual_seed(1)
    model = torch_resnet50()
    x = torch.from_numpy(np.random.default_rng(0).random((batch, 3, size, size), np.float32))
    if evaluate:
        model.eval()

        def forward():
            with torch.inference_mode():
                return model(x).numpy()
        return forward
    optimizer = torch_sgd(torch, model, cfg)

    def step():
        loss = torch_triplet_loss(torch, model(x), cfg.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def custom_op_kind(op_type, full_name):
    """A Custom op is named by the cell it runs in ("Custom:OneDnnConv2d", "Custom:CpuBatchNorm2d grad", from
    full names like ".../conv1-OneDnnConv2d/Grad_Custom/Custom-op90"; "Custom:?" outside every cell); other ops
    by their type."""
    if op_type != "Custom":
        return op_type
    scopes = full_name.split("/")[:-1]
    cells = [scope.rsplit("-", 1)[1] for scope in scopes if "-" in scope]
    kind = f"Custom:{cells[-1] if cells else '?'}"
    return kind + " grad" if full_name.startswith("Gradients/") else kind


def profile_ms(step, steps):
    import mindspore as ms

    out = tempfile.mkdtemp(prefix="ms_profile_")
    try:
        profiler = ms.Profiler(output_path=out, start_profile=False)
        profiler.start()
        for _ in range(steps):
            step()
        profiler.stop()
        profiler.analyse()
        (table,) = glob.glob(os.path.join(out, "**", "cpu_op_detail_info_*.csv"), recursive=True)
        per_op = collections.defaultdict(float)
        with open(table) as f:
            for row in csv.DictReader(f):
                per_op[custom_op_kind(row["op_type"], row["full_op_name"])] += float(row["op_total_time(ms)"]) / steps
        return dict(per_op)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def profile_torch(step, steps):
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    per_op = collections.defaultdict(float)
    for event in prof.key_averages():
        per_op[event.key] += event.self_cpu_time_total / 1000 / steps
    return dict(per_op)


def worker(framework, size, batch, steps, evaluate, profile=True):
    """Warm-up step, `steps` timed steps, then (profile) `steps` profiled ones. Prints the result line."""
    step = (ms_step if framework == "ms" else torch_step)(size, batch, evaluate)
    step()  # compilation / warm-up
    times = time_calls(step, steps)
    result = {"step_ms": 1000 * float(np.median(times)), "executed_steps": 1 + steps}
    if profile:
        result["per_op_ms"] = (profile_ms if framework == "ms" else profile_torch)(step, steps)
    print_result(result)


def by_kind(result, framework):
    """{kind: ms per step} over KINDS, plus 'everything else' = profiled total - the kinds."""
    column = 0 if framework == "ms" else 1
    per_op = result["per_op_ms"]
    kinds = {kind: sum(per_op.get(op, 0.0) for op in ops[column]) for kind, ops in KINDS.items()}
    kinds["everything else"] = sum(per_op.values()) - sum(kinds.values())
    return kinds


def conv_implementations(framework, size, batch, evaluate):
    """oneDNN convolution implementations the framework runs ({name: count}), read from ONEDNN_VERBOSE."""
    proc = _run_worker(f"{framework} ONEDNN_VERBOSE run", framework, size, batch, 1, evaluate, "--no-profile",
                       ONEDNN_VERBOSE="1")
    counts = collections.Counter()
    for line in proc.stdout.splitlines():
        fields = line.split(",")
        if line.startswith("onednn_verbose") and len(fields) > 8 and fields[3:6] == ["exec", "cpu", "convolution"]:
            layout = fields[8].split()[0].split(":")[4]
            counts[f"{fields[6]} {fields[7]} on {layout}"] += 1
    return {name: n // 2 for name, n in counts.items()}  # warm-up step + one step


def _run_worker(what, framework, size, batch, steps, evaluate, *options, **env):
    """This script as a worker subprocess (PyTorch with the tuned jemalloc when installed); its CompletedProcess.
    A failure raises, naming `what`."""
    args = ["--worker", framework, "--size", str(size), "--batch", str(batch), "--steps", str(steps),
            *options] + (["--eval"] if evaluate else [])
    jemalloc = "tuned" if framework == "torch" and os.path.exists(JEMALLOC) else None
    return run_script(__file__, args, what, env=measurement_env(jemalloc, env, framework), timeout=1800)


def run_worker(framework, size, batch, steps, evaluate):
    what = f"{framework} profile"
    return read_result(_run_worker(what, framework, size, batch, steps, evaluate), what)


def format_report(ms_result, torch_result, size, batch, evaluate, ms_convs, torch_convs):
    what = f"{'inference forward' if evaluate else 'training step'} {size}², batch {batch}"
    ms_kinds, torch_kinds = by_kind(ms_result, "ms"), by_kind(torch_result, "torch")
    lines = [f"Per-operator time of one {what} (ms per step, self time; bare step, no data pipeline)", "",
             "| operator kind | MindSpore 2.10 | PyTorch (tuned jemalloc) | MindSpore / PyTorch |", "|---|---|---|---|"]
    for kind in ms_kinds:
        a, b = ms_kinds[kind], torch_kinds[kind]
        if a < 0.05 and b < 0.05:
            continue
        ratio = f"{a / b:.2f}" if b > 0 else "—"
        lines.append(f"| {kind} | {a:.0f} | {b:.0f} | {ratio} |")
    a, b = sum(ms_kinds.values()), sum(torch_kinds.values())
    lines.append(f"| profiled total | {a:.0f} | {b:.0f} | {a / b:.2f} |")
    a, b = ms_result["step_ms"], torch_result["step_ms"]
    lines.append(f"| step time without profiler (median) | {a:.0f} | {b:.0f} | {a / b:.2f} |")
    lines += ["", "oneDNN convolution implementations (calls per step, from ONEDNN_VERBOSE):",
              f"- MindSpore: {_fmt_counts(ms_convs)}", f"- PyTorch: {_fmt_counts(torch_convs)}"]
    return "\n".join(lines)


def _fmt_counts(counts):
    return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "none seen"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=33)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    parser.add_argument("--eval", action="store_true", help="inference forward pass instead of a training step")
    parser.add_argument("--markdown", default=None, help="also write the report here")
    parser.add_argument("--worker", choices=("ms", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--no-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.eval and args.batch % 3:
        parser.error(f"--batch {args.batch}: triplet batches are a multiple of 3")
    if args.worker:
        worker(args.worker, args.size, args.batch, args.steps, args.eval, profile=not args.no_profile)
        return 0
    results = {fw: run_worker(fw, args.size, args.batch, args.steps, args.eval) for fw in ("ms", "torch")}
    convs = {fw: conv_implementations(fw, args.size, args.batch, args.eval) for fw in ("ms", "torch")}
    text = format_report(results["ms"], results["torch"], args.size, args.batch, args.eval, convs["ms"],
                         convs["torch"])
    print(text)
    if args.markdown:
        write_report(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
