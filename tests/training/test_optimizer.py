"""The optimizer's choice: our FusedMomentum where the CPU kernels were chosen (cpu_kernels: native, on CPU),
nn.Momentum otherwise."""
import pytest
from mindspore import nn

from src.kernels import build
from src.kernels.momentum import FusedMomentum
from src.training.optimizer import momentum_optimizer


def test_nn_momentum_with_mindspores_ops():
    params = nn.Dense(4, 2).trainable_params()
    assert type(momentum_optimizer(params, 0.1, 0.9, 1e-4, 1.0, build.MINDSPORE)) is nn.Momentum


@pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                    reason="the CPU kernels cannot be built here (see the warning)")
def test_fused_momentum_with_our_kernels():
    params = nn.Dense(4, 2).trainable_params()
    assert type(momentum_optimizer(params, 0.1, 0.9, 1e-4, 1.0, build.NATIVE)) is FusedMomentum
