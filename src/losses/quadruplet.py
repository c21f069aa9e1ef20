"""The seed's quadruplet loss: margin sample mining over the whole batch."""
from mindspore import nn, ops

from src.losses.common import pair_masks, squared_distances
from src.models.resnet import l2_normalize


class Quadrupletloss(nn.Cell):
    """What the seed calls quadruplet loss: margin sample mining over the whole batch.

    loss = max(0, max_{same label, i != j} D_ij - min_{different label} D_ij + margin), with D the
    squared distances of the L2-normalised embeddings. The masks come from the labels, so any batch
    with at least one positive and one negative pair works; on the seed's P x K batches
    (`samples_each_class` consecutive images per class) it equals the seed's formula.
    `samples_each_class` is kept for the seed's signature and validated; the masks do not need it.
    """

    def __init__(self, margin=0.1, samples_each_class=2, check_labels=True):
        super().__init__()
        if int(samples_each_class) < 2:
            raise ValueError(f"samples_each_class must be >= 2, got {samples_each_class}")
        self.margin = float(margin)
        self.samples_each_class = int(samples_each_class)
        self.check_labels = check_labels

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
        hardest_pos = (dist * pos - 10.0 * (1.0 - pos)).max()
        hardest_neg = (dist * neg + 10.0 * (1.0 - neg)).min()
        return ops.relu(hardest_pos - hardest_neg + self.margin)
