"""CpuMaxPool2d: the stem's max pool on maxpool.cc's kernels (CPU), forward and gradient.

MindSpore 2.10's CPU MaxPool + MaxPoolGrad took 3x PyTorch's time in a training step
(bench/results/train_results.md); the forward here keeps each maximum's position, and the gradient scatters dy to it.
No parameters, so nothing changes in checkpoints. Built with the other kernels (src/kernels/build.py); chosen
with them by config key `cpu_kernels`.
"""
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype

from src.kernels.build import float32_only, library

SAME = -1  # pads of pad_mode "same": computed by the kernel from the input's shape


def _out_size(size, kernel, stride, before, after):
    if before == SAME:
        return (size + stride - 1) // stride
    return (size + before + after - kernel) // stride + 1


def pool_kernels(kernel, stride, pads):
    """The forward custom op (x, cfg -> y, argmax), with its gradient. `pads`: (top, bottom, left, right), or
    SAME four times."""
    so = library()
    top, bottom, left, right = pads

    def out_shape(x, cfg):
        y = [x[0], x[1], _out_size(x[2], kernel, stride, top, bottom), _out_size(x[3], kernel, stride, left, right)]
        return y, y

    backward = ops.Custom(f"{so}:pool_backward", out_shape=lambda dy, argmax, x, cfg: x,
                          out_dtype=lambda dy, argmax, x, cfg: x, func_type="aot")

    def bprop(x, cfg, out, dout):
        return backward(dout[0], out[1], x, cfg), ops.zeros_like(cfg)

    forward = ops.Custom(f"{so}:pool_forward", out_shape=out_shape,
                         out_dtype=lambda x, cfg: (float32_only(x, "CpuMaxPool2d"), mstype.int32), func_type="aot",
                         bprop=bprop)
    # Custom ops with equal attributes are merged by graph compilation (see conv.py).
    for op in (forward, backward):
        op.add_prim_attr("pool_cfg", [kernel, stride, *pads])
    return forward


class CpuMaxPool2d(nn.Cell):
    """nn.MaxPool2d(kernel_size, stride, pad_mode "same" or "pad" with `padding`) on NCHW float32, computed
    by maxpool.cc's kernels."""

    def __init__(self, kernel_size, stride, pad_mode="same", padding=0):
        super().__init__()
        if pad_mode == "same":
            pads = (SAME,) * 4
        elif pad_mode == "pad":
            pads = (int(padding),) * 4
        else:
            raise ValueError(f"CpuMaxPool2d supports pad_mode 'same' or 'pad', got {pad_mode!r}")
        self.pool_cfg = Tensor([kernel_size, stride, *pads], mstype.int64)
        self.pool = pool_kernels(int(kernel_size), int(stride), pads)

    def construct(self, x):
        return self.pool(x, self.pool_cfg)[0]
