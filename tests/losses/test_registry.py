"""src/losses/registry.py, the table of stages: every entry builds its loss from its YAML config, entries and YAML files
match one to one, the layouts are the data side's, the fields agree with the losses, and the module stays cheap for
the launch scripts that list the names."""
import inspect
import os
import subprocess
import sys

import pytest
from mindspore import nn

from src.data.dataset import TRAIN_LAYOUTS
from src.losses.factory import create_loss, loss_class
from src.losses.registry import FINETUNING, IN_LOSS, IN_NETWORK, LOSS_NAMES, PRETRAINING, STAGES, get_stage
from src.runtime.config import CONFIG_DIR, load_config
from tests.paths import ROOT


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_every_entry_builds_its_loss_from_its_yaml_config(name):
    stage, cfg = STAGES[name], load_config(name, "CPU")
    assert set(stage.config_keys.values()) <= set(cfg), "a constructor argument reads a key the config lacks"
    cls = loss_class(name)
    assert issubclass(cls, nn.Cell) and cls.__module__.startswith("src.losses.")
    parameters = list(inspect.signature(cls).parameters)
    assert set(stage.config_keys) <= set(parameters), "a keyword the constructor does not take"
    positional = ["class_num"] * stage.takes_class_num + ["feature_dim"] * stage.takes_feature_dim
    assert [p.replace("num_classes", "class_num") for p in parameters[:len(positional)]] == positional
    loss = create_loss(name, cfg)
    assert type(loss) is cls
    for argument, key in stage.config_keys.items():  # each argument set from its key (the loss keeps it as given)
        if hasattr(loss, argument):
            assert getattr(loss, argument) == cfg[key], (argument, key)
    # Class weights or proxies of its own exactly when the entry says they live in the loss (a learning-rate group).
    assert bool(loss.trainable_params()) == (stage.classes == IN_LOSS)


def test_every_yaml_has_an_entry_and_every_entry_a_yaml():
    files = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml") and f != "common.yaml")
    assert files == sorted(LOSS_NAMES)


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_entries_are_consistent_with_the_data_side_and_the_configs(name):
    stage, cfg = STAGES[name], load_config(name, "CPU")
    assert stage.layout in TRAIN_LAYOUTS
    assert stage.role in (PRETRAINING, FINETUNING)
    assert stage.classes in (IN_NETWORK, IN_LOSS, None)
    assert (stage.lr_multiplier_key is not None) == (stage.classes == IN_LOSS)
    if stage.lr_multiplier_key:
        assert isinstance(cfg[stage.lr_multiplier_key], float)
    if stage.counts_classes or stage.takes_class_num:
        assert "class_num" in cfg
    if stage.layout in ("pk", "pairs"):
        assert "samples_each_class" in cfg
    if stage.layout == "pairs":
        assert cfg.samples_each_class == 2


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown loss_name 'contrastive'; expected one of softmax, arcmargin, "):
        get_stage("contrastive")
    with pytest.raises(ValueError, match=", ".join(LOSS_NAMES)):
        create_loss("contrastive", load_config("triplet", "CPU"))


def test_listing_the_names_loads_neither_mindspore_nor_a_loss():
    """scripts/common.sh runs `python -m src.losses.registry` for every launch: it must stay cheap."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "src.losses.registry"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == list(LOSS_NAMES)
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line]
    assert not [m for m in imported if m.split(".")[0] in ("mindspore", "numpy") or m.startswith("src.losses.")
                and m != "src.losses.registry"], imported


def test_launch_scripts_check_loss_name_against_the_registry(tmp_path):
    def need_loss(name):
        script = f'source "{ROOT}/scripts/common.sh"; usage() {{ echo usage; }}; need_loss "{name}"'
        return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)

    assert need_loss(LOSS_NAMES[-1]).returncode == 0
    refused = need_loss("ranking")
    assert refused.returncode == 2
    assert f"LOSS_NAME must be one of {', '.join(LOSS_NAMES)}, got 'ranking'" in refused.stderr
