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
from src.losses.arcmargin import ArcMarginloss
from src.losses.eml import EMLloss
from src.losses.multisimilarity import MultiSimilarityloss
from src.losses.normsoftmax import NormSoftmaxloss
from src.losses.npairs import NPairsloss
from src.losses.proxyanchor import ProxyAnchorloss
from src.losses.quadruplet import Quadrupletloss
from src.losses.softmax import Softmaxloss
from src.losses.triplet import Tripletloss
from src.models.resnet import feature_dim

LOSS_NAMES = ("softmax", "arcmargin", "triplet", "quadruplet", "multisimilarity", "proxyanchor", "normsoftmax",
              "npairs", "eml")
# Losses with class weights or proxies of their own (trained with the network; config key proxy_lr_multiplier).
PROXY_LOSSES = ("arcmargin", "proxyanchor", "normsoftmax")


def create_loss(loss_name, cfg):
    """Build the loss named `loss_name` from a config with the keys of src/configs/*.yaml."""
    if loss_name == "softmax":
        return Softmaxloss(cfg.class_num, smooth_factor=cfg.label_smooth_factor)
    if loss_name == "arcmargin":
        return ArcMarginloss(cfg.class_num, feature_dim(cfg.embedding_size), scale=cfg.arc_scale,
                             margin=cfg.arc_margin)
    if loss_name == "triplet":
        return Tripletloss(margin=cfg.margin, reduction=cfg.loss_reduction)
    if loss_name == "quadruplet":
        return Quadrupletloss(margin=cfg.margin, samples_each_class=cfg.samples_each_class, mining=cfg.mining)
    if loss_name == "multisimilarity":
        return MultiSimilarityloss(cfg.alpha, cfg.beta, cfg.base, miner_epsilon=cfg.miner_epsilon)
    if loss_name == "proxyanchor":
        return ProxyAnchorloss(cfg.class_num, feature_dim(cfg.embedding_size), margin=cfg.margin, alpha=cfg.alpha)
    if loss_name == "normsoftmax":
        return NormSoftmaxloss(cfg.class_num, feature_dim(cfg.embedding_size), temperature=cfg.temperature)
    if loss_name == "npairs":
        return NPairsloss(reg_lambda=cfg.reg_lambda)
    if loss_name == "eml":
        return EMLloss()
    raise ValueError(f"unknown loss_name {loss_name!r}; expected one of {', '.join(LOSS_NAMES)}")
