"""Proxy-Anchor loss (Kim et al., CVPR 2020): one trained proxy per class."""
import mindspore as ms
from mindspore import Parameter, nn
from mindspore.common.initializer import HeNormal, initializer

from src.losses.common import cosine, log1p_sum_exp, one_hot


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
        cos = cosine(embeddings, self.proxies)
        pos = one_hot(label, self.class_num)
        neg = 1.0 - pos
        with_pos = (pos.sum(axis=0) > 0).astype(ms.float32).sum()
        pos_term = log1p_sum_exp(self.alpha * (self.margin - cos), pos, 0).sum() / with_pos
        neg_term = log1p_sum_exp(self.alpha * (cos + self.margin), neg, 0).sum() / self.class_num
        return pos_term + neg_term
