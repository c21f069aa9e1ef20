"""Triplet loss on consecutive (anchor, positive, negative) rows: the seed's first fine-tuning loss."""
from mindspore import nn, ops

from src.models.resnet import l2_normalize

REDUCTIONS = ("sum", "mean")


def _reduce(values, reduction):
    return values.sum() if reduction == "sum" else values.mean()


class Tripletloss(nn.Cell):
    """Hinge on squared distances for consecutive (anchor, positive, negative) rows.

    loss_i = max(0, |a_i - p_i|^2 - |a_i - n_i|^2 + margin) on L2-normalised embeddings.
    `reduction="sum"` (default) matches the seed, whose vector-valued loss was differentiated as a
    sum: its learning rates (const 1e-4 at 20 triplets per device) assume that scale.
    """

    def __init__(self, margin=0.1, reduction="sum", check_labels=True):
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.margin = float(margin)
        self.reduction = reduction
        self.check_labels = check_labels

    def construct(self, embeddings, label):
        n = embeddings.shape[0]
        if n % 3 != 0 or n == 0:
            raise ValueError(f"Tripletloss needs a batch of consecutive (anchor, positive, negative) "
                             f"rows, so a positive multiple of 3; got batch size {n}")
        if self.check_labels:
            if not (label[0::3] == label[1::3]).all():
                raise ValueError("Tripletloss: every positive (rows 1, 4, 7, ...) needs the label of "
                                 "its anchor (rows 0, 3, 6, ...)")
            if (label[0::3] == label[2::3]).any():
                raise ValueError("Tripletloss: every negative (rows 2, 5, 8, ...) needs a label other "
                                 "than its anchor's")
        x = l2_normalize(embeddings, axis=1)
        anchor, positive, negative = x[0::3], x[1::3], x[2::3]
        pos_dist = ((anchor - positive) ** 2).sum(axis=1)
        neg_dist = ((anchor - negative) ** 2).sum(axis=1)
        return _reduce(ops.relu(pos_dist - neg_dist + self.margin), self.reduction)
