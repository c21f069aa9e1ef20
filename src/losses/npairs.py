"""N-pairs loss as the Paddle original's `npairs`, on (anchor, positive) row pairs."""
import mindspore as ms
from mindspore import nn, ops


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
