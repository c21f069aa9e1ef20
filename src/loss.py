"""Losses: softmax and ArcMargin (pre-training), triplet and quadruplet (the seed's fine-tuning), and the losses
people compare today: Multi-Similarity (with its miner), Proxy-Anchor, Normalized Softmax, and the Paddle
original's N-pairs and EML.

Triplet and quadruplet L2-normalise the embeddings and work on squared Euclidean distances;
Multi-Similarity, Proxy-Anchor, Normalized Softmax and ArcMargin on cosine similarities; N-pairs and
EML, as in Paddle, on the raw embeddings. Each loss that has a pytorch-metric-learning counterpart
equals it in value and gradient (tests/test_loss_reference.py against tests/data/pml_reference.npz).
Label checks that depend on tensor values (a batch without positives or negatives) run inside
the graph and raise ValueError; they can be turned off with `check_labels=False`.
"""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeNormal, Normal, XavierUniform, initializer

from src.resnet import feature_dim, l2_normalize

LOSS_NAMES = ("softmax", "arcmargin", "triplet", "quadruplet", "multisimilarity", "proxyanchor", "normsoftmax",
              "npairs", "eml")
# Losses with class weights or proxies of their own (trained with the network; config key proxy_lr_multiplier).
PROXY_LOSSES = ("arcmargin", "proxyanchor", "normsoftmax")
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
        dist = ops.relu(_squared_distances(l2_normalize(embeddings, axis=1)))
        pos, neg = _pair_masks(label)
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


def _log1p_sum_exp(z, mask, axis):
    """log(1 + sum over `mask` of exp(z)) along `axis`, computed stably (0 where the mask is empty).

    pytorch-metric-learning's logsumexp(..., add_one=True) with a keep mask."""
    floor = ops.stop_gradient(ops.maximum((z * mask - 1e4 * (1.0 - mask)).max(axis=axis, keepdims=True), 0.0))
    total = ops.exp(-floor) + (ops.exp(z - floor) * mask).sum(axis=axis, keepdims=True)
    return (ops.log(total) + floor).squeeze(axis)


def _cosine(x, y):
    """Cosine similarities of the rows of x with the rows of y."""
    return ops.matmul(l2_normalize(x, axis=1), l2_normalize(y, axis=1).T)


def _squared_distances(x):
    """|x_i - x_j|^2 of every pair of rows, as |x_i|^2 + |x_j|^2 - 2 x_i . x_j (may dip below 0 by rounding)."""
    sq = (x * x).sum(axis=1)
    return sq.view(-1, 1) + sq.view(1, -1) - 2.0 * ops.matmul(x, x.T)


def _pair_masks(label):
    """(positive, negative) float masks of a batch: same label and not itself / different label."""
    same = label.view(-1, 1) == label.view(1, -1)
    not_self = ops.logical_not(ops.eye(label.shape[0], label.shape[0], ms.bool_))
    return ops.logical_and(same, not_self).astype(ms.float32), ops.logical_not(same).astype(ms.float32)


class MultiSimilarityloss(nn.Cell):
    """Multi-Similarity loss (Wang et al., CVPR 2019) with its miner, as pytorch-metric-learning's
    MultiSimilarityLoss(alpha, beta, base) on the pairs of MultiSimilarityMiner(epsilon).

    With S the cosine similarities, for every anchor i over the mined positives P_i and negatives N_i:
    loss_i = 1/alpha * log(1 + sum_P exp(-alpha (S_ip - base))) + 1/beta * log(1 + sum_N exp(beta (S_in - base))),
    averaged over all anchors. The miner keeps a positive if S_ip - epsilon < max_n S_in and a negative if
    S_in + epsilon > min_p S_ip (per anchor); epsilon None: every pair. As the library does, the loss is 0
    when the miner keeps at most one positive and one negative pair in the whole batch.
    """

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, miner_epsilon=0.1):
        super().__init__()
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)
        self.epsilon = None if miner_epsilon is None else float(miner_epsilon)

    def construct(self, embeddings, label):
        sim = _cosine(embeddings, embeddings)
        pos, neg = _pair_masks(label)
        if self.epsilon is not None:
            s = ops.stop_gradient(sim)
            # Similarities are in [-1, 1]: -10 / +10 stand for "no such pair" (an empty row mines nothing).
            hardest_neg = (s * neg - 10.0 * (1.0 - neg)).max(axis=1, keepdims=True)
            easiest_pos = (s * pos + 10.0 * (1.0 - pos)).min(axis=1, keepdims=True)
            any_pairs = ops.logical_and(pos.sum() > 0, neg.sum() > 0).astype(ms.float32)
            pos = pos * (s - self.epsilon < hardest_neg).astype(ms.float32) * any_pairs
            neg = neg * (s + self.epsilon > easiest_pos).astype(ms.float32) * any_pairs
        enough = ops.logical_or(pos.sum() > 1, neg.sum() > 1).astype(ms.float32)
        pos_loss = _log1p_sum_exp(self.alpha * (self.base - sim), pos, 1) / self.alpha
        neg_loss = _log1p_sum_exp(self.beta * (sim - self.base), neg, 1) / self.beta
        return (pos_loss + neg_loss).mean() * enough


class ProxyAnchorloss(nn.Cell):
    """Proxy-Anchor loss (Kim et al., CVPR 2020), as pytorch-metric-learning's ProxyAnchorLoss(num_classes,
    embedding_size, margin, alpha): one proxy per class, with C the cosines of embeddings and proxies,

    loss = 1/|P+| sum_{p in P+} log(1 + sum_{x of class p} exp(-alpha (C_xp - margin)))
         + 1/|P| sum_{p} log(1 + sum_{x not of class p} exp(alpha (C_xp + margin))),

    P+ the proxies of the classes in the batch. The proxies (class_num x feature_dim, He-normal like the library)
    live in the loss and are trained with it (the paper: at 100 times the learning rate).
    """

    def __init__(self, class_num, feature_dim=2048, margin=0.1, alpha=32.0):
        super().__init__()
        if int(class_num) < 2:
            raise ValueError(f"ProxyAnchorloss needs class_num >= 2, got {class_num}")
        self.class_num = int(class_num)
        self.proxies = Parameter(initializer(HeNormal(mode="fan_out"), (self.class_num, int(feature_dim)),
                                             ms.float32), name="proxyanchor.proxies")
        self.margin, self.alpha = float(margin), float(alpha)

    def construct(self, embeddings, label):
        cos = _cosine(embeddings, self.proxies)
        pos = ops.one_hot(label, self.class_num, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
        neg = 1.0 - pos
        with_pos = (pos.sum(axis=0) > 0).astype(ms.float32).sum()
        pos_term = _log1p_sum_exp(self.alpha * (self.margin - cos), pos, 0).sum() / with_pos
        neg_term = _log1p_sum_exp(self.alpha * (cos + self.margin), neg, 0).sum() / self.class_num
        return pos_term + neg_term


class NormSoftmaxloss(nn.Cell):
    """Normalized Softmax (Zhai and Wu, "Classification is a strong baseline for deep metric learning", BMVC
    2019), as pytorch-metric-learning's NormalizedSoftmaxLoss(num_classes, embedding_size, temperature):
    cross-entropy of cosine(embedding, class weight) / temperature, averaged over the batch. The class weights
    (feature_dim x class_num) live in the loss."""

    def __init__(self, class_num, feature_dim=2048, temperature=0.05):
        super().__init__()
        if int(class_num) < 2:
            raise ValueError(f"NormSoftmaxloss needs class_num >= 2, got {class_num}")
        self.class_num = int(class_num)
        self.weight = Parameter(initializer(Normal(0.01), (int(feature_dim), self.class_num), ms.float32),
                                name="normsoftmax.weight")
        self.temperature = float(temperature)

    def construct(self, embeddings, label):
        logits = ops.matmul(l2_normalize(embeddings, axis=1), l2_normalize(self.weight, axis=0)) / self.temperature
        target = ops.one_hot(label, self.class_num, ms.Tensor(1.0, ms.float32), ms.Tensor(0.0, ms.float32))
        return _cross_entropy(logits, target)


class NPairsloss(nn.Cell):
    """N-pairs loss as the Paddle original's `npairs` (PaddleCV/metric_learning/losses/npairsloss.py).

    The batch is pairs of consecutive rows (anchor 2i, positive 2i + 1; P x 2 batches). On the raw embeddings
    (no normalisation): S = anchors . positives^T, soft targets T_ij = [label_i == label_j] / (k - 1) with
    k = 2, loss = mean_i cross-entropy(softmax(S_i), T_i) + reg_lambda / 2 * mean_n |f_n|^2 over all rows.
    pytorch-metric-learning's NPairsLoss differs: it L2-normalises (cosine logits), has no regulariser, and pairs
    the first two samples of each label wherever they are.
    """

    def __init__(self, reg_lambda=0.01):
        super().__init__()
        self.reg_lambda = float(reg_lambda)

    def construct(self, embeddings, label):
        n = embeddings.shape[0]
        if n % 2 != 0 or n == 0:
            raise ValueError(f"NPairsloss needs a batch of consecutive (anchor, positive) rows, so an even size; "
                             f"got {n}")
        anchor, positive = embeddings[0::2], embeddings[1::2]
        target = (label[0::2].view(-1, 1) == label[1::2].view(1, -1)).astype(ms.float32)
        xent = -(target * ops.log_softmax(ops.matmul(anchor, positive.T), axis=1)).sum(axis=1).mean()
        return xent + 0.5 * self.reg_lambda * (embeddings * embeddings).sum(axis=1).mean()


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
        pos, neg = _pair_masks(label)
        if self.check_labels:
            if not (pos.sum(axis=1) > 0).all() or not (neg.sum(axis=1) > 0).all():
                raise ValueError("EMLloss: every image needs another of its label and one of another label in the "
                                 "batch (P x K batches with K >= 2)")
        dist = _squared_distances(embeddings)
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


def create_loss(loss_name, cfg):
    """Build the loss named `loss_name` from a config with the keys of src/configs/*.yaml."""
    if loss_name == "softmax":
        return Softmaxloss(cfg.class_num, smooth_factor=cfg.label_smooth_factor)
    if loss_name == "arcmargin":
        return ArcMarginloss(cfg.class_num, feature_dim(cfg.embedding_size), scale=cfg.arc_scale,
                             margin=cfg.arc_margin)
    if loss_name == "triplet":
        return Tripletloss(margin=cfg.margin, reduction=cfg.loss_reduction)
    if loss_name == "quadruplet":
        return Quadrupletloss(margin=cfg.margin, samples_each_class=cfg.samples_each_class)
    if loss_name == "multisimilarity":
        epsilon = cfg.miner_epsilon if cfg.miner_epsilon >= 0 else None
        return MultiSimilarityloss(cfg.alpha, cfg.beta, cfg.base, miner_epsilon=epsilon)
    if loss_name == "proxyanchor":
        return ProxyAnchorloss(cfg.class_num, feature_dim(cfg.embedding_size), margin=cfg.margin, alpha=cfg.alpha)
    if loss_name == "normsoftmax":
        return NormSoftmaxloss(cfg.class_num, feature_dim(cfg.embedding_size), temperature=cfg.temperature)
    if loss_name == "npairs":
        return NPairsloss(reg_lambda=cfg.reg_lambda)
    if loss_name == "eml":
        return EMLloss()
    raise ValueError(f"unknown loss_name {loss_name!r}; expected one of {', '.join(LOSS_NAMES)}")
