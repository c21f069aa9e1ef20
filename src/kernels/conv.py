"""OneDnnConv2d: nn.Conv2d computed by conv.cc's kernels on oneDNN's blocked layouts (CPU).

MindSpore 2.10's CPU Conv2D hands oneDNN plain NCHW tensors, and oneDNN then runs a GEMM-based kernel
(`x64:gemm:jit`) where PyTorch gets its direct JIT kernels on blocked layouts (`jit:avx512_core`, `jit_1x1`,
`brgconv`): the convolutions were 316 of the 348 ms by which a training step trailed PyTorch's
(bench/results/train_results.md). `OneDnnConv2d` is an `nn.Conv2d` (same parameter, same name, same checkpoints) whose
forward and gradients are three MindSpore AOT custom kernels (conv.cc) that let the same oneDNN pick the layout:
they reorder the plain tensors in, run its kernel and reorder the result back. Built with the other kernels
(src/kernels/build.py); chosen with them by config key `cpu_kernels`.
"""
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype

from src.kernels.build import library

SAME = -1  # pads of pad_mode "same": computed by the kernel from the input's shape


def _out_size(size, kernel, stride, pads):
    if pads[0] == SAME:
        return (size + stride - 1) // stride
    return (size + pads[0] + pads[1] - kernel) // stride + 1


def _same_dtype(*dtypes):
    return dtypes[0]


def conv_kernels(stride, pads):
    """The forward custom op, with its gradient: x (N, C, H, W), w (O, C, kh, kw), cfg -> y. `pads`: (top,
    bottom, left, right), or SAME four times."""
    so = library()
    (sh, sw), (pt, pb, pl, pr) = stride, pads

    def out_shape(x, w, cfg):
        return [x[0], w[0], _out_size(x[2], w[2], sh, (pt, pb)), _out_size(x[3], w[3], sw, (pl, pr))]

    backward_data = ops.Custom(f"{so}:conv_backward_data", out_shape=lambda dy, w, cfg, x: x,
                               out_dtype=_same_dtype, func_type="aot")
    backward_weights = ops.Custom(f"{so}:conv_backward_weights", out_shape=lambda dy, x, cfg, w: w,
                                  out_dtype=_same_dtype, func_type="aot")

    def bprop(x, w, cfg, out, dout):
        return backward_data(dout, w, cfg, x), backward_weights(dout, x, cfg, w), ops.zeros_like(cfg)

    forward = ops.Custom(f"{so}:conv_forward", out_shape=out_shape, out_dtype=_same_dtype, func_type="aot",
                         bprop=bprop)
    # Custom ops with equal attributes are taken for the same operator by graph compilation, which then infers
    # every one's output shape with one of their out_shape functions (seen: a stride-1 1x1 convolution given a
    # stride-2 one's shape); the stride and pads as an attribute keep them apart.
    for op in (forward, backward_data, backward_weights):
        op.add_prim_attr("conv_cfg", list(stride) + list(pads))
    return forward


class OneDnnConv2d(nn.Conv2d):
    """nn.Conv2d (groups 1, no dilation, no bias, NCHW float32) computed by conv.cc's kernels."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, pad_mode="same", padding=0, **kwargs):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                         padding=padding, **kwargs)
        if self.group != 1 or self.has_bias or tuple(self.dilation[-2:]) != (1, 1) or self.data_format != "NCHW":
            raise ValueError("OneDnnConv2d supports groups=1, dilation 1, no bias and NCHW only")
        if pad_mode == "same":
            pads = (SAME,) * 4
        elif pad_mode == "valid":
            pads = (0,) * 4
        else:
            pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding)
        stride = tuple(self.stride[-2:])
        self.conv_cfg = Tensor(list(stride) + list(pads), mstype.int64)
        self.onednn_conv = conv_kernels(stride, pads)

    def construct(self, x):
        return self.onednn_conv(x, self.weight, self.conv_cfg)

