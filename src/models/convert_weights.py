"""Convert torchvision's (or timm's) ResNet-50 ImageNet weights to a checkpoint of this backbone.

    python -m src.models.convert_weights resnet50-11ad3fa6.pth resnet50_torchvision.ckpt [--with_fc]

Reads `.pth` (torch.save) and `.safetensors` files without PyTorch (src/models/torch_weights.py), maps every
torchvision name to ours (`bn1.weight` -> `bn1.gamma`, `running_var` -> `moving_variance`,
`layer1.0.downsample.0` -> `layer1.0.down_sample_layer.0`, ...; `num_batches_tracked` has no counterpart and
is dropped), checks every shape against this backbone, and fails with one line listing every unmapped, missing
or mis-shaped tensor. torchvision pads its stride-2 convolutions and max pool symmetrically and uses BatchNorm
eps 1e-5, so the checkpoint records `backbone_padding: symmetric`, which the loaders follow (src/models/resnet.py).
"""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import argparse
import os
import re

import numpy as np

from src.models.resnet import CONVENTION_KEY, FEATURE_DIM
from src.models.torch_weights import read_weights
from src.runtime.log import get_logger

logger = get_logger()

BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
DROPPED = "num_batches_tracked"
FC_NAMES = ("fc.weight", "fc.bias")
_BN = re.compile(r"^(?P<prefix>(?:layer\d+\.\d+\.)?)(?P<bn>bn\d+|downsample\.1)\.(?P<field>\w+)$")
_CONV = re.compile(r"^(?P<prefix>(?:layer\d+\.\d+\.)?)(?P<conv>conv\d+|downsample\.0)\.weight$")


class ConversionError(ValueError):
    """The weights do not map one to one onto this backbone."""


def our_name(torch_name):
    """torchvision's parameter name -> ours, None for num_batches_tracked, KeyError if it has no counterpart."""
    if torch_name.endswith("." + DROPPED):
        return None
    if torch_name in FC_NAMES:
        return torch_name
    match = _CONV.match(torch_name)
    if match:
        conv = "down_sample_layer.0" if match["conv"] == "downsample.0" else match["conv"]
        return f"{match['prefix']}{conv}.weight"
    match = _BN.match(torch_name)
    if match and match["field"] in BN_NAMES:
        bn = "down_sample_layer.1" if match["bn"] == "downsample.1" else match["bn"]
        return f"{match['prefix']}{bn}.{BN_NAMES[match['field']]}"
    raise KeyError(torch_name)


def backbone_shapes():
    """{name: shape} of this backbone's parameters (BatchNorm moving statistics included)."""
    from src.models.resnet import ResNet50

    return {p.name: tuple(p.shape) for p in ResNet50().get_parameters()}


def convert(state, shapes, with_fc=False, source="weights"):
    """torchvision state dict {name: array} -> {our name: float32 array}, checked against `shapes` (ours).

    The fc layer (1000 ImageNet classes) is kept as fc.weight / fc.bias only with `with_fc`. Raises
    ConversionError listing every tensor without a counterpart, every backbone parameter the file lacks and
    every shape that differs.
    """
    shapes = dict(shapes)
    if with_fc:
        classes = state["fc.weight"].shape[0] if "fc.weight" in state and state["fc.weight"].ndim else 1000
        shapes.update({"fc.weight": (classes, FEATURE_DIM), "fc.bias": (classes,)})
    converted, unmapped, mismatched = {}, [], []
    for name, value in state.items():
        try:
            target = our_name(name)
        except KeyError:
            unmapped.append(name)
            continue
        if target is None or (target in FC_NAMES and not with_fc):
            continue
        if target not in shapes:
            unmapped.append(name)
            continue
        if tuple(value.shape) != shapes[target]:
            mismatched.append(f"{name} {tuple(value.shape)} (ours: {target} {shapes[target]})")
        converted[target] = np.ascontiguousarray(value, dtype=np.float32)
    missing = sorted(set(shapes) - set(converted))
    problems = []
    if unmapped:
        problems.append(f"{len(unmapped)} tensor(s) with no counterpart in this ResNet-50: {', '.join(unmapped)}")
    if missing:
        torch_names = [_torch_name(name) for name in missing]
        problems.append(f"{len(missing)} tensor(s) missing: {', '.join(torch_names)}")
    if mismatched:
        problems.append(f"{len(mismatched)} with another shape: {'; '.join(mismatched)}")
    if problems:
        raise ConversionError(f"{source} is not torchvision's ResNet-50: " + " | ".join(problems))
    return converted


def _torch_name(ours):
    """Ours -> torchvision's name (for messages)."""
    reverse = {v: k for k, v in BN_NAMES.items()}
    name = ours.replace("down_sample_layer.0", "downsample.0").replace("down_sample_layer.1", "downsample.1")
    head, _, field = name.rpartition(".")
    return f"{head}.{reverse.get(field, field)}"


def save_converted(converted, path, source):
    """Write the checkpoint (atomically), with the padding/eps convention it needs."""
    import mindspore as ms

    from src.models.checkpoint import save_checkpoint_atomic

    params = [{"name": name, "data": ms.Tensor(value)} for name, value in sorted(converted.items())]
    save_checkpoint_atomic(params, path, append_dict={CONVENTION_KEY: "symmetric",
                                                      "converted_from": os.path.basename(source)})


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.models.convert_weights",
                                     description="Convert torchvision / timm ResNet-50 weights (.pth or "
                                     ".safetensors, read without PyTorch) to a checkpoint of this backbone.")
    parser.add_argument("source", help="resnet50-*.pth (torchvision) or model.safetensors (timm)")
    parser.add_argument("output", help="the MindSpore checkpoint to write (.ckpt)")
    parser.add_argument("--with_fc", action="store_true", help="also keep the 1000-class fc layer (fc.weight/bias)")
    args = parser.parse_args(argv)
    if not args.output.endswith(".ckpt"):
        raise ValueError(f"output must end with .ckpt, got {args.output}")
    state = read_weights(args.source)
    converted = convert(state, backbone_shapes(), args.with_fc, source=args.source)
    save_converted(converted, args.output, args.source)
    dropped = sum(1 for name in state if name.endswith("." + DROPPED))
    logger.info("%s: %d tensors -> %d parameters (%d num_batches_tracked dropped%s), backbone_padding=symmetric",
                args.source, len(state), len(converted), dropped, "" if args.with_fc else ", fc left out")
    print(f"converted: {args.output}")


if __name__ == "__main__":
    from src.runtime.cli import run

    run(main)
