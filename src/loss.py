"""Losses: softmax (pre-training), ArcMargin (pre-training), triplet and quadruplet (fine-tuning).

All metric losses L2-normalise the embeddings first and work on squared Euclidean distances.
Label checks that depend on tensor values (a batch without positives or negatives) run inside
the graph and raise ValueError; they can be turned off with `check_labels=False`.
"""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import XavierUniform, initializer

from src.resnet import l2_normalize

LOSS_NAMES = ("softmax", "arcmargin", "triplet", "quadruplet")
REDUCTIONS = ("sum", "mean")


def _cross_entropy(logits, target):
    """Mean over the batch of -sum(target * log_softmax(logits)).

    Written with log_softmax because MindSpore 2.10's SoftmaxCrossEntropyWithLogits on CPU returns
    inf once the target's probability underflows (a logit gap of ~90, reachable at scale 80).
    """
    return -(target * ops.log_softmax(logits, axis=1)).sum(axis=1).mean()


class Softmaxloss(nn.Cell):
    """Cross-entropy on logits with integer labels; label smoothing as in the model zoo.

    The target is `1 - smooth_factor` on the true class and `smooth_factor / (num_classes - 1)`
    on every other class; the batch loss is the mean.
    """

    def __init__(self, num_classes, smooth_factor=0.1):
        super().__init__()
        num_classes = int(num_classes)
        if num_classes < 2:
            raise ValueError(f"Softmaxloss needs num_classes >= 2, got {num_classes}")
        if not 0.0 <= smooth_factor < 1.0:
            raise ValueError(f"smooth_factor must be in [0, 1), got {smooth_factor}")
        self.num_classes = num_classes
        self.on_value = ms.Tensor(1.0 - smooth_factor, ms.float32)
        self.off_value = ms.Tensor(smooth_factor / (num_classes - 1), ms.float32)

    def construct(self, logits, label):
        return _cross_entropy(logits, ops.one_hot(label, self.num_classes, self.on_value, self.off_value))


class ArcMarginloss(nn.Cell):
    """Additive angular margin softmax (ArcFace), as the Paddle original's `arcmargin` loss.

    logits_j = scale * cos(theta_j) for j != y and scale * cos(theta_y + margin) for the label y,
    where cos(theta_j) is the cosine between the embedding and class weight j. Past theta_y >
    pi - margin the penalty becomes the linear `cos(theta_y) - sin(pi - margin) * margin`, which
    keeps the target logit monotone. The class weights (feature_dim x class_num) live in the loss.
    """

    def __init__(self, class_num, feature_dim=2048, scale=80.0, margin=0.15, easy_margin=False):
        super().__init__()
        if int(class_num) < 2:
            raise ValueError(f"ArcMarginloss needs class_num >= 2, got {class_num}")
        self.class_num = int(class_num)
        self.weight = Parameter(initializer(XavierUniform(), (feature_dim, self.class_num), ms.float32),
                                name="arcmargin.weight")
        self.scale = float(scale)
        self.cos_m = math.cos(margin)
        self.sin_m = math.sin(margin)
        self.threshold = math.cos(math.pi - margin)
        self.linear_penalty = math.sin(math.pi - margin) * margin
        self.easy_margin = easy_margin

    def logits(self, embeddings, label):
        x = l2_normalize(embeddings, axis=1)
        w = l2_normalize(self.weight, axis=0)
        cosine = ops.clip_by_value(ops.matmul(x, w), -1.0, 1.0)
        # The small floor keeps the gradient of sqrt finite at |cos| = 1.
        sine = ops.sqrt(ops.maximum(1.0 - cosine * cosine, 1e-12))
        phi = cosine * self.cos_m - sine * self.sin_m
        if self.easy_margin:
            phi = ops.where(cosine > 0.0, phi, cosine)
        else:
            phi = ops.where(cosine > self.threshold, phi, cosine - self.linear_penalty)
        target = self._one_hot(label)
        return self.scale * (target * phi + (1.0 - target) * cosine)

    def _one_hot(self, label):
        return ops.one_hot(label, self.class_num, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))

    def construct(self, embeddings, label):
        return _cross_entropy(self.logits(embeddings, label), self._one_hot(label))


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
        x = l2_normalize(embeddings, axis=1)
        sq = (x * x).sum(axis=1)
        dist = ops.relu(sq.view(-1, 1) + sq.view(1, -1) - 2.0 * ops.matmul(x, x.T))
        same = label.view(-1, 1) == label.view(1, -1)
        not_self = ops.logical_not(ops.eye(x.shape[0], x.shape[0], ms.bool_))
        pos_mask = ops.logical_and(same, not_self)
        neg_mask = ops.logical_not(same)
        if self.check_labels:
            if not pos_mask.any():
                raise ValueError("Quadrupletloss: the batch has no positive pair; it needs at least two "
                                 "images of one label (P x K batches with K >= 2)")
            if not neg_mask.any():
                raise ValueError("Quadrupletloss: the batch has no negative pair; it needs at least two "
                                 "different labels")
        # Distances are in [0, 4], so -10 / +10 stand in for "excluded" (arithmetic masking: the
        # graph-mode gradient of a masked fill is broken in MindSpore 2.10).
        pos, neg = pos_mask.astype(dist.dtype), neg_mask.astype(dist.dtype)
        hardest_pos = (dist * pos - 10.0 * (1.0 - pos)).max()
        hardest_neg = (dist * neg + 10.0 * (1.0 - neg)).min()
        return ops.relu(hardest_pos - hardest_neg + self.margin)


def create_loss(loss_name, cfg):
    """Build the loss named `loss_name` from a config with the keys of src/configs/*.yaml."""
    if loss_name == "softmax":
        return Softmaxloss(cfg.class_num, smooth_factor=cfg.label_smooth_factor)
    if loss_name == "arcmargin":
        return ArcMarginloss(cfg.class_num, scale=cfg.arc_scale, margin=cfg.arc_margin)
    if loss_name == "triplet":
        return Tripletloss(margin=cfg.margin, reduction=cfg.loss_reduction)
    if loss_name == "quadruplet":
        return Quadrupletloss(margin=cfg.margin, samples_each_class=cfg.samples_each_class)
    raise ValueError(f"unknown loss_name {loss_name!r}; expected one of {', '.join(LOSS_NAMES)}")
