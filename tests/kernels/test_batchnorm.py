"""CpuBatchNorm2d (config cpu_kernels: native): training-mode BatchNorm (+ ReLU), its gradients and the moving
statistics equal a float64 numpy BatchNorm and MindSpore's nn.BatchNorm2d; inference is nn.BatchNorm2d's."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from src.kernels import build
from src.kernels.batchnorm import CpuBatchNorm2d

pytestmark = pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                                reason="the custom CPU kernels cannot be built here (see the warning)")

EPS, MOMENTUM = 1e-5, 0.9


def numpy_batchnorm(x, gamma, beta, moving_mean, moving_var, t, relu):
    """y, dL/dx, dL/dgamma, dL/dbeta for L = sum(y * t), and the updated moving statistics, in float64."""
    x, t = x.astype(np.float64), t.astype(np.float64)
    g, b = gamma[None, :, None, None].astype(np.float64), beta[None, :, None, None].astype(np.float64)
    axes, count = (0, 2, 3), x.size // x.shape[1]
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + EPS)
    z = g * xhat + b
    y, dz = (np.maximum(z, 0), t * (z > 0)) if relu else (z, t)
    dbeta, dgamma = dz.sum(axes), (dz * xhat).sum(axes)
    dx = g / np.sqrt(var + EPS) * (dz - dz.mean(axes, keepdims=True) - xhat * (dz * xhat).mean(axes, keepdims=True))
    new_mean = MOMENTUM * moving_mean + (1 - MOMENTUM) * mean.ravel()
    new_var = MOMENTUM * moving_var + (1 - MOMENTUM) * var.ravel() * count / (count - 1)
    return y, dx, dgamma, dbeta, new_mean, new_var


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def train_once(bn, relu_after, x, t):
    """One forward + backward of sum(y * t) in training mode: dL/dx, dL/dgamma, dL/dbeta, the moving mean and
    variance it left, and y (a second forward)."""
    bn.set_train(True)
    relu = ops.ReLU()

    def loss(x):
        y = bn(x)
        return ((relu(y) if relu_after else y) * t).sum()

    _, (dx, (dgamma, dbeta)) = ms.value_and_grad(loss, grad_position=0, weights=[bn.gamma, bn.beta])(x)
    grads = [dx.asnumpy(), dgamma.asnumpy(), dbeta.asnumpy(), bn.moving_mean.asnumpy().copy(),
             bn.moving_variance.asnumpy().copy()]
    y = bn(x)
    return [(relu(y) if relu_after else y).asnumpy()] + grads


def make(cls, channels, seed, **kwargs):
    """A BatchNorm with random gamma, beta and moving statistics drawn from `seed`."""
    rng = np.random.default_rng(seed)
    bn = cls(channels, eps=EPS, momentum=MOMENTUM, **kwargs)
    bn.gamma.set_data(Tensor(rng.normal(size=channels).astype(np.float32)))
    bn.beta.set_data(Tensor(rng.normal(size=channels).astype(np.float32)))
    bn.moving_mean.set_data(Tensor(rng.normal(size=channels).astype(np.float32)))
    bn.moving_variance.set_data(Tensor((rng.random(channels) + 0.5).astype(np.float32)))
    return bn


# Planes of 24 (whole 8-lane blocks), 25 (a tail), 1 (no block) and 63 elements; 40 planes of 64, whose sums
# reach the double total three times (every 16 planes); 200 channels of 32 x 32, walked in blocks of 12 channels
# (the backward's L2 blocks) with, on 2 threads, a last block of 1 in each job's 25.
@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (4, 16, 5, 5), (6, 8, 1, 1), (2, 3, 7, 9), (40, 8, 8, 8),
                                   (2, 200, 32, 32)])
@pytest.mark.parametrize("relu", [False, True])
def test_training_step_equals_numpy_and_mindspore(shape, relu):
    rng = np.random.default_rng(shape[1] * 10 + relu)
    channels = shape[1]
    x = rng.normal(2, 3, size=shape).astype(np.float32)
    t = rng.normal(size=shape).astype(np.float32)
    ours = make(CpuBatchNorm2d, channels, 1, relu=relu)
    native = make(nn.BatchNorm2d, channels, 1)
    params = [p.asnumpy().copy() for p in (ours.gamma, ours.beta, ours.moving_mean, ours.moving_variance)]
    expected = numpy_batchnorm(x, *params, t, relu)

    ours = train_once(ours, False, Tensor(x), Tensor(t))
    native = train_once(native, relu, Tensor(x), Tensor(t))
    names = ("y", "dx", "dgamma", "dbeta", "moving_mean", "moving_variance")
    for name, a, b, reference in zip(names, ours, native, expected, strict=True):
        assert a.shape == reference.shape, name
        assert rel(a, reference) < 2e-5, name
        assert rel(a, b) < 2e-5, name


@pytest.mark.parametrize("frozen", [False, True])
def test_inference_and_frozen_are_mindspores_batchnorm_on_the_moving_statistics(frozen):
    rng = np.random.default_rng(7)
    x = Tensor(rng.normal(size=(3, 6, 5, 5)).astype(np.float32))
    ours = make(CpuBatchNorm2d, 6, 2, relu=True)
    native = make(nn.BatchNorm2d, 6, 2)
    for bn in (ours, native):
        bn.set_train(frozen)  # frozen (freeze_bn): training, but on the moving statistics
        if frozen:
            bn.use_batch_statistics = False
    expected = np.maximum(native(x).asnumpy(), 0)
    assert np.abs(ours(x).asnumpy() - expected).max() < 1e-6
    assert (expected == 0).any() and (expected > 0).any()
    assert np.array_equal(ours.moving_mean.asnumpy(), native.moving_mean.asnumpy())  # untouched


def test_other_types_are_refused_by_name():
    bn = CpuBatchNorm2d(4)
    bn.set_train(True)
    with pytest.raises(TypeError, match="float32 only"):
        bn(Tensor(np.ones((2, 4, 3, 3), np.float16)))
