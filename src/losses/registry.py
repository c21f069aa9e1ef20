"""The training stages, each named by its loss: the one table that says what a loss name means.

Per name: the loss class and the config keys its constructor takes, the batch layout it trains on (one of
create_dataset's in src/data/dataset.py), where its class parameters live (a classifier head in the network, or
class weights / proxies in the loss at a learning-rate multiple), and whether it pre-trains or fine-tunes. The
loss factory, the trainer, train.py / eval.py / export.py / preprocess.py and the launch scripts ask here;
nothing else branches on a loss name (tests/test_layout.py checks). Adding a loss: its module, its entry here,
its src/configs/<name>.yaml, its tests.

Cheap to import (no mindspore, no loss module): the classes are named "module:Class" and imported by
create_loss (src/losses/factory.py). `python -m src.losses.registry` prints the names, one a line
(scripts/common.sh checks LOSS_NAME against them).
"""
from dataclasses import dataclass, field

PRETRAINING, FINETUNING = "pre-training", "fine-tuning"
# Where a stage's class parameters live: a classification head trained with the backbone (the network is backbone +
# Dense(class_num)), or the loss's own class weights / proxies (trained with the network, at a multiple of its rate).
IN_NETWORK, IN_LOSS = "network", "loss"


@dataclass(frozen=True)
class Stage:
    """What one loss name means for training."""

    loss_class: str                 # "module:Class", imported by create_loss
    layout: str                     # batch layout: shuffle | triplets | pk | pairs (create_dataset's)
    role: str                       # PRETRAINING (from ImageNet weights) or FINETUNING (from a pre-trained backbone)
    config_keys: dict = field(default_factory=dict)  # constructor keyword -> config key
    takes_class_num: bool = False   # the constructor's first positional argument: cfg.class_num
    takes_feature_dim: bool = False  # its next: the backbone's output dimension (feature_dim(cfg.embedding_size))
    classes: str = None             # IN_NETWORK, IN_LOSS, or None (a pair-based loss: no class parameters)
    lr_multiplier_key: str = None   # IN_LOSS: the config key scaling the schedule for the loss's own parameters

    @property
    def counts_classes(self):
        """Whether class_num must cover the training list's classes (a head, class weights or proxies)."""
        return self.classes is not None


_PROXY_LR = "proxy_lr_multiplier"

STAGES = {
    "softmax": Stage("src.losses.softmax:Softmaxloss", "shuffle", PRETRAINING,
                     {"smooth_factor": "label_smooth_factor"}, takes_class_num=True, classes=IN_NETWORK),
    "arcmargin": Stage("src.losses.arcmargin:ArcMarginloss", "shuffle", PRETRAINING,
                       {"scale": "arc_scale", "margin": "arc_margin"}, takes_class_num=True, takes_feature_dim=True,
                       classes=IN_LOSS, lr_multiplier_key=_PROXY_LR),
    "triplet": Stage("src.losses.triplet:Tripletloss", "triplets", FINETUNING,
                     {"margin": "margin", "reduction": "loss_reduction"}),
    "quadruplet": Stage("src.losses.quadruplet:Quadrupletloss", "pk", FINETUNING,
                        {"margin": "margin", "samples_each_class": "samples_each_class", "mining": "mining"}),
    "multisimilarity": Stage("src.losses.multisimilarity:MultiSimilarityloss", "pk", FINETUNING,
                             {"alpha": "alpha", "beta": "beta", "base": "base", "miner_epsilon": "miner_epsilon"}),
    # From ImageNet weights, as its authors train it (it may also start from a softmax checkpoint).
    "proxyanchor": Stage("src.losses.proxyanchor:ProxyAnchorloss", "shuffle", PRETRAINING,
                         {"margin": "margin", "alpha": "alpha"}, takes_class_num=True, takes_feature_dim=True,
                         classes=IN_LOSS, lr_multiplier_key=_PROXY_LR),
    "normsoftmax": Stage("src.losses.normsoftmax:NormSoftmaxloss", "shuffle", PRETRAINING,
                         {"temperature": "temperature"}, takes_class_num=True, takes_feature_dim=True,
                         classes=IN_LOSS, lr_multiplier_key=_PROXY_LR),
    "npairs": Stage("src.losses.npairs:NPairsloss", "pairs", FINETUNING, {"reg_lambda": "reg_lambda"}),
    "eml": Stage("src.losses.eml:EMLloss", "pk", FINETUNING),
}
LOSS_NAMES = tuple(STAGES)


def get_stage(loss_name):
    """The Stage of `loss_name`; ValueError listing the valid names for any other."""
    try:
        return STAGES[loss_name]
    except KeyError:
        raise ValueError(f"unknown loss_name {loss_name!r}; expected one of {', '.join(LOSS_NAMES)}") from None


def names_by_role():
    """{role: [loss names]}, in table order (train.py's --loss_name help)."""
    roles = {}
    for name, stage in STAGES.items():
        roles.setdefault(stage.role, []).append(name)
    return roles


if __name__ == "__main__":
    print("\n".join(LOSS_NAMES))
