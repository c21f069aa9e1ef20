"""What several losses share: cross-entropy on soft targets, one-hot targets, pair masks from labels, pairwise
distances and cosines, and a stable log(1 + sum exp) over a mask."""
import mindspore as ms
from mindspore import ops

from src.models.resnet import l2_normalize


def cross_entropy(logits, target):
    """Mean over the batch of -sum(target * log_softmax(logits)).

    Written with log_softmax because MindSpore 2.10's SoftmaxCrossEntropyWithLogits on CPU returns
    inf once the target's probability underflows (a logit gap of ~90, reachable at scale 80).
    """
    return -(target * ops.log_softmax(logits, axis=1)).sum(axis=1).mean()


def one_hot(label, num_classes):
    """float32 one-hot rows of integer labels."""
    return ops.one_hot(label, num_classes, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))


def log1p_sum_exp(z, mask, axis):
    """log(1 + sum over `mask` of exp(z)) along `axis`, computed stably (0 where the mask is empty).

    pytorch-metric-learning's logsumexp(..., add_one=True) with a keep mask."""
    floor = ops.stop_gradient(ops.maximum((z * mask - 1e4 * (1.0 - mask)).max(axis=axis, keepdims=True), 0.0))
    total = ops.exp(-floor) + (ops.exp(z - floor) * mask).sum(axis=axis, keepdims=True)
    return (ops.log(total) + floor).squeeze(axis)


def cosine(x, y):
    """Cosine similarities of the rows of x with the rows of y."""
    return ops.matmul(l2_normalize(x, axis=1), l2_normalize(y, axis=1).T)


def squared_distances(x):
    """|x_i - x_j|^2 of every pair of rows, as |x_i|^2 + |x_j|^2 - 2 x_i . x_j (may dip below 0 by rounding)."""
    sq = (x * x).sum(axis=1)
    return sq.view(-1, 1) + sq.view(1, -1) - 2.0 * ops.matmul(x, x.T)


def pair_masks(label):
    """(positive, negative) float masks of a batch: same label and not itself / different label."""
    same = label.view(-1, 1) == label.view(1, -1)
    not_self = ops.logical_not(ops.eye(label.shape[0], label.shape[0], ms.bool_))
    return ops.logical_and(same, not_self).astype(ms.float32), ops.logical_not(same).astype(ms.float32)
