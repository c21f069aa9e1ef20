"""The deployable network (backbone in inference mode, optional L2 normalisation) and its export.

MINDIR and AIR go through `ms.export`, ONNX through `ms.onnx.export`. `ops.L2Normalize` has no
ONNX mapping, so the normalisation is `src.models.resnet.l2_normalize` (x / sqrt(sum(x^2) + eps)).
"""
import os

import mindspore as ms
import numpy as np
from mindspore import nn

from src.models.checkpoint import load_backbone_checkpoint, resolve_padding
from src.models.resnet import ResNet50, l2_normalize
from src.runtime.atomic_file import atomic_path

EXPORT_FORMATS = ("MINDIR", "ONNX", "AIR")
SUFFIXES = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}
INPUT_NAME = "image"
OUTPUT_NAME = "feature"


class FeatureNet(nn.Cell):
    """Images (N, 3, S, S) -> features (N, 2048), L2-normalised when `l2_normalize`.

    auto_prefix=False keeps the backbone's parameter names as they are in the checkpoints.
    """

    def __init__(self, backbone, l2_normalize=False):
        super().__init__(auto_prefix=False)
        self.backbone = backbone
        self.l2_normalize = bool(l2_normalize)

    def construct(self, x):
        features = self.backbone(x)
        if self.l2_normalize:
            features = l2_normalize(features, axis=1)
        return features


def check_export_format(file_format, device_target):
    """The upper-cased format; raises ValueError for an unknown one or AIR off Ascend."""
    fmt = str(file_format).upper()
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"file_format must be one of {', '.join(EXPORT_FORMATS)}, got {file_format!r}")
    if fmt == "AIR" and device_target != "Ascend":
        raise ValueError(f"AIR export needs --device_target Ascend (got {device_target}); "
                         "use --file_format MINDIR or ONNX here")
    return fmt


def build_feature_net(ckpt_file, l2_normalize=False, padding="auto", head=None):
    """A FeatureNet in inference mode with the backbone loaded strictly from `ckpt_file`; `padding` (config key
    backbone_padding) auto: the convention the checkpoint records; `head`: the backbone's pooling /
    embedding_size / embedding_normalize (src.models.resnet.head_options), which the checkpoint must have."""
    backbone = ResNet50(resolve_padding(padding, [ckpt_file]), **(head or {}))
    load_backbone_checkpoint(backbone, ckpt_file)
    net = FeatureNet(backbone, l2_normalize)
    net.set_train(False)
    return net


def export_file_path(file_name, file_format):
    """`file_name` with the format's suffix (.mindir/.onnx/.air) added unless it already has it."""
    suffix = SUFFIXES[file_format]
    return file_name if file_name.lower().endswith(suffix) else file_name + suffix


def export_network(net, file_name, file_format="MINDIR", batch_size=1, image_size=224):
    """Export `net` for a fixed float32 input (batch_size, 3, image_size, image_size).

    The file is written under a temporary name and renamed, so `file_name` is never half-written; it keeps the
    permissions the exporter gives it (MINDIR and AIR read-only, 0400; ONNX 0600).
    Returns the path of the exported file.
    """
    fmt = check_export_format(file_format, ms.get_context("device_target"))
    if int(batch_size) < 1 or int(image_size) < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    path = os.path.abspath(export_file_path(file_name, fmt))
    dummy = ms.Tensor(np.zeros((int(batch_size), 3, int(image_size), int(image_size)), np.float32))
    # Both exporters write `file_name` + the lower-case suffix unless the name ends with it: the temporary
    # name does, so the file they write is the temporary one.
    with atomic_path(path, suffix=".tmp" + SUFFIXES[fmt], keep_mode=True) as tmp:
        if fmt == "ONNX":
            ms.onnx.export(net, dummy, file_name=tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
        else:
            ms.export(net, dummy, file_name=tmp, file_format=fmt)
    return path
