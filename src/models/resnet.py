"""ResNet-50 v1.5 backbone (2048-d feature) and the classification head used for pre-training.

Parameter names follow MindSpore's model-zoo ResNet-50 (`conv1.weight`, `bn1.gamma`,
`layer1.0.conv1.weight`, `layer1.0.down_sample_layer.0.weight`, ...), so the published
ImageNet checkpoint loads into `ResNet50WithHead.backbone` without renaming.

Two padding conventions (`padding`, config key `backbone_padding`), with the BatchNorm eps of the weights
trained under each:
  - "same" (MindSpore's model zoo, its ImageNet checkpoint): pad_mode="same", which on a stride-2 layer pads
    asymmetrically: (2, 3) for the 7x7 stem, (0, 1) for the 3x3 convolutions and the max pool; eps 1e-4.
  - "symmetric" (torchvision, timm): every convolution pads k // 2 on each side and the max pool 1; eps 1e-5.
    Weights converted from torchvision (src/models/convert_weights.py) need it: with "same" the main branch of
    layer2.0 / layer3.0 / layer4.0 would be one pixel off from its 1x1 shortcut.
"""
from mindspore import nn, ops
from mindspore.common.initializer import HeNormal

from src.kernels.build import MINDSPORE
from src.kernels.layers import network_layers

FEATURE_DIM = 2048
EXPANSION = 4
PADDINGS = ("same", "symmetric")
POOLINGS = ("avg", "max", "avg+max")  # global pooling of the last stage: average (the seed's), max, their sum
BN_EPS = {"same": 1e-4, "symmetric": 1e-5}
BN_MOMENTUM = 0.9
CONVENTION_KEY = "backbone_padding"  # config key, and the checkpoint entry naming the convention of its weights


def feature_dim(embedding_size=0):
    """The backbone's output size: the embedding's, or the 2048 pooled channels without one."""
    return int(embedding_size) or FEATURE_DIM


def check_padding(padding):
    if padding not in PADDINGS:
        raise ValueError(f"{CONVENTION_KEY} must be one of {', '.join(PADDINGS)}, got {padding!r}")
    return padding


def l2_normalize(x, axis=1, eps=1e-12):
    """x / sqrt(sum(x^2) + eps): the L2 normalisation of MindSpore tensors (the embedding head's, the losses',
    the export's output layer); finite for a zero vector, and exportable to ONNX (ops.L2Normalize is not).
    Numpy features: src.evaluation.metrics.l2_normalize_rows."""
    return x / ops.sqrt((x * x).sum(axis=axis, keepdims=True) + eps)


def _conv(in_channel, out_channel, kernel_size, stride=1, padding="same", kernels=MINDSPORE):
    pads = {"pad_mode": "same"} if padding == "same" else {"pad_mode": "pad", "padding": kernel_size // 2}
    return network_layers(kernels).conv2d(in_channel, out_channel, kernel_size=kernel_size, stride=stride,
                                          has_bias=False, weight_init=HeNormal(mode="fan_out", nonlinearity="relu"),
                                          **pads)


def _bn(channel, last_in_block=False, padding="same", kernels=MINDSPORE, relu=False):
    """BatchNorm; where the kernels' BatchNorm applies the ReLU that follows it (batchnorm_applies_relu), with
    `relu` it does (otherwise the caller applies that ReLU)."""
    # gamma=0 on the last BN of a block makes every residual branch start as the identity.
    options = {"eps": BN_EPS[padding], "momentum": BN_MOMENTUM, "gamma_init": "zeros" if last_in_block else "ones"}
    layers = network_layers(kernels)
    if layers.batchnorm_applies_relu:
        options["relu"] = relu
    return layers.batchnorm2d(channel, **options)


class Bottleneck(nn.Cell):
    """1x1 -> 3x3 (carries the stride: v1.5) -> 1x1 with a projection shortcut when shapes change."""

    def __init__(self, in_channel, out_channel, stride=1, padding="same", kernels=MINDSPORE):
        super().__init__()
        mid = out_channel // EXPANSION
        self.conv1 = _conv(in_channel, mid, 1, padding=padding, kernels=kernels)
        self.bn1 = _bn(mid, padding=padding, kernels=kernels, relu=True)
        self.conv2 = _conv(mid, mid, 3, stride=stride, padding=padding, kernels=kernels)
        self.bn2 = _bn(mid, padding=padding, kernels=kernels, relu=True)
        self.conv3 = _conv(mid, out_channel, 1, padding=padding, kernels=kernels)
        self.bn3 = _bn(out_channel, last_in_block=True, padding=padding, kernels=kernels)
        self.relu = nn.ReLU()
        self.bn_relu = network_layers(kernels).batchnorm_applies_relu
        self.down_sample = stride != 1 or in_channel != out_channel
        self.down_sample_layer = None
        if self.down_sample:
            self.down_sample_layer = nn.SequentialCell([_conv(in_channel, out_channel, 1, stride=stride,
                                                              padding=padding, kernels=kernels),
                                                        _bn(out_channel, padding=padding, kernels=kernels)])

    def construct(self, x):
        identity = x
        out = self.bn1(self.conv1(x))
        if not self.bn_relu:
            out = self.relu(out)
        out = self.bn2(self.conv2(out))
        if not self.bn_relu:
            out = self.relu(out)
        out = self.bn3(self.conv3(out))
        if self.down_sample:
            identity = self.down_sample_layer(identity)
        return self.relu(out + identity)


class ResNet50(nn.Cell):
    """ResNet-50 v1.5 up to global pooling, with an optional embedding head: NCHW float32 images -> (N, 2048)
    features, or (N, embedding_size).

    `padding`: "same" or "symmetric" (see the module docstring). The head: `pooling` "avg" (the seed's), "max"
    or "avg+max" (their sum, as Proxy-Anchor's code); `embedding_size` > 0 adds `embedding`, a Dense(2048 ->
    embedding_size) (parameters embedding.weight / embedding.bias); `embedding_normalize` L2-normalises the
    output. `kernels`: "mindspore" (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d) or "native" (CPU only, the
    same parameters: src/kernels/'s OneDnnConv2d, CpuBatchNorm2d, which also applies the ReLU after bn1 and bn2,
    and CpuMaxPool2d; src.kernels.layers.network_layers)."""

    LAYERS = (3, 4, 6, 3)
    WIDTHS = (256, 512, 1024, 2048)
    STRIDES = (1, 2, 2, 2)

    def __init__(self, padding="same", pooling="avg", embedding_size=0, embedding_normalize=False,
                 kernels=MINDSPORE):
        super().__init__()
        self.padding = check_padding(padding)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if int(embedding_size) < 0:
            raise ValueError(f"embedding_size must be 0 (no embedding layer) or positive, got {embedding_size}")
        self.pooling = pooling
        self.embedding_size = int(embedding_size)
        self.embedding_normalize = bool(embedding_normalize)
        self.out_dim = feature_dim(self.embedding_size)
        self.embedding = nn.Dense(FEATURE_DIM, self.embedding_size) if self.embedding_size else None
        layers = network_layers(kernels)
        self.conv1 = _conv(3, 64, 7, stride=2, padding=padding, kernels=kernels)
        self.bn1 = _bn(64, padding=padding, kernels=kernels, relu=True)
        self.relu = nn.ReLU()
        self.bn_relu = layers.batchnorm_applies_relu
        pool_pads = {"pad_mode": "same"} if padding == "same" else {"pad_mode": "pad", "padding": 1}
        self.maxpool = layers.max_pool2d(kernel_size=3, stride=2, **pool_pads)
        in_channel = 64
        stages = []
        for blocks, width, stride in zip(self.LAYERS, self.WIDTHS, self.STRIDES, strict=True):
            layer = [Bottleneck(in_channel, width, stride, padding, kernels)]
            layer += [Bottleneck(width, width, padding=padding, kernels=kernels) for _ in range(blocks - 1)]
            stages.append(nn.SequentialCell(layer))
            in_channel = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.flatten = nn.Flatten()

    def construct(self, x):
        x = self.bn1(self.conv1(x))
        if not self.bn_relu:
            x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.pooling == "avg":
            pooled = ops.mean(x, (2, 3), keep_dims=True)
        elif self.pooling == "max":
            pooled = ops.amax(x, (2, 3), keepdims=True)
        else:
            pooled = ops.mean(x, (2, 3), keep_dims=True) + ops.amax(x, (2, 3), keepdims=True)
        features = self.flatten(pooled)
        if self.embedding is not None:
            features = self.embedding(features)
        if self.embedding_normalize:
            features = l2_normalize(features, axis=1)
        return features

    def head_record(self):
        """The checkpoint entries naming this network's head (written by train.py, checked when loading)."""
        return {"pooling": self.pooling, "embedding_normalize": "true" if self.embedding_normalize else "false"}


class ResNet50WithHead(nn.Cell):
    """Backbone + Dense(2048 -> class_num) head for softmax pre-training.

    `auto_prefix=False` keeps the backbone's parameter names free of a `backbone.` prefix; the head's
    parameters are `fc.weight` / `fc.bias`. Metric-learning stages train `net.backbone` alone.
    """

    def __init__(self, class_num, padding="same", **head):
        super().__init__(auto_prefix=False)
        if int(class_num) < 1:
            raise ValueError(f"class_num must be a positive integer, got {class_num!r}")
        self.backbone = ResNet50(padding, **head)
        self.head = ClassifierHead(self.backbone.out_dim, int(class_num))

    def construct(self, x):
        return self.head(self.backbone(x))


class ClassifierHead(nn.Cell):
    def __init__(self, in_dim, class_num):
        super().__init__()
        self.fc = nn.Dense(in_dim, class_num)

    def construct(self, x):
        return self.fc(x)


def resnet50(class_num, padding="same", **head):
    """ResNet-50 v1.5 with a `class_num`-way classification head; `.backbone` gives the features. `head`:
    pooling / embedding_size / embedding_normalize / kernels of the backbone."""
    return ResNet50WithHead(class_num, padding, **head)


def freeze_batchnorm(network):
    """Make every BatchNorm of `network` normalise with its moving statistics in training too, and leave them
    unchanged (its scale and shift still train). Returns the number of BatchNorm layers frozen."""
    layers = [cell for _, cell in network.cells_and_names() if isinstance(cell, nn.BatchNorm2d)]
    for cell in layers:
        cell.use_batch_statistics = False
    return len(layers)


def backbone_from_config(cfg, padding, kernels=MINDSPORE):
    """ResNet50 with the config's head keys (pooling, embedding_size, embedding_normalize), `padding` and
    `kernels` (see ResNet50)."""
    return ResNet50(padding, kernels=kernels, **head_options(cfg))


def head_options(cfg):
    return {"pooling": cfg.pooling, "embedding_size": cfg.embedding_size,
            "embedding_normalize": cfg.embedding_normalize}
