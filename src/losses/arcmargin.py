"""ArcMargin (additive angular margin, ArcFace) softmax, as the Paddle original's `arcmargin`."""
import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import XavierUniform, initializer

from src.losses.common import cross_entropy, one_hot
from src.models.resnet import l2_normalize


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
        target = one_hot(label, self.class_num)
        return self.scale * (target * phi + (1.0 - target) * cosine)

    def construct(self, embeddings, label):
        return cross_entropy(self.logits(embeddings, label), one_hot(label, self.class_num))
