"""Softmax cross-entropy with label smoothing: the seed's pre-training loss."""
import mindspore as ms
from mindspore import nn, ops

from src.losses.common import cross_entropy


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
        return cross_entropy(logits, ops.one_hot(label, self.num_classes, self.on_value, self.off_value))
