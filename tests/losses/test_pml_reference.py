"""Every loss against tests/fixtures/pml_reference.npz: values and gradients (with respect to the embeddings, and the
class weights / proxies) that pytorch-metric-learning 2.9 computed in float64 on the same inputs (written by
tests/losses/make_pml_reference.py; the N-pairs and EML references are the Paddle original's computations in torch).
Ours run in float32: agreement within 1e-5 relative (of the largest gradient entry for gradients)."""
import os

import mindspore as ms
import numpy as np
import pytest

from src.losses.arcmargin import ArcMarginloss
from src.losses.eml import EMLloss
from src.losses.multisimilarity import MultiSimilarityloss
from src.losses.normsoftmax import NormSoftmaxloss
from src.losses.npairs import NPairsloss
from src.losses.proxyanchor import ProxyAnchorloss
from src.losses.quadruplet import Quadrupletloss
from src.losses.triplet import Tripletloss
from tests.paths import FIXTURES

REFERENCE = np.load(os.path.join(FIXTURES, "pml_reference.npz"))
CASES = sorted(key[:-len("/loss")] for key in REFERENCE.files if key.endswith("/loss"))
RTOL = 1e-5


def make_loss(case, weights):
    """Our loss for a reference case, with the case's class weights or proxies."""
    classes, dim = (weights.shape[1], weights.shape[0]) if weights is not None else (None, None)
    if case.startswith("multisimilarity_mined"):
        return MultiSimilarityloss(alpha=2, beta=50, base=0.5, miner_epsilon=0.1)
    if case.startswith("multisimilarity_allpairs"):  # the config's "no mining" value, given to the class
        return MultiSimilarityloss(alpha=2, beta=50, base=0.5, miner_epsilon=-1)
    if case.startswith("multisimilarity"):
        return MultiSimilarityloss(alpha=2, beta=50, base=0.5, miner_epsilon=None)
    if case.startswith("proxyanchor"):
        loss = ProxyAnchorloss(weights.shape[0], weights.shape[1], margin=0.1, alpha=32)
        loss.proxies.set_data(ms.Tensor(weights.astype(np.float32)))
        return loss
    if case.startswith("normsoftmax"):
        loss = NormSoftmaxloss(classes, dim, temperature=0.05)
        loss.weight.set_data(ms.Tensor(weights.astype(np.float32)))
        return loss
    if case.startswith("arcmargin"):
        loss = ArcMarginloss(classes, dim, scale=80.0, margin=0.15)
        loss.weight.set_data(ms.Tensor(weights.astype(np.float32)))
        return loss
    if case.startswith("triplet"):
        return Tripletloss(margin=0.1, reduction=case.split("_")[1])
    if case.startswith("quadruplet_anchor"):
        return Quadrupletloss(margin=0.1, mining="anchor")
    if case.startswith("npairs"):
        return NPairsloss(reg_lambda=0.01)
    if case.startswith("eml"):
        return EMLloss()
    raise KeyError(case)


_ALIVE = []  # MindSpore caches compiled grad graphs by cell identity: keep every cell alive


def value_and_grads(loss, x, labels):
    _ALIVE.append(loss)
    params = loss.trainable_params()
    fn = ms.value_and_grad(loss, grad_position=0, weights=params or None)
    value, grads = fn(ms.Tensor(x.astype(np.float32)), ms.Tensor(labels.astype(np.int32)))
    grad_x, grad_w = (grads[0], grads[1][0]) if params else (grads, None)
    return float(value.asnumpy()), grad_x.asnumpy(), None if grad_w is None else grad_w.asnumpy()


def close(got, ref):
    scale = max(np.abs(ref).max(), 1e-30)
    return np.abs(got - ref).max() <= RTOL * scale


@pytest.mark.parametrize("case", CASES)
def test_value_and_gradient_equal_the_reference(case):
    ref = {name: REFERENCE[f"{case}/{name}"] for name in ("embeddings", "labels", "loss", "grad")}
    weights = REFERENCE[f"{case}/weights"] if f"{case}/weights" in REFERENCE.files else None
    value, grad, grad_w = value_and_grads(make_loss(case, weights), ref["embeddings"], ref["labels"])
    assert value == pytest.approx(float(ref["loss"]), rel=RTOL, abs=1e-7), (value, float(ref["loss"]))
    assert close(grad, ref["grad"]), np.abs(grad - ref["grad"]).max() / max(np.abs(ref["grad"]).max(), 1e-30)
    if weights is not None:
        ref_w = REFERENCE[f"{case}/grad_weights"]
        assert close(grad_w, ref_w), np.abs(grad_w - ref_w).max() / np.abs(ref_w).max()


def test_the_reference_covers_every_loss_and_the_edge_cases():
    prefixes = {case.rsplit("_", 1)[0] for case in CASES}
    for name in ("multisimilarity", "multisimilarity_mined", "multisimilarity_allpairs", "proxyanchor", "normsoftmax",
                 "arcmargin", "triplet_sum", "triplet_mean", "quadruplet_anchor", "npairs", "eml_k2", "eml_k3"):
        assert name in prefixes, name
    # Batches where the miner keeps nothing: the library's loss and gradient are exactly 0.
    for case in ("multisimilarity_mined_nothing", "multisimilarity_mined_one_class"):
        assert float(REFERENCE[f"{case}/loss"]) == 0.0 and not REFERENCE[f"{case}/grad"].any()
    assert any("pytorch-metric-learning 2.9" in str(v) for v in REFERENCE["versions"])
