"""The layers a network is built with for a choice of kernels: our cells (`native`) or MindSpore's (`mindspore`)."""
from dataclasses import dataclass

from mindspore import nn

from src.kernels.batchnorm import CpuBatchNorm2d
from src.kernels.build import MINDSPORE, NATIVE, check_implementation
from src.kernels.conv import OneDnnConv2d
from src.kernels.maxpool import CpuMaxPool2d


@dataclass(frozen=True)
class Layers:
    """Layer classes with MindSpore's signatures (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) and the same parameters.

    `batchnorm_applies_relu`: the BatchNorm class takes `relu=True` and applies the ReLU that follows it itself
    (our kernel does both in one pass); otherwise the network applies that ReLU."""

    conv2d: type
    batchnorm2d: type
    max_pool2d: type
    batchnorm_applies_relu: bool


_LAYERS = {NATIVE: Layers(OneDnnConv2d, CpuBatchNorm2d, CpuMaxPool2d, batchnorm_applies_relu=True),
           MINDSPORE: Layers(nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, batchnorm_applies_relu=False)}


def network_layers(kernels):
    """The Layers of `kernels`, a choice src.kernels.build.resolve made ("native" or "mindspore")."""
    return _LAYERS[check_implementation(kernels)]
