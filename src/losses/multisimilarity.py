"""Multi-Similarity loss with its miner (Wang et al., CVPR 2019)."""
import mindspore as ms
from mindspore import nn, ops

from src.losses.common import cosine, log1p_sum_exp, pair_masks


class MultiSimilarityloss(nn.Cell):
    """Multi-Similarity loss (Wang et al., CVPR 2019) with its miner, as pytorch-metric-learning's
    MultiSimilarityLoss(alpha, beta, base) on the pairs of MultiSimilarityMiner(epsilon).

    With S the cosine similarities, for every anchor i over the mined positives P_i and negatives N_i:
    loss_i = 1/alpha * log(1 + sum_P exp(-alpha (S_ip - base))) + 1/beta * log(1 + sum_N exp(beta (S_in - base))),
    averaged over all anchors. The miner keeps a positive if S_ip - epsilon < max_n S_in and a negative if
    S_in + epsilon > min_p S_ip (per anchor); epsilon None or negative (the config's -1): every pair. As the
    library does, the loss is 0 when the miner keeps at most one positive and one negative pair in the whole batch.
    """

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, miner_epsilon=0.1):
        super().__init__()
        self.alpha, self.beta, self.base = float(alpha), float(beta), float(base)
        self.epsilon = None if miner_epsilon is None or miner_epsilon < 0 else float(miner_epsilon)

    def construct(self, embeddings, label):
        sim = cosine(embeddings, embeddings)
        pos, neg = pair_masks(label)
        if self.epsilon is not None:
            s = ops.stop_gradient(sim)
            # Similarities are in [-1, 1]: -10 / +10 stand for "no such pair" (an empty row mines nothing).
            hardest_neg = (s * neg - 10.0 * (1.0 - neg)).max(axis=1, keepdims=True)
            easiest_pos = (s * pos + 10.0 * (1.0 - pos)).min(axis=1, keepdims=True)
            any_pairs = ops.logical_and(pos.sum() > 0, neg.sum() > 0).astype(ms.float32)
            pos = pos * (s - self.epsilon < hardest_neg).astype(ms.float32) * any_pairs
            neg = neg * (s + self.epsilon > easiest_pos).astype(ms.float32) * any_pairs
        enough = ops.logical_or(pos.sum() > 1, neg.sum() > 1).astype(ms.float32)
        pos_loss = log1p_sum_exp(self.alpha * (self.base - sim), pos, 1) / self.alpha
        neg_loss = log1p_sum_exp(self.beta * (sim - self.base), neg, 1) / self.beta
        return (pos_loss + neg_loss).mean() * enough
