"""Losses: softmax and ArcMargin (pre-training), triplet and quadruplet (the seed's fine-tuning), and the losses
people compare today: Multi-Similarity (with its miner), Proxy-Anchor, Normalized Softmax, and the Paddle
original's N-pairs and EML.

Triplet and quadruplet L2-normalise the embeddings and work on squared Euclidean distances;
Multi-Similarity, Proxy-Anchor, Normalized Softmax and ArcMargin on cosine similarities; N-pairs and
EML, as in Paddle, on the raw embeddings. Each loss that has a pytorch-metric-learning counterpart
equals it in value and gradient (tests/losses/test_pml_reference.py against tests/fixtures/pml_reference.npz).
Label checks that depend on tensor values (a batch without positives or negatives) run inside
the graph and raise ValueError; they can be turned off with `check_labels=False`.
"""
import importlib

from src.losses.registry import get_stage
from src.models.resnet import feature_dim


def loss_class(loss_name):
    """The class of `loss_name`'s loss, imported from the module its registry entry names."""
    module, _, name = get_stage(loss_name).loss_class.partition(":")
    return getattr(importlib.import_module(module), name)


def create_loss(loss_name, cfg):
    """Build the loss named `loss_name` from a config with the keys of src/configs/*.yaml: its registry entry
    (src/losses/registry.py) names the class and the config key of each constructor argument."""
    stage = get_stage(loss_name)
    positional = []
    if stage.takes_class_num:
        positional.append(cfg.class_num)
    if stage.takes_feature_dim:
        positional.append(feature_dim(cfg.embedding_size))
    return loss_class(loss_name)(*positional, **{arg: getattr(cfg, key) for arg, key in stage.config_keys.items()})
