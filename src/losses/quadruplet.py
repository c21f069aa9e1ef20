"""The seed's quadruplet loss: margin sample mining over the whole batch, or per anchor (`mining`)."""
from mindspore import nn, ops

from src.losses.common import pair_masks, squared_distances
from src.models.resnet import l2_normalize

# batch: the seed's margin sample mining, the batch's one hardest positive pair against its one hardest
#        negative pair; anchor: the same hinge for every anchor (its hardest positive against its hardest
#        negative), averaged over the anchors that have both ("batch hard", Hermans et al. 2017).
MINING = ("batch", "anchor")


class Quadrupletloss(nn.Cell):
    """What the seed calls quadruplet loss: margin sample mining over the batch.

    mining="batch" (the seed's): loss = max(0, max_{same label, i != j} D_ij - min_{different label} D_ij
    + margin), with D the squared distances of the L2-normalised embeddings. At most four images of the
    batch receive gradient.
    mining="anchor": the same hinge per anchor i, max(0, max_{j positive of i} D_ij - min_{j negative of i}
    D_ij + margin), averaged over the anchors with at least one positive and one negative: every image of
    a P x K batch receives gradient.
    The masks come from the labels, so any batch with at least one positive and one negative pair works;
    on the seed's P x K batches (`samples_each_class` consecutive images per class) mining="batch" equals
    the seed's formula. `samples_each_class` is kept for the seed's signature and validated.
    """

    def __init__(self, margin=0.1, samples_each_class=2, check_labels=True, mining="batch"):
        super().__init__()
        if int(samples_each_class) < 2:
            raise ValueError(f"samples_each_class must be >= 2, got {samples_each_class}")
        if mining not in MINING:
            raise ValueError(f"mining must be one of {MINING}, got {mining!r}")
        self.margin = float(margin)
        self.samples_each_class = int(samples_each_class)
        self.check_labels = check_labels
        self.per_anchor = mining == "anchor"

    def construct(self, embeddings, label):
        dist = ops.relu(squared_distances(l2_normalize(embeddings, axis=1)))
        pos, neg = pair_masks(label)
        if self.check_labels:
            if not pos.sum() > 0:
                raise ValueError("Quadrupletloss: the batch has no positive pair; it needs at least two "
                                 "images of one label (P x K batches with K >= 2)")
            if not neg.sum() > 0:
                raise ValueError("Quadrupletloss: the batch has no negative pair; it needs at least two "
                                 "different labels")
        # Distances are in [0, 4], so -10 / +10 stand in for "excluded" (arithmetic masking: the
        # graph-mode gradient of a masked fill is broken in MindSpore 2.10).
        pos_dist = dist * pos - 10.0 * (1.0 - pos)
        neg_dist = dist * neg + 10.0 * (1.0 - neg)
        if self.per_anchor:
            valid = ops.logical_and(pos.max(axis=1) > 0, neg.max(axis=1) > 0).astype(dist.dtype)
            hinge = ops.relu(pos_dist.max(axis=1) - neg_dist.min(axis=1) + self.margin) * valid
            return hinge.sum() / ops.maximum(valid.sum(), 1.0)
        return ops.relu(pos_dist.max() - neg_dist.min() + self.margin)
