"""BatchNorm2d (+ ReLU) whose training-mode forward and backward are batchnorm.cc's kernels (CPU).

MindSpore 2.10's CPU BatchNormGrad took twice PyTorch's time, and each ReLU after a BatchNorm is one more
pass over the tensor each way (bench/results/train_results.md). `CpuBatchNorm2d` is an nn.BatchNorm2d (same
parameters, names and checkpoints) that, in training with batch statistics, computes BatchNorm and the ReLU
that follows it (`relu=True`) in one custom kernel, its gradient in another; the forward kernel updates the
moving statistics in place, in the Parameters' own memory (MindSpore's convention: momentum * moving +
(1 - momentum) * batch, the unbiased batch variance). Nothing else in a training step reads them, and an Assign
of each (106 in ResNet-50) took graph compilation 4-5 s, about half its time on CPU. In inference, or frozen
(use_batch_statistics=False), it is nn.BatchNorm2d's own computation followed by the ReLU. Built with the
other kernels (src/kernels/build.py); chosen with them by config key `cpu_kernels`.
"""
import mindspore as ms
from mindspore import Tensor, nn, ops

from src.kernels.build import float32_only, library


def _forward_shapes(x, gamma, beta, moving_mean, moving_variance, cfg):
    return x, gamma, gamma, gamma, gamma


def _forward_dtypes(x, *_):
    x = float32_only(x, "CpuBatchNorm2d")
    return x, x, x, x, x


def batchnorm_kernels(relu):
    """The forward custom op (x, gamma, beta, moving_mean, moving_variance, cfg -> y, mean, invstd,
    new_moving_mean, new_moving_variance), with its gradient."""
    so = library()
    backward = ops.Custom(f"{so}:bn_backward", out_shape=lambda dy, x, y, gamma, mean, invstd, cfg: (x, gamma, gamma),
                          out_dtype=lambda dy, *_: (dy, dy, dy), func_type="aot")

    def bprop(x, gamma, beta, moving_mean, moving_variance, cfg, out, dout):
        y, mean, invstd = out[0], out[1], out[2]
        dx, dgamma, dbeta = backward(dout[0], x, y, gamma, mean, invstd, cfg)
        return (dx, dgamma, dbeta, ops.zeros_like(moving_mean), ops.zeros_like(moving_variance),
                ops.zeros_like(cfg))

    forward = ops.Custom(f"{so}:bn_forward", out_shape=_forward_shapes, out_dtype=_forward_dtypes,
                         func_type="aot", bprop=bprop)
    # Custom ops with equal attributes are merged by graph compilation (see conv.py).
    for op in (forward, backward):
        op.add_prim_attr("bn_relu", bool(relu))
    return forward


class CpuBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (NCHW float32), optionally followed by ReLU, on batchnorm.cc's kernels in training."""

    def __init__(self, num_features, eps=1e-5, momentum=0.9, relu=False, **kwargs):
        super().__init__(num_features, eps=eps, momentum=momentum, **kwargs)
        self.relu = bool(relu)
        self.bn_cfg = Tensor([eps, momentum, 1.0 if relu else 0.0], ms.float32)
        self.bn_kernel = batchnorm_kernels(relu)
        self.relu_op = ops.ReLU()

    def construct(self, x):
        if self.training and self.use_batch_statistics is None:
            # The kernel writes the new moving statistics into self.moving_mean / self.moving_variance.
            return self.bn_kernel(x, self.gamma, self.beta, self.moving_mean, self.moving_variance, self.bn_cfg)[0]
        y = super().construct(x)
        return self.relu_op(y) if self.relu else y
