"""Write tests/fixtures/pml_reference.npz: losses and their gradients from pytorch-metric-learning, the library the
losses in src/losses/ are checked against (tests/losses/test_pml_reference.py reads the file; the suite needs neither
torch nor pytorch-metric-learning). N-pairs and EML have no counterpart there (the Paddle original's differ from
the library's NPairsLoss, and it has no EML): their references are Paddle's computations
(PaddleCV/metric_learning/losses/npairsloss.py, emlloss.py) restated op for op in torch, differentiated by autograd.

    python -m venv /tmp/pml && /tmp/pml/bin/pip install torch==2.13.0 pytorch-metric-learning==2.9.0 numpy
    /tmp/pml/bin/python tests/losses/make_pml_reference.py

Every case: float64 inputs drawn with a fixed seed (embeddings N x D, integer labels, and the class weights or
proxies of the proxy/classification losses), the loss and its gradient with respect to the embeddings (and the
weights), computed in float64.
"""
import os
import sys

import numpy as np
import pytorch_metric_learning
import torch
from pytorch_metric_learning import distances, losses, miners, reducers

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "pml_reference.npz")
N_CLASSES, DIM = 6, 16


def pk_labels(p, k, rng):
    return np.repeat(rng.choice(N_CLASSES, p, replace=False), k)


def separated(labels, rng):
    """Embeddings whose classes are far apart (own axis, small noise): the MS miner keeps no pair."""
    x = np.zeros((len(labels), DIM))
    x[np.arange(len(labels)), labels] = 1.0
    return x + 0.01 * rng.standard_normal(x.shape)


def run(loss_fn, embeddings, labels, weights=None, attr=None, indices=None, miner=None):
    x = torch.tensor(embeddings, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(labels, dtype=torch.long)
    params = []
    if weights is not None:
        getattr(loss_fn, attr).data = torch.tensor(weights, dtype=torch.float64)
        params = [getattr(loss_fn, attr)]
    loss_fn = loss_fn.double()
    if miner is not None:
        indices = miner(x, y)
    loss = loss_fn(x, y, indices) if indices is not None else loss_fn(x, y)
    grads = torch.autograd.grad(loss, [x, *params], allow_unused=True)
    tensors = [x, *params]
    grads = [np.zeros_like(t.detach().numpy()) if g is None else g.numpy() for g, t in zip(grads, tensors, strict=True)]
    return float(loss.detach()), grads


def paddle_npairs(x, y, reg_lambda=0.01, k=2):
    """npairsloss.py: split the P x 2 batch into anchors and positives, soft-label cross-entropy of their dot
    products, plus 0.5 * reg_lambda * mean squared norm of all rows."""
    feature = x.reshape(-1, k, x.shape[1])
    label = y.reshape(-1, k).double()
    anchor, positive = feature[:, 0], feature[:, 1]
    sim = anchor @ positive.T
    target = (label[:, :1] == label[:, 1:2].T).double() / (k - 1)
    xent = -(target * torch.log(torch.softmax(sim, dim=1))).sum(dim=1).mean()
    return xent + 0.5 * reg_lambda * (x * x).sum(dim=1).mean()


def paddle_eml(x, k):
    """emlloss.py with calculate_order_dist_matrix: rows reordered [self, own class block, the rest], labels
    unused (the batch is P x k blocks)."""
    n = x.shape[0]
    sq = (x * x).sum(dim=1)
    d = -2 * x @ x.T + sq[:, None] + sq[None, :]
    order = []
    for i in range(n):
        block = i // k
        own = [j for j in range(block * k, block * k + k) if j != i]
        rest = [j for j in range(n) if j // k != block]
        order.append([i] + own + rest)
    d = torch.gather(d, 1, torch.tensor(order))
    pos, neg = d[:, 1:k], d[:, k:]
    pos_max = pos.max(dim=1, keepdim=True).values
    pos_mean = torch.exp(pos - pos_max).mean(dim=1)
    neg_min = neg.min(dim=1, keepdim=True).values
    neg_mean = torch.exp(-(neg - neg_min)).mean(dim=1)
    bias = (pos_max - neg_min).reshape(-1)
    theta = neg_mean * pos_mean
    beta, thresh = 100000.0, 20.0

    def surrogate(t, b):
        return torch.log(1 + beta * t * torch.exp(b)) / np.log(1 + beta)

    gap = torch.tensor(thresh, dtype=x.dtype)
    loss = (surrogate(theta, torch.minimum(bias, gap))
            + (torch.log(theta) + torch.maximum(bias, gap) + np.log(beta)) / np.log(1 + beta)
            - surrogate(theta, gap))
    return loss.mean()


class Formula(torch.nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, x, y):
        return self.fn(x, y, **self.kwargs) if self.fn is paddle_npairs else self.fn(x, **self.kwargs)


def main():
    cases = {}

    def add(name, embeddings, labels, loss, grads, weights=None):
        cases[f"{name}/embeddings"] = embeddings
        cases[f"{name}/labels"] = labels.astype(np.int32)
        cases[f"{name}/loss"] = np.float64(loss)
        cases[f"{name}/grad"] = grads[0]
        if weights is not None:
            cases[f"{name}/weights"] = weights
            cases[f"{name}/grad_weights"] = grads[1]

    for seed in range(3):
        rng = np.random.default_rng(seed)
        labels = pk_labels(4, 3, rng)
        x = rng.standard_normal((len(labels), DIM))
        # Multi-Similarity, with its miner and without.
        loss, grads = run(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), x, labels,
                          miner=miners.MultiSimilarityMiner(epsilon=0.1))
        add(f"multisimilarity_mined_{seed}", x, labels, loss, grads)
        loss, grads = run(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), x, labels)
        add(f"multisimilarity_{seed}", x, labels, loss, grads)
        # Proxy-Anchor and Normalized Softmax: some classes absent from the batch.
        proxies = rng.standard_normal((N_CLASSES, DIM))
        loss, grads = run(losses.ProxyAnchorLoss(N_CLASSES, DIM, margin=0.1, alpha=32), x, labels, proxies, "proxies")
        add(f"proxyanchor_{seed}", x, labels, loss, grads, proxies)
        weights = rng.standard_normal((DIM, N_CLASSES))
        loss, grads = run(losses.NormalizedSoftmaxLoss(N_CLASSES, DIM, temperature=0.05), x, labels, weights, "W")
        add(f"normsoftmax_{seed}", x, labels, loss, grads, weights)
        # ArcFace with ours' defaults: margin 0.15 rad, scale 80.
        loss, grads = run(losses.ArcFaceLoss(N_CLASSES, DIM, margin=float(np.degrees(0.15)), scale=80), x, labels,
                          weights, "W")
        add(f"arcmargin_{seed}", x, labels, loss, grads, weights)
        # Triplet: explicit consecutive (anchor, positive, negative) rows, squared L2 on normalised embeddings.
        anchors = rng.choice(N_CLASSES, 4)
        others = (anchors + rng.integers(1, N_CLASSES, 4)) % N_CLASSES
        trip_labels = np.stack([anchors, anchors, others], axis=1).reshape(-1)
        tx = rng.standard_normal((len(trip_labels), DIM))
        rows = np.arange(0, len(trip_labels), 3)
        indices = tuple(torch.tensor(rows + k) for k in range(3))
        for reduction, reducer in (("sum", reducers.SumReducer()), ("mean", reducers.MeanReducer())):
            loss_fn = losses.TripletMarginLoss(margin=0.1, distance=distances.LpDistance(power=2), reducer=reducer)
            loss, grads = run(loss_fn, tx, trip_labels, indices=indices)
            add(f"triplet_{reduction}_{seed}", tx, trip_labels, loss, grads)
    # The Paddle original's N-pairs (P x 2) and EML (P x k), on raw embeddings of moderate norm.
    for seed in range(3):
        rng = np.random.default_rng(20 + seed)
        labels = np.repeat(rng.choice(N_CLASSES, 5, replace=False), 2)
        x = 0.4 * rng.standard_normal((len(labels), DIM))
        loss, grads = run(Formula(paddle_npairs, reg_lambda=0.01), x, labels)
        add(f"npairs_{seed}", x, labels, loss, grads)
        for k in (2, 3):
            labels = np.repeat(rng.choice(N_CLASSES, 4, replace=False), k)
            x = 0.5 * rng.standard_normal((len(labels), DIM))
            loss, grads = run(Formula(paddle_eml, k=k), x, labels)
            add(f"eml_k{k}_{seed}", x, labels, loss, grads)
    # The quadruplet loss with mining="anchor": per anchor its hardest positive and negative (BatchHardMiner, squared
    # L2 on normalised embeddings), the triplet hinge averaged over the anchors (MeanReducer). P x K batches, and one
    # with a single-image class (an anchor without positives, left out).
    for seed, labels in ((0, np.repeat([0, 3, 4, 5], 3)), (1, np.repeat([1, 2, 3, 5, 0], 2)),
                         (2, np.array([0, 0, 0, 1, 1, 2, 2, 2, 4]))):
        rng = np.random.default_rng(40 + seed)
        x = rng.standard_normal((len(labels), DIM))
        sq_l2 = distances.LpDistance(power=2)
        loss, grads = run(losses.TripletMarginLoss(margin=0.1, distance=sq_l2, reducer=reducers.MeanReducer()), x,
                          labels, miner=miners.BatchHardMiner(distance=sq_l2))
        add(f"quadruplet_anchor_{seed}", x, labels, loss, grads)
    # All pairs on a 6 classes x 4 images batch (the README's miner_epsilon -1).
    rng = np.random.default_rng(30)
    labels = np.repeat(rng.choice(N_CLASSES, 6, replace=False), 4)
    x = rng.standard_normal((len(labels), DIM))
    loss, grads = run(losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5), x, labels)
    add("multisimilarity_allpairs_pk", x, labels, loss, grads)
    # Batches where the MS miner keeps nothing (loss 0, gradient 0), and one with one class only.
    rng = np.random.default_rng(10)
    labels = pk_labels(4, 3, rng)
    x = separated(labels, rng)
    loss, grads = run(losses.MultiSimilarityLoss(), x, labels, miner=miners.MultiSimilarityMiner(epsilon=0.1))
    add("multisimilarity_mined_nothing", x, labels, loss, grads)
    labels = np.zeros(6, np.int64)
    x = rng.standard_normal((6, DIM))
    loss, grads = run(losses.MultiSimilarityLoss(), x, labels, miner=miners.MultiSimilarityMiner(epsilon=0.1))
    add("multisimilarity_mined_one_class", x, labels, loss, grads)
    cases["versions"] = np.array([f"torch {torch.__version__}", f"pytorch-metric-learning "
                                  f"{pytorch_metric_learning.__version__}", f"python {sys.version.split()[0]}"])
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    np.savez_compressed(OUT, **cases)
    print(f"wrote {OUT}: {len([k for k in cases if k.endswith('/loss')])} cases, {os.path.getsize(OUT)} bytes")
    for key in sorted(k for k in cases if k.endswith("/loss")):
        print(f"  {key[:-5]}: loss {float(cases[key]):.6g}")


if __name__ == "__main__":
    main()
