"""OneDnnConv2d (config cpu_kernels: native): the same outputs and gradients as a brute-force numpy convolution
and as MindSpore's Conv2D, and the same ResNet-50 parameters and features."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from src.kernels import build
from src.kernels.conv import OneDnnConv2d
from src.models.resnet import ResNet50

pytestmark = pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                                reason="the CPU kernels cannot be built here (see the warning)")


def numpy_conv(x, w, stride, pads):
    """Direct convolution: pads (top, bottom, left, right) of zeros, then a sum over channels and the window."""
    top, bottom, left, right = pads
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            y += np.einsum("nchw,oc->nohw", window, w[:, :, i, j].astype(np.float64))
    return y


def same_pads(size, kernel, stride):
    """TensorFlow's / MindSpore's "same": output ceil(size / stride), the odd pixel of padding at the end."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def value_and_grads(net, x, t):
    grad = ms.value_and_grad(lambda x: (net(x) * t).sum(), grad_position=0, weights=net.trainable_params())
    _, (dx, dw) = grad(x)
    return net(x).asnumpy(), dx.asnumpy(), dw[0].asnumpy()


# (kernel, stride, pad mode, input size): ResNet-50's kinds; "same" pads 16 and 22 unevenly ((0, 1), (2, 3)).
CASES = [(3, 2, "same", 16), (7, 2, "same", 22), (1, 2, "same", 9), (3, 2, "same", 15), (3, 1, "pad", 9),
         (7, 2, "pad", 16), (1, 1, "same", 6)]


@pytest.mark.parametrize("kernel,stride,pad_mode,size", CASES)
def test_forward_and_gradients_equal_numpy_and_mindspore(kernel, stride, pad_mode, size):
    rng = np.random.default_rng(kernel * 100 + size)
    w = (rng.standard_normal((6, 5, kernel, kernel)) * 0.2).astype(np.float32)
    x = rng.standard_normal((3, 5, size, size)).astype(np.float32)
    pads = {"pad_mode": "pad", "padding": kernel // 2} if pad_mode == "pad" else {"pad_mode": "same"}
    nets = [cls(5, 6, kernel, stride=stride, has_bias=False, weight_init=Tensor(w), **pads)
            for cls in (OneDnnConv2d, nn.Conv2d)]
    pad_hw = same_pads(size, kernel, stride) if pad_mode == "same" else (kernel // 2, kernel // 2)
    expected = numpy_conv(x, w, stride, pad_hw + pad_hw)
    t = rng.standard_normal(expected.shape).astype(np.float32)
    ours, native = (value_and_grads(net, Tensor(x), Tensor(t)) for net in nets)
    assert ours[0].shape == expected.shape
    assert rel(ours[0], expected) < 1e-5
    for a, b in zip(ours, native, strict=True):  # y, dL/dx, dL/dw
        assert a.shape == b.shape
        assert rel(a, b) < 1e-5
    # dL/dw by numpy too: sum over the output of t times the window it saw.
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), pad_hw, pad_hw))
    ho = expected.shape[2]
    dw = np.stack([np.stack([np.einsum("nohw,nchw->oc", t, xp[:, :, i:i + stride * ho:stride,
                                                                j:j + stride * ho:stride])
                             for j in range(kernel)], -1) for i in range(kernel)], -2)
    assert rel(ours[2], dw) < 1e-5


def test_unsupported_convolutions_are_refused():
    with pytest.raises(ValueError, match="groups=1"):
        OneDnnConv2d(4, 4, 3, group=2, has_bias=False)
    with pytest.raises(ValueError, match="no bias"):
        OneDnnConv2d(4, 4, 3, has_bias=True)


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_resnet_parameters_and_features_match_mindspore_conv(padding):
    ms.set_seed(3)
    native = ResNet50(padding)
    ours = ResNet50(padding, kernels=build.NATIVE)
    names = {p.name: p.shape for p in native.get_parameters()}
    assert {p.name: p.shape for p in ours.get_parameters()} == names
    ms.load_param_into_net(ours, {p.name: p for p in native.get_parameters()}, strict_load=True)
    for net in (native, ours):
        net.set_train(False)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 33, 33)).astype(np.float32))
    assert rel(ours(x).asnumpy(), native(x).asnumpy()) < 1e-4
