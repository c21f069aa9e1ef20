"""Each loss's value and gradient against an independent float64 numpy reference.

References are written from the formulas (direct differences, not the Gram-matrix form the
losses use); gradients are checked by central finite differences of those references, or
analytically where the point is deliberately at a tie.
"""
import math

import mindspore as ms
import numpy as np
import pytest

from src.losses.arcmargin import ArcMarginloss
from src.losses.factory import create_loss
from src.losses.quadruplet import Quadrupletloss
from src.losses.softmax import Softmaxloss
from src.losses.triplet import Tripletloss
from src.runtime.config import load_config

EPS = 1e-12


# Module scope runs every graph-mode test before every PyNative one: switching modes back and forth
# between grad calls makes MindSpore 2.10 reuse stale compiled graphs.
@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"], autouse=True,
                scope="module")
def mode(request):
    old = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=old)


# ---- numpy references ------------------------------------------------------------------------

def normalize(x):
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True) + EPS)


def triplet_ref(x, margin, reduction="sum"):
    y = normalize(x)
    a, p, n = y[0::3], y[1::3], y[2::3]
    hinge = np.maximum(((a - p) ** 2).sum(1) - ((a - n) ** 2).sum(1) + margin, 0.0)
    return hinge.sum() if reduction == "sum" else hinge.mean()


def quadruplet_ref(x, labels, margin):
    y = normalize(x)
    n = len(y)
    pos, neg = [], []
    for i in range(n):
        for j in range(i + 1, n):
            d = ((y[i] - y[j]) ** 2).sum()
            (pos if labels[i] == labels[j] else neg).append(d)
    return max(max(pos) - min(neg) + margin, 0.0)


def quadruplet_anchor_ref(x, labels, margin):
    """Per anchor: its farthest positive against its nearest negative, averaged over anchors with both."""
    y = normalize(x)
    labels = np.asarray(labels)
    hinges = []
    for i in range(len(y)):
        d = ((y - y[i]) ** 2).sum(1)
        positives = (labels == labels[i]) & (np.arange(len(y)) != i)
        negatives = labels != labels[i]
        if positives.any() and negatives.any():
            hinges.append(max(d[positives].max() - d[negatives].min() + margin, 0.0))
    return float(np.mean(hinges))


def softmax_ref(logits, labels, num_classes, smooth):
    target = np.full((len(labels), num_classes), smooth / (num_classes - 1))
    target[np.arange(len(labels)), labels] = 1.0 - smooth
    z = logits - logits.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -(target * log_p).sum(1).mean(), target


def arcmargin_ref(x, w, labels, scale, margin):
    xn = normalize(x)
    wn = w / np.sqrt((w * w).sum(axis=0, keepdims=True) + EPS)
    cos = np.clip(xn @ wn, -1.0, 1.0)
    logits = cos.copy()
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if theta + margin <= math.pi:
            logits[i, y] = math.cos(theta + margin)
        else:
            logits[i, y] = cos[i, y] - math.sin(math.pi - margin) * margin
    logits *= scale
    z = logits - logits.max(1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
    return -log_p[np.arange(len(labels)), labels].mean()


def numeric_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f(x)
        x[idx] = old - h
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


# MindSpore caches compiled grad graphs by object identity; keeping every loss cell alive stops a
# new cell from reusing a collected cell's id (and so its stale graph) within this module.
_ALIVE = []


def ms_value_and_grad(loss, x, labels):
    _ALIVE.append(loss)
    fn = ms.value_and_grad(loss, grad_position=0)
    value, grad = fn(ms.Tensor(x.astype(np.float32)), ms.Tensor(np.asarray(labels, np.int32)))
    return float(value.asnumpy()), grad.asnumpy().astype(np.float64)


def assert_grad_close(got, ref, rtol=2e-3):
    scale = max(np.abs(ref).max(), 1e-12)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


# ---- triplet ---------------------------------------------------------------------------------

TRIPLET_LABELS = [0, 0, 1, 2, 2, 0, 1, 1, 2, 3, 3, 1]


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_triplet_value_and_gradient_random(reduction):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8))
    loss = Tripletloss(margin=0.5, reduction=reduction)
    value, grad = ms_value_and_grad(loss, x, TRIPLET_LABELS)
    ref = triplet_ref(x, 0.5, reduction)
    assert ref > 0  # some triplets are active, so the gradient is non-trivial
    assert value == pytest.approx(ref, rel=1e-5)
    assert_grad_close(grad, numeric_grad(lambda z: triplet_ref(z, 0.5, reduction), x.copy()))


def test_triplet_sum_is_batch_size_over_3_times_mean():
    x = np.random.default_rng(1).normal(size=(12, 8))
    s, _ = ms_value_and_grad(Tripletloss(margin=0.5, reduction="sum"), x, TRIPLET_LABELS)
    m, _ = ms_value_and_grad(Tripletloss(margin=0.5, reduction="mean"), x, TRIPLET_LABELS)
    assert s == pytest.approx(4 * m, rel=1e-5)


def test_triplet_all_hinges_inactive_gives_zero_loss_and_gradient():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 8))
    x = np.stack([a, a + 0.01 * rng.normal(size=a.shape), -a], axis=1).reshape(12, 8)
    value, grad = ms_value_and_grad(Tripletloss(margin=0.1), x, TRIPLET_LABELS)
    assert value == 0.0
    assert np.all(grad == 0.0)


def test_triplet_tie_positive_equals_negative():
    # d(a, p) == d(a, n) exactly: every hinge sits at the margin; the gradient still exists.
    rng = np.random.default_rng(3)
    a, p = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    x = np.stack([a, p, p], axis=1).reshape(12, 8)
    value, grad = ms_value_and_grad(Tripletloss(margin=0.1), x, TRIPLET_LABELS)
    assert value == pytest.approx(0.4, rel=1e-5)
    assert_grad_close(grad, numeric_grad(lambda z: triplet_ref(z, 0.1), x.copy()))
    assert np.abs(grad[0::3]).max() < 1e-5  # the anchor's pulls cancel


def test_triplet_zero_embedding_is_finite():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(12, 8))
    x[2] = 0.0  # the first negative
    value, grad = ms_value_and_grad(Tripletloss(margin=0.5), x, TRIPLET_LABELS)
    assert value == pytest.approx(triplet_ref(x, 0.5), rel=1e-5)
    assert np.all(np.isfinite(grad))
    ref = numeric_grad(lambda z: triplet_ref(z, 0.5), x.copy(), h=1e-10)
    assert_grad_close(grad, ref)


def test_triplet_bad_batches():
    x = np.random.default_rng(5).normal(size=(12, 8))
    with pytest.raises(ValueError, match="multiple of 3"):
        ms_value_and_grad(Tripletloss(), x[:10], TRIPLET_LABELS[:10])
    bad_positive = list(TRIPLET_LABELS)
    bad_positive[4] = 3
    with pytest.raises(ValueError, match="positive"):
        ms_value_and_grad(Tripletloss(), x, bad_positive)
    bad_negative = list(TRIPLET_LABELS)
    bad_negative[5] = 2
    with pytest.raises(ValueError, match="negative"):
        ms_value_and_grad(Tripletloss(), x, bad_negative)
    with pytest.raises(ValueError, match="reduction"):
        Tripletloss(reduction="max")


# ---- quadruplet (margin sample mining) -------------------------------------------------------

PK_LABELS = [0, 0, 1, 1, 2, 2, 3, 3]


def test_quadruplet_value_and_gradient_random_pk_batch():
    x = np.random.default_rng(6).normal(size=(8, 6))
    value, grad = ms_value_and_grad(Quadrupletloss(margin=0.5), x, PK_LABELS)
    ref = quadruplet_ref(x, PK_LABELS, 0.5)
    assert ref > 0
    assert value == pytest.approx(ref, rel=1e-5)
    assert_grad_close(grad, numeric_grad(lambda z: quadruplet_ref(z, PK_LABELS, 0.5), x.copy()))
    # Only the hardest positive pair and the hardest negative pair receive gradient.
    assert (np.abs(grad).sum(1) > 0).sum() <= 4


def test_quadruplet_any_label_layout():
    labels = [2, 0, 2, 1, 0, 2, 1]
    x = np.random.default_rng(7).normal(size=(7, 6))
    value, grad = ms_value_and_grad(Quadrupletloss(margin=0.8), x, labels)
    assert value == pytest.approx(quadruplet_ref(x, labels, 0.8), rel=1e-5)
    assert_grad_close(grad, numeric_grad(lambda z: quadruplet_ref(z, labels, 0.8), x.copy()))


def test_quadruplet_equals_seed_formula_on_pk_batches():
    # The seed's formula for K consecutive images per class: hardest positive over the K x K
    # diagonal blocks, hardest negative over everything off them.
    k, p = 3, 4
    labels = np.repeat(np.arange(p), k)
    x = np.random.default_rng(8).normal(size=(p * k, 5))
    y = normalize(x)
    d = ((y[:, None] - y[None]) ** 2).sum(-1)
    block = np.kron(np.eye(p), np.ones((k, k))).astype(bool)
    seed_value = max(d[block & ~np.eye(p * k, dtype=bool)].max() - d[~block].min() + 0.1, 0.0)
    value, _ = ms_value_and_grad(Quadrupletloss(margin=0.1, samples_each_class=k), x, labels)
    assert value == pytest.approx(seed_value, rel=1e-5)


def test_quadruplet_ties_split_the_gradient_evenly():
    # Orthonormal embeddings: every pair is at squared distance 2, so the hardest positive (2
    # pairs) and the hardest negative (4 pairs) are ties; the loss is exactly the margin.
    x = np.eye(4)
    labels = [0, 0, 1, 1]
    value, grad = ms_value_and_grad(Quadrupletloss(margin=0.1), x, labels)
    assert value == pytest.approx(0.1, rel=1e-6)
    # Subgradient with the weight split evenly among tied pairs (MindSpore's max/min rule):
    # d/dy_i of D_ij = 2 (y_i - y_j); positives weigh +1/2 each, negatives -1/4 each.
    expected = np.zeros((4, 4))
    for (i, j), w in {(0, 1): 0.5, (2, 3): 0.5, (0, 2): -0.25, (0, 3): -0.25,
                      (1, 2): -0.25, (1, 3): -0.25}.items():
        expected[i] += w * 2 * (x[i] - x[j])
        expected[j] += w * 2 * (x[j] - x[i])
    # Through the normalisation (unit vectors): remove the radial component.
    expected -= (expected * x).sum(1, keepdims=True) * x
    np.testing.assert_allclose(grad, expected, atol=1e-5)


def test_quadruplet_zero_embedding_is_finite():
    rng = np.random.default_rng(9)
    a = normalize(rng.normal(size=6))
    b = normalize(a + 0.05 * rng.normal(size=6))
    c = normalize(b + 0.05 * rng.normal(size=6))
    # Class 0 = {zero vector, a}: its positive distance (exactly 1) is the hardest positive.
    x = np.stack([np.zeros(6), a, b, c])
    labels = [0, 0, 1, 1]
    value, grad = ms_value_and_grad(Quadrupletloss(margin=0.1), x, labels)
    assert value == pytest.approx(quadruplet_ref(x, labels, 0.1), rel=1e-5)
    assert np.all(np.isfinite(grad))
    assert_grad_close(grad, numeric_grad(lambda z: quadruplet_ref(z, labels, 0.1), x.copy(), h=1e-10))


@pytest.mark.parametrize("labels", [PK_LABELS, [2, 0, 2, 1, 0, 2, 1, 3]], ids=["pk", "any_layout"])
def test_quadruplet_per_anchor_mining_value_and_gradient(labels):
    # Label 3 of the second layout has one image: an anchor without positives, left out of the mean.
    x = np.random.default_rng(12).normal(size=(8, 6))
    value, grad = ms_value_and_grad(Quadrupletloss(margin=0.5, mining="anchor"), x, labels)
    ref = quadruplet_anchor_ref(x, labels, 0.5)
    assert ref > 0
    assert value == pytest.approx(ref, rel=1e-5)
    assert_grad_close(grad, numeric_grad(lambda z: quadruplet_anchor_ref(z, labels, 0.5), x.copy()))
    # Unlike the seed's batch mining, more than four images receive gradient.
    assert (np.abs(grad).sum(1) > 0).sum() > 4


def test_quadruplet_bad_batches():
    x = np.random.default_rng(10).normal(size=(4, 6))
    with pytest.raises(ValueError, match="no positive pair"):
        ms_value_and_grad(Quadrupletloss(), x, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="no negative pair"):
        ms_value_and_grad(Quadrupletloss(), x, [5, 5, 5, 5])
    with pytest.raises(ValueError, match="samples_each_class"):
        Quadrupletloss(samples_each_class=1)
    with pytest.raises(ValueError, match="mining must be one of"):
        Quadrupletloss(mining="semihard")


# ---- softmax and arcmargin -------------------------------------------------------------------

@pytest.mark.parametrize("smooth", [0.0, 0.1])
def test_softmax_value_and_gradient(smooth):
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=3.0, size=(6, 5))
    labels = [0, 4, 2, 2, 1, 3]
    value, grad = ms_value_and_grad(Softmaxloss(5, smooth_factor=smooth), logits, labels)
    ref, target = softmax_ref(logits, np.array(labels), 5, smooth)
    assert value == pytest.approx(ref, rel=1e-5)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(grad, (p - target) / len(labels), atol=1e-6)


def test_arcmargin_value_and_gradients():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(5, 8))
    labels = np.array([0, 3, 1, 1, 2])
    loss = ArcMarginloss(4, feature_dim=8, scale=16.0, margin=0.15)
    w = loss.weight.asnumpy().astype(np.float64)
    _ALIVE.append(loss)
    fn = ms.value_and_grad(loss, grad_position=0, weights=loss.trainable_params())
    value, (gx, (gw,)) = fn(ms.Tensor(x.astype(np.float32)), ms.Tensor(labels.astype(np.int32)))
    assert float(value.asnumpy()) == pytest.approx(arcmargin_ref(x, w, labels, 16.0, 0.15), rel=1e-5)
    assert_grad_close(gx.asnumpy(), numeric_grad(lambda z: arcmargin_ref(z, w, labels, 16.0, 0.15), x.copy()))
    assert_grad_close(gw.asnumpy(), numeric_grad(lambda z: arcmargin_ref(x, z, labels, 16.0, 0.15), w.copy()))


def test_arcmargin_defaults_and_large_angle_branch():
    loss = ArcMarginloss(3, feature_dim=6)  # scale 80, margin 0.15 as the Paddle original
    w = loss.weight.asnumpy().astype(np.float64)
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 6))
    x[0] = -w[:, 0] + 1e-3 * rng.normal(size=6)  # theta_y close to pi: the linear branch
    labels = np.array([0, 1, 2])
    value, _ = ms_value_and_grad(loss, x, labels)
    assert value == pytest.approx(arcmargin_ref(x, w, labels, 80.0, 0.15), rel=1e-4)


def test_constructor_errors():
    with pytest.raises(ValueError, match="num_classes >= 2"):
        Softmaxloss(1)
    with pytest.raises(ValueError, match="smooth_factor"):
        Softmaxloss(3, smooth_factor=1.0)
    with pytest.raises(ValueError, match="class_num >= 2"):
        ArcMarginloss(1)


@pytest.mark.parametrize("name,cls", [("softmax", Softmaxloss), ("arcmargin", ArcMarginloss),
                                      ("triplet", Tripletloss), ("quadruplet", Quadrupletloss)])
def test_create_loss_from_config(name, cls):
    cfg = load_config(name, "CPU")
    assert isinstance(create_loss(name, cfg), cls)


def test_create_loss_unknown_name():
    with pytest.raises(ValueError, match="unknown loss_name 'contrastive'"):
        create_loss("contrastive", load_config("triplet", "CPU"))
