"""Normalized Softmax: cross-entropy of temperature-scaled cosines to class weights."""
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, initializer

from src.losses.common import cross_entropy, one_hot
from src.models.resnet import l2_normalize


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
        target = one_hot(label, self.class_num)
        return cross_entropy(logits, target)
