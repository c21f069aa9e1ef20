"""The optimizer of a training run: Momentum, as our fused CPU kernel where the CPU kernels were chosen."""
from mindspore import nn

from src.kernels.build import NATIVE
from src.kernels.momentum import FusedMomentum


def momentum_optimizer(params, learning_rate, momentum, weight_decay, loss_scale, kernels):
    """src/kernels/momentum.py's FusedMomentum where `kernels` (the choice src.kernels.build.resolve made for this
    run) is "native", else nn.Momentum; the same arguments, the same result."""
    cls = FusedMomentum if kernels == NATIVE else nn.Momentum
    return cls(params, learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay,
               loss_scale=loss_scale)
