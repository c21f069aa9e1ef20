"""Our BatchNorm (+ ReLU) kernels against PyTorch's, call for call, on ResNet-50's batch-norm shapes.

Usage:
  python bench/bench_batchnorm.py [--size 64 --batch 33] [--trials 7] [--cold] [--library A.so --library B.so]

src/kernels/batchnorm.cc's `bn_forward` / `bn_backward` (the AOT kernels CpuBatchNorm2d runs under
`cpu_kernels: native`) are called through ctypes on numpy arrays, outside MindSpore, next to what PyTorch runs for
the same layer in training: `native_batch_norm` (+ `relu`) forward and `threshold_backward` +
`native_batch_norm_backward`. Default library: the one src/kernels/build.py builds from this tree; give
`--library` once per built file to compare versions of our kernels in one run (each is loaded privately).

For each of ResNet-50 v1.5's 53 batch-norm layers at `--size` / `--batch` (bn1 / bn2 with the ReLU folded in,
bn3 and the shortcut's without), every candidate runs `--trials` times, interleaved; a trial is the mean of 5
calls on the same data (warm caches) or, with `--cold`, of 3 calls each after writing 64 MB (the operands come
from memory, as in a training step). Reported: the best trial per call, summed per layer shape, in ms, and the
largest relative difference of our outputs to PyTorch's (a candidate that disagrees is no candidate).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import collections
import ctypes
import os
import time

import numpy as np

from bench.common import relative_difference

EPS, MOMENTUM = 1e-5, 0.9


def batchnorm_layers(size, batch):
    """(shape NCHW, relu) of every batch norm of ResNet-50 v1.5 for `size` x `size` inputs."""
    side = -(-size // 2)
    layers = [((batch, 64, side, side), True)]  # the stem's bn1
    side = -(-side // 2)  # the max pool
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for block in range(blocks):
            in_side, side = side, (-(-side // stride) if block == 0 else side)
            layers += [((batch, planes, in_side, in_side), True), ((batch, planes, side, side), True),
                       ((batch, planes * 4, side, side), False)]
            if block == 0:
                layers.append(((batch, planes * 4, side, side), False))  # the shortcut's
    return layers


class Kernels:
    """bn_forward / bn_backward of one built library, called with MindSpore's AOT argument convention."""

    def __init__(self, path):
        self.path = path
        self.lib = ctypes.CDLL(path)  # RTLD_LOCAL: two versions load side by side

    def call(self, name, arrays):
        count = len(arrays)
        shapes = [(ctypes.c_int64 * a.ndim)(*a.shape) for a in arrays]
        args = ((ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays]),
                (ctypes.c_int * count)(*[a.ndim for a in arrays]),
                (ctypes.POINTER(ctypes.c_int64) * count)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64))
                                                           for s in shapes]),
                (ctypes.c_char_p * count)(*[b"float32"] * count))
        function = getattr(self.lib, name)

        def run(keep=(arrays, shapes)):  # `keep`: the shape arrays the pointers point into stay alive
            if function(count, *args, None, None) != 0:
                raise RuntimeError(f"{name} of {self.path} failed (its message is on stderr)")
        return run

    def pair(self, x, dy, gamma, beta, relu):
        """(forward, backward, outputs): callables running the kernels on fixed operands, and their outputs."""
        c = x.shape[1]
        cfg = np.array([EPS, MOMENTUM, 1.0 if relu else 0.0], np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        mean, invstd, new_mean, new_var, dgamma, dbeta = (np.empty(c, np.float32) for _ in range(6))
        moving = np.zeros(c, np.float32), np.ones(c, np.float32)
        forward = self.call("bn_forward", [x, gamma, beta, *moving, cfg, y, mean, invstd, new_mean, new_var])
        forward()
        backward = self.call("bn_backward", [dy, x, y, gamma, mean, invstd, cfg, dx, dgamma, dbeta])
        backward()
        return forward, backward, {"y": y, "dx": dx, "dgamma": dgamma, "dbeta": dbeta}


def torch_pair(torch, x, dy, gamma, beta, relu):
    """PyTorch's forward and backward of the same layer (training mode), and their outputs."""
    tx, tdy, tgamma, tbeta = (torch.from_numpy(a) for a in (x, dy, gamma, beta))
    aten = torch.ops.aten

    def forward():
        out, mean, invstd = aten.native_batch_norm(tx, tgamma, tbeta, None, None, True, 1 - MOMENTUM, EPS)
        return (aten.relu(out) if relu else out), mean, invstd

    y, mean, invstd = forward()

    def backward():
        grad = aten.threshold_backward(tdy, y, 0) if relu else tdy
        return aten.native_batch_norm_backward(grad, tx, tgamma, None, None, mean, invstd, True, EPS,
                                               [True, True, True])

    dx, dgamma, dbeta = backward()
    return forward, backward, {"y": y.numpy(), "dx": dx.numpy(), "dgamma": dgamma.numpy(), "dbeta": dbeta.numpy()}


def best_time(run, cold, scratch):
    if cold:
        total = 0.0
        for _ in range(3):
            scratch += 1.0
            start = time.perf_counter()
            run()
            total += time.perf_counter() - start
        return total / 3
    start = time.perf_counter()
    for _ in range(5):
        run()
    return (time.perf_counter() - start) / 5


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=33)
    parser.add_argument("--trials", type=int, default=7)
    parser.add_argument("--cold", action="store_true", help="operands from memory: write 64 MB before each call")
    parser.add_argument("--library", action="append", help="a built kernel library (default: this tree's)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    for name in ("METRIC_LEARN_KERNELS_THREADS", "METRIC_LEARN_ONEDNN_THREADS"):  # the latter: libraries built
        os.environ.setdefault(name, str(args.threads))                           # before the rename
    if not args.library:
        from src.kernels import build as cpu_kernels
        args.library = [cpu_kernels.library(args.threads)]
    import torch

    torch.set_num_threads(args.threads)
    names = [f"ours{i + 1}" if len(args.library) > 1 else "ours" for i in range(len(args.library))]
    kernels = [Kernels(path) for path in args.library]
    rng = np.random.default_rng(0)
    scratch = np.zeros(16 << 20, np.float32)
    totals = collections.defaultdict(lambda: collections.defaultdict(float))
    everything = collections.defaultdict(float)
    worst = collections.defaultdict(float)
    for shape, relu in batchnorm_layers(args.size, args.batch):
        x, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
        gamma = rng.uniform(0.5, 1.5, shape[1]).astype(np.float32)
        beta = rng.uniform(-0.5, 0.5, shape[1]).astype(np.float32)
        candidates = {"torch": torch_pair(torch, x, dy, gamma, beta, relu)}
        for name, k in zip(names, kernels, strict=True):
            candidates[name] = k.pair(x, dy, gamma, beta, relu)
        reference = candidates["torch"][2]
        for name in names:
            for key, value in candidates[name][2].items():
                worst[name] = max(worst[name], relative_difference(value, reference[key]))
        best = collections.defaultdict(lambda: float("inf"))
        for _ in range(args.trials):
            for name, (forward, backward, _) in candidates.items():
                for part, run in (("forward", forward), ("backward", backward)):
                    best[name, part] = min(best[name, part], best_time(run, args.cold, scratch))
        label = f"{shape[1]}x{shape[2]}x{shape[3]}{' +ReLU' if relu else ''}"
        for (name, part), seconds in best.items():
            totals[label][name, part] += seconds
            everything[name, part] += seconds

    columns = [(name, part) for part in ("forward", "backward") for name in names + ["torch"]]
    print(f"BatchNorm kernels, ResNet-50 at {args.size}², batch {args.batch}, {args.threads} threads, "
          f"{'cold' if args.cold else 'warm'} caches; best of {args.trials} trials, ms per step")
    print("| layer shape (C x H x W) | " + " | ".join(f"{n} {p}" for n, p in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for label, row in [*totals.items(), ("all 53 layers", everything)]:
        print(f"| {label} | " + " | ".join(f"{row[col] * 1e3:.2f}" for col in columns) + " |")
    for name, path in zip(names, args.library, strict=True):
        print(f"{name}: {path}; largest relative difference to PyTorch's outputs {worst[name]:.1e}")


if __name__ == "__main__":
    main()
