"""EML loss as the Paddle original's `eml`, on the raw embeddings of P x K batches."""
import math

import mindspore as ms
from mindspore import nn, ops

from src.losses.common import pair_masks, squared_distances


class EMLloss(nn.Cell):
    """EML as the Paddle original's `eml` (PaddleCV/metric_learning/losses/emlloss.py; after Huang et al.,
    "Large scale strongly supervised ensemble metric learning", 2012), on the raw embeddings.

    With D the squared Euclidean distances, for every anchor i over its positives P_i and negatives N_i:
    x_i = mean_{p, n} exp(D_ip - D_in), loss_i = log(1 + beta x_i) / log(1 + beta), beta = 100000, averaged
    over the batch; computed as Paddle does (shifted by the largest positive and smallest negative distance,
    and past a gap of 20 through the logarithm's asymptote). Paddle finds P_i and N_i from the layout of its
    P x K batches; here they come from the labels, the same on such batches.
    """

    BETA = 100000.0
    THRESH = 20.0

    def __init__(self, check_labels=True):
        super().__init__()
        self.check_labels = check_labels

    def _surrogate(self, theta, bias):
        return ops.log(1.0 + self.BETA * theta * ops.exp(bias)) / math.log(1.0 + self.BETA)

    def construct(self, embeddings, label):
        pos, neg = pair_masks(label)
        if self.check_labels:
            if not (pos.sum(axis=1) > 0).all() or not (neg.sum(axis=1) > 0).all():
                raise ValueError("EMLloss: every image needs another of its label and one of another label in the "
                                 "batch (P x K batches with K >= 2)")
        dist = squared_distances(embeddings)
        pos_max = (dist * pos - 1e30 * (1.0 - pos)).max(axis=1, keepdims=True)
        neg_min = (dist * neg + 1e30 * (1.0 - neg)).min(axis=1, keepdims=True)
        pos_mean = (ops.exp((dist - pos_max) * pos) * pos).sum(axis=1) / pos.sum(axis=1)
        neg_mean = (ops.exp(-(dist - neg_min) * neg) * neg).sum(axis=1) / neg.sum(axis=1)
        bias = (pos_max - neg_min).squeeze(1)
        theta = pos_mean * neg_mean
        gap = ms.Tensor(self.THRESH, ms.float32)
        exact = self._surrogate(theta, ops.minimum(bias, gap))
        asymptote = (ops.log(theta) + ops.maximum(bias, gap) + math.log(self.BETA)) / math.log(1.0 + self.BETA)
        return (exact + asymptote - self._surrogate(theta, gap)).mean()
