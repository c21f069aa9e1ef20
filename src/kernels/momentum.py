"""FusedMomentum: nn.Momentum whose update of every parameter is one custom CPU kernel (momentum.cc).

nn.Momentum runs 2-4 kernels per parameter (weight decay Mul + AddN, the 1 / loss-scale Mul, ApplyMomentum):
for ResNet-50's 161 tensors 55 ms of a 64² training step on CPU against PyTorch's 15 (bench/results/train_results.md).
`FusedMomentum` is an nn.Momentum (same parameters, moments, learning-rate schedule and groups, weight-decay
filter, loss scale, checkpoints) whose construct hands all parameters, moments and gradients to one kernel that
updates them in place, with MindSpore's operations in MindSpore's order: the result equals nn.Momentum's bit
for bit (tests/kernels/test_momentum.py). The kernel writes the Parameters' memory itself, so it must
run after every read of them in the step: it takes every gradient, and every read of a parameter feeds one.

Built with the other kernels (src/kernels/build.py); src/training/optimizer.py's `momentum_optimizer` chooses it
where they are chosen (config key `cpu_kernels`), nn.Momentum elsewhere.
"""
import numpy as np
from mindspore import Tensor, nn, ops
from mindspore.common import dtype as mstype

from src.kernels.build import float32_only, library


def _done_shape(*_):
    return (1,)


def _done_dtype(*dtypes):
    for dtype in dtypes:
        float32_only(dtype, "FusedMomentum")
    return mstype.float32


class FusedMomentum(nn.Momentum):
    """nn.Momentum (use_nesterov=False, a constant or per-step learning rate, plain weight decay) in one kernel."""

    def __init__(self, params, learning_rate, momentum, weight_decay=0.0, loss_scale=1.0):
        super().__init__(params, learning_rate, momentum, weight_decay=weight_decay, loss_scale=loss_scale)
        if self.is_group and any(self.dynamic_decay_flags) or not self.is_group and self.dynamic_decay_flags:
            raise ValueError("FusedMomentum: weight_decay must be a number (per group), not a Cell")
        count = len(self._parameters)
        if self.is_group:
            decays = [float(w.asnumpy()) if isinstance(w, Tensor) else float(w) for w in self.weight_decay]
        else:
            decays = [float(self.weight_decay.asnumpy())] * count
        # nn.Momentum's own values: weight decay already times the loss scale, its float32 1 / loss scale.
        hyper = [[float(self.momentum.asnumpy()), decays[i] if self.decay_flags[i] else 0.0,
                  float(self.reciprocal_scale.asnumpy())] for i in range(count)]
        self.hyper = Tensor(np.asarray(hyper, np.float32))
        self.update = ops.Custom(f"{library()}:momentum_update", out_shape=_done_shape, out_dtype=_done_dtype,
                                 func_type="aot")

    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        lr = ops.stack(lr) if self.is_group_lr else ops.reshape(lr, (1,))
        return self.update(*self.params, *self.moments, *gradients, lr, self.hyper)

