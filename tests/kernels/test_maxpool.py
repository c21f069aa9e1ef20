"""CpuMaxPool2d (config cpu_kernels: native): the same output and gradient as a brute-force numpy max pool and as
MindSpore's nn.MaxPool2d, for the stem's 3x3 / stride 2 pool under both padding conventions."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.kernels import build
from src.kernels.maxpool import CpuMaxPool2d

pytestmark = pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                                reason="the custom CPU kernels cannot be built here (see the warning)")


def numpy_maxpool(x, t, kernel, stride, pads):
    """y, and dL/dx of L = sum(y * t) with each output's gradient on the first maximum of its window (scan
    order); pads (top, bottom, left, right) of -inf."""
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    n, c, h, w = xp.shape
    oh, ow = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    y = np.empty((n, c, oh, ow), x.dtype)
    dxp = np.zeros_like(xp)
    for i in range(oh):
        for j in range(ow):
            window = xp[:, :, i * stride:i * stride + kernel, j * stride:j * stride + kernel].reshape(n, c, -1)
            first = window.argmax(-1)
            y[:, :, i, j] = window.max(-1)
            di, dj = np.unravel_index(first, (kernel, kernel))
            for a in range(n):
                for b in range(c):
                    dxp[a, b, i * stride + di[a, b], j * stride + dj[a, b]] += t[a, b, i, j]
    return y, dxp[:, :, top:top + x.shape[2], left:left + x.shape[3]]


def same_pads(size, kernel, stride):
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def value_and_dx(net, x, t):
    def loss(x):
        return (net(x) * t).sum()

    _, dx = ms.value_and_grad(loss, grad_position=0)(x)
    return net(x).asnumpy(), dx.asnumpy()


@pytest.mark.parametrize("pad_mode", ["same", "pad"])
@pytest.mark.parametrize("size", [16, 15])
def test_forward_and_gradient_equal_numpy_and_mindspore(pad_mode, size):
    rng = np.random.default_rng(size)
    x = rng.standard_normal((2, 5, size, size + 1)).astype(np.float32)
    options = {"pad_mode": "same"} if pad_mode == "same" else {"pad_mode": "pad", "padding": 1}
    pads = same_pads(size, 3, 2) + same_pads(size + 1, 3, 2) if pad_mode == "same" else (1, 1, 1, 1)
    ours, native = CpuMaxPool2d(3, 2, **options), nn.MaxPool2d(kernel_size=3, stride=2, **options)
    out_shape = native(Tensor(x)).shape
    t = rng.standard_normal(out_shape).astype(np.float32)
    y_ref, dx_ref = numpy_maxpool(x, t, 3, 2, pads)
    (y, dx), (y_native, dx_native) = (value_and_dx(net, Tensor(x), Tensor(t)) for net in (ours, native))
    assert y.shape == y_ref.shape == y_native.shape
    assert np.array_equal(y, y_ref) and np.array_equal(y, y_native)
    assert np.allclose(dx, dx_ref, atol=1e-6) and np.allclose(dx, dx_native, atol=1e-6)


def test_ties_send_each_gradient_to_one_maximum():
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((2, 3, 9, 9)), 0).astype(np.float32)  # a ReLU's output: ties at 0
    x[0, 0] = 0.0
    t = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    y, dx = value_and_dx(CpuMaxPool2d(3, 2), Tensor(x), Tensor(t))
    y_ref, dx_ref = numpy_maxpool(x, t, 3, 2, (1, 1, 1, 1))
    assert np.array_equal(y, y_ref)
    assert np.allclose(dx, dx_ref, atol=1e-6)
    assert np.allclose(dx.sum((2, 3)), t.sum((2, 3)), atol=1e-5)


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="pad_mode 'same' or 'pad'"):
        CpuMaxPool2d(3, 2, pad_mode="valid")
    with pytest.raises(TypeError, match="float32 only"):
        CpuMaxPool2d(3, 2)(Tensor(np.ones((1, 2, 8, 8), np.float16)))
