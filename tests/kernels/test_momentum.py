"""FusedMomentum (the CPU optimizer with cpu_kernels: native) against nn.Momentum: the same training steps, bit for
bit, with weight decay on some parameters only, a per-step learning rate, a loss scale, and Proxy-Anchor's
learning-rate groups."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn

from src.kernels import build
from src.kernels.momentum import FusedMomentum
from src.training.trainer import parameter_groups

pytestmark = pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                                reason="our CPU kernels cannot be built here (see the warning)")


class ProxyLoss(nn.Cell):
    """A loss with parameters of its own (as Proxy-Anchor's proxies): squared distance of the features to them."""

    def __init__(self):
        super().__init__()
        self.proxies = Parameter(Tensor(np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32)),
                                 name="proxies")

    def construct(self, features, target):
        return ((features @ self.proxies.T - target) ** 2).mean()


def network():
    """Dense -> BatchNorm -> ReLU -> Dense: gamma and beta undecayed by nn.Momentum's filter; the second Dense's
    weight is read again by the backward (the first layer's gradient), after which the update may only come."""
    ms.set_seed(3)
    net = nn.SequentialCell([nn.Dense(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dense(16, 6)])
    net.set_train()
    return net


class WithLoss(nn.Cell):
    def __init__(self, net, loss):
        super().__init__()
        self.net, self.loss = net, loss

    def construct(self, x, t):
        return self.loss(self.net(x), t)


def train(optimizer_class, loss_scale, proxy_lr_multiplier, steps=3):
    net, loss = network(), ProxyLoss()
    lr = np.array([0.1, 0.05, 0.02], np.float32)
    params = parameter_groups(net, loss, lr, 0.01, proxy_lr_multiplier)
    optimizer = optimizer_class(params, learning_rate=Tensor(lr), momentum=0.9, weight_decay=0.01,
                                loss_scale=loss_scale)
    step = nn.TrainOneStepCell(WithLoss(net, loss), optimizer, sens=loss_scale)
    step.set_train()
    rng = np.random.default_rng(0)
    x = Tensor(rng.normal(size=(10, 8)).astype(np.float32))
    t = Tensor(rng.normal(size=(10, 4)).astype(np.float32))
    losses = [float(step(x, t).asnumpy()) for _ in range(steps)]
    tensors = {p.name: p.asnumpy().copy() for p in list(net.get_parameters()) + [loss.proxies]}
    tensors.update({m.name: m.asnumpy().copy() for m in optimizer.moments})
    return losses, tensors


@pytest.mark.parametrize("loss_scale,proxy_lr_multiplier", [(1.0, 1.0), (1024.0, 100.0)])
def test_steps_equal_nn_momentum_bit_for_bit(loss_scale, proxy_lr_multiplier):
    expected_losses, expected = train(nn.Momentum, loss_scale, proxy_lr_multiplier)
    losses, tensors = train(FusedMomentum, loss_scale, proxy_lr_multiplier)
    assert losses == expected_losses
    assert tensors.keys() == expected.keys()
    for name, value in expected.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    # The steps did move every trained tensor, moments included (a kernel that wrote nothing would fail above
    # only through the losses).
    start = train(nn.Momentum, loss_scale, proxy_lr_multiplier, steps=0)[1]
    assert all(not np.array_equal(tensors[name], start[name]) for name in start if "moving" not in name)


def test_a_weight_decay_schedule_is_refused():
    class Decay(nn.Cell):
        def construct(self, step):
            return 1e-4

    with pytest.raises(ValueError, match="FusedMomentum: weight_decay must be a number"):
        FusedMomentum(network().trainable_params(), 0.1, 0.9, weight_decay=Decay())
