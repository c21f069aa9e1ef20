"""Checkpoint loading that fails loudly instead of silently half-loading.

MindSpore's `load_param_into_net(strict_load=False)` fills a missing `fc.weight` from
`moments.fc.weight` and reports problems only through a return value. Here only the target
network's own parameter names are read from the file (optimizer state, heads and step counters
are ignored), and any missing or mis-shaped parameter is an error that lists them all.
"""
import os

import mindspore as ms

from src.models.resnet import CONVENTION_KEY, PADDINGS
from src.runtime.atomic_file import atomic_path


class CheckpointError(ValueError):
    """A checkpoint does not fit the network it is loaded into."""


def _read_checkpoint(ckpt_path, wanted):
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    try:
        return ms.load_checkpoint(ckpt_path, choice_func=lambda name: name in wanted)
    except ValueError as err:
        if "empty after filter" in str(err):  # a readable file holding none of the wanted names
            return {}
        raise CheckpointError(f"{ckpt_path}: not a readable MindSpore checkpoint ({err})") from err
    except (RuntimeError, OSError) as err:
        raise CheckpointError(f"{ckpt_path}: not a readable MindSpore checkpoint ({err})") from err


def load_strict(net, ckpt_path, what="network", keep=()):
    """Load every parameter of `net` from `ckpt_path`, except those named in `keep` (left as they are);
    extra keys in the file are ignored.

    Raises CheckpointError naming the file and every missing or mis-shaped parameter.
    Returns the sorted list of parameter names loaded.
    """
    names = {p.name for p in net.get_parameters()} - set(keep)
    return _load_into(net, ckpt_path, _read_checkpoint(ckpt_path, names), what, keep)


def _load_into(net, ckpt_path, values, what, keep=()):
    """load_strict's checks and loading, on entries already read from `ckpt_path` (others in `values` ignored)."""
    params = {p.name: p for p in net.get_parameters() if p.name not in keep}
    loaded = {name: value for name, value in values.items() if name in params}
    missing = sorted(set(params) - set(loaded))
    mismatched = [f"{name}: checkpoint {tuple(loaded[name].shape)} vs {what} {tuple(params[name].shape)}"
                  for name in sorted(loaded) if tuple(loaded[name].shape) != tuple(params[name].shape)]
    problems = []
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        problems.append(f"{len(missing)} {what} parameter(s) missing: {shown}")
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched))
    if problems:
        raise CheckpointError(f"{ckpt_path} does not fit the {what}: " + " | ".join(problems))
    ms.load_param_into_net(net, loaded, strict_load=True)
    return sorted(loaded)


HEAD_RECORD = ("pooling", "embedding_normalize")
EMBEDDING = ("embedding.weight", "embedding.bias")


def load_backbone_checkpoint(backbone, ckpt_path, new_head=False):
    """Load backbone weights (from an ImageNet, softmax-stage or metric-stage checkpoint) strictly.

    The file's head must be the backbone's (src.models.resnet.ResNet50): an embedding layer of another size (or one the
    backbone lacks), or a recorded pooling / normalisation that differs, is a CheckpointError naming the config
    keys to set. `new_head` (training from other weights): the file may lack the backbone's embedding layer,
    which then keeps its initialisation, and its pooling may differ.
    """
    # One read of the file: the backbone's parameters and the head's record.
    recorded = _read_checkpoint(ckpt_path, {p.name for p in backbone.get_parameters()} | {*EMBEDDING, *HEAD_RECORD})
    size = int(recorded[EMBEDDING[0]].shape[0]) if EMBEDDING[0] in recorded else 0
    ours = {"embedding_size": str(backbone.embedding_size), **backbone.head_record()}
    theirs = {"embedding_size": str(size), **{key: str(recorded[key]) for key in HEAD_RECORD if key in recorded}}
    fresh_embedding = new_head and size == 0 and backbone.embedding_size > 0
    compared = ("embedding_size",) if new_head else tuple(theirs)
    differ = [key for key in compared if theirs[key] != ours[key] and not (key == "embedding_size" and fresh_embedding)]
    if differ:
        raise CheckpointError(f"{ckpt_path} holds a backbone with " + ", ".join(f"{k}={theirs[k]}" for k in differ)
                              + "; this network has " + ", ".join(f"{k}={ours[k]}" for k in differ) + ": set "
                              + " ".join(f"--{k} {theirs[k]}" for k in differ))
    return _load_into(backbone, ckpt_path, recorded, "backbone", keep=EMBEDDING if fresh_embedding else ())


def checkpoint_padding(ckpt_path):
    """The backbone padding convention a checkpoint records (written by train.py and src/models/convert_weights.py),
    or None when it records none (MindSpore Hub's ImageNet checkpoint, older runs: they are "same")."""
    value = _read_checkpoint(ckpt_path, {CONVENTION_KEY}).get(CONVENTION_KEY)
    if value is None:
        return None
    if str(value) not in PADDINGS:
        raise CheckpointError(f"{ckpt_path}: unknown {CONVENTION_KEY} {value!r} recorded")
    return str(value)


def resolve_padding(requested, ckpt_paths):
    """The padding convention of a network that loads `ckpt_paths` (None entries skipped).

    requested "auto": the convention the checkpoints record ("same" if none records one). An explicit "same" or
    "symmetric" must agree with every checkpoint that records a convention; otherwise CheckpointError names the
    checkpoint and the config key to set.
    """
    if requested != "auto" and requested not in PADDINGS:
        raise CheckpointError(f"{CONVENTION_KEY} must be auto, {' or '.join(PADDINGS)}, got {requested!r}")
    recorded = [(path, checkpoint_padding(path)) for path in ckpt_paths if path]
    recorded = [(path, padding) for path, padding in recorded if padding]
    choice = requested if requested != "auto" else (recorded[0][1] if recorded else "same")
    for path, padding in recorded:
        if padding != choice:
            raise CheckpointError(f"{path} holds weights for {CONVENTION_KEY}={padding}, but this run has "
                                  f"{CONVENTION_KEY}={choice}: set --{CONVENTION_KEY} {padding} (or auto)")
    return choice


def save_checkpoint_atomic(net, path, append_dict=None):
    """Save `net` (a Cell or a list of {"name", "data"}) to `path` via a temporary file and a rename,
    so that `path` is either the old file or the complete new one, never half-written (read-only, 0400, as
    MindSpore leaves its checkpoints)."""
    # save_checkpoint appends ".ckpt" to other names, so the temporary name ends with it too.
    with atomic_path(path, suffix=".ckpt", keep_mode=True) as tmp:
        try:
            ms.save_checkpoint(net, tmp, append_dict=append_dict)
        except BaseException:
            # save_checkpoint writes x.tmp for x.ckpt first and leaves it when interrupted.
            partial = os.path.splitext(tmp)[0] + ".tmp"
            if os.path.lexists(partial):
                os.remove(partial)
            raise


def read_checkpoint_values(ckpt_path, names):
    """{name: python scalar or string} for the scalar or string entries `names` stored in a checkpoint (epoch_num,
    the stage's loss_name); names the file does not hold are left out."""
    values = _read_checkpoint(ckpt_path, set(names))
    return {name: value if isinstance(value, str) else value.asnumpy().item() for name, value in values.items()}
