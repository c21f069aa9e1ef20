"""The losses beyond the seed train end to end through train.py on CPU (small images), with their batch layouts,
and the proxy losses' own parameters learn at their learning-rate multiple and survive a resume."""
import math
import os
import re
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.data.demo_data import make_retrieval_dataset
from src.losses.factory import create_loss
from src.losses.proxyanchor import ProxyAnchorloss
from src.runtime.config import load_config
from src.training.trainer import parameter_groups
from tests.paths import ROOT

SMALL = ["--image_size", "32", "--hflip", "false", "--num_parallel_workers", "1", "--eval_batch_size", "16"]
# Per loss: the options that fit the 8-class demo set (class_num for the losses with class weights / proxies).
OPTIONS = {"multisimilarity": ["--samples_each_class", "2"], "proxyanchor": ["--class_num", "8"],
           "normsoftmax": ["--class_num", "8"], "npairs": [], "eml": []}


def train(*args, expect=0):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == expect, f"exit {proc.returncode}:\n{output[-4000:]}"
    return output


def values(path):
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if not isinstance(v, str)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")))


def loss_run_args(loss, data):
    """train.py's options for a 2-epoch run of `loss` on the demo set, a checkpoint after each epoch."""
    return ["--loss_name", loss, "--dataset_path", data, "--batch_size", "8", "--epoch_size", "2",
            "--save_checkpoint_epochs", "1", "--keep_checkpoint_max", "2", "--lr_max", "0.01", "--lr_init", "0.01",
            "--lr_decay_mode", "const", *OPTIONS[loss], *SMALL]


@pytest.fixture(scope="module")
def proxyanchor_run(data, tmp_path_factory):
    """(output folder, log) of the proxyanchor run: trained end to end, and the run the resume test continues."""
    out = tmp_path_factory.mktemp("proxyanchor")
    return out, train(*loss_run_args("proxyanchor", data), "--output_dir", str(out))


@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(OPTIONS))
def test_each_new_loss_trains_end_to_end(data, tmp_path, loss, request):
    if loss == "proxyanchor":
        out, log = request.getfixturevalue("proxyanchor_run")
    else:
        out = tmp_path / loss
        log = train(*loss_run_args(loss, data), "--output_dir", str(out))
    means = [float(x) for x in re.findall(r"epoch: \d/2 done, mean loss ([0-9.eE+-]+)", log)]
    assert len(means) == 2 and all(math.isfinite(m) and m > 0 for m in means), means
    first, last = (values(next((out / "ckpt").glob(f"resnet50_{loss}-{e}_*.ckpt"))) for e in (1, 2))
    assert not np.array_equal(first["conv1.weight"], last["conv1.weight"])  # the backbone trains
    own = {"proxyanchor": "proxyanchor.proxies", "normsoftmax": "normsoftmax.weight"}.get(loss)
    if own:  # the loss's own parameters are trained and saved with the rest
        assert not np.array_equal(first[own], last[own])


def test_proxies_learn_at_their_multiple_of_the_schedule():
    backbone, loss = nn.Dense(4, 3), ProxyAnchorloss(5, 3)
    lr = np.linspace(0.1, 0.2, 6).astype(np.float32)
    groups = parameter_groups(backbone, loss, lr, 1e-4, 100.0)
    assert [p.name for p in groups[-1]["params"]] == ["proxyanchor.proxies"]
    np.testing.assert_allclose(groups[-1]["lr"].asnumpy(), lr * 100, rtol=1e-6)
    assert "lr" not in groups[0] and len(groups[0]["params"]) == 2 and len(groups) == 2  # no BatchNorm here
    # Without a multiple (or without parameters of its own) there is one group.
    assert len(parameter_groups(backbone, loss, lr, 1e-4, 1.0)) == 3


class _ZeroLoss(nn.Cell):
    """A loss with a parameter of its own and a zero gradient everywhere: an optimizer step is weight decay alone."""

    def __init__(self):
        super().__init__()
        self.proxies = ms.Parameter(ms.Tensor(np.ones((3, 2), np.float32)), name="zero.proxies")

    def construct(self, out, label):
        return (out.sum() + self.proxies.sum()) * 0.0


@pytest.mark.parametrize("multiplier", [1.0, 100.0])
def test_weight_decay_skips_batchnorm_with_and_without_a_proxy_group(multiplier):
    """Grouped parameters (a proxy learning rate) must decay the same parameters as ungrouped ones: all but
    BatchNorm's gamma and beta. (MindSpore's Momentum decays every parameter of a group given weight decay.)"""
    net = nn.SequentialCell(nn.Conv2d(3, 4, 3, has_bias=True), nn.BatchNorm2d(4), nn.Flatten(), nn.Dense(4 * 8 * 8, 2))
    loss = _ZeroLoss()
    lr, wd = np.full(4, 0.1, np.float32), 0.5
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params() + loss.trainable_params()}
    optimizer = nn.Momentum(parameter_groups(net, loss, lr, wd, multiplier), learning_rate=ms.Tensor(lr),
                            momentum=0.0, weight_decay=wd)
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
    step(ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)),
         ms.Tensor(np.zeros(2, np.int32)))
    after = {p.name: p.asnumpy() for p in net.trainable_params() + loss.trainable_params()}
    for name, value in before.items():
        if "gamma" in name or "beta" in name:
            np.testing.assert_array_equal(after[name], value, err_msg=name)
        else:
            rate = 0.1 * (multiplier if name == "zero.proxies" else 1.0)
            np.testing.assert_allclose(after[name], value * (1 - rate * wd), rtol=1e-5, atol=1e-7, err_msg=name)


def test_stage_configs_carry_the_published_values():
    ms_cfg = load_config("multisimilarity", "CPU")
    assert (ms_cfg.alpha, ms_cfg.beta, ms_cfg.base, ms_cfg.miner_epsilon) == (2.0, 50.0, 0.5, 0.1)
    pa = load_config("proxyanchor", "CPU")
    assert (pa.margin, pa.alpha, pa.proxy_lr_multiplier, pa.batch_size) == (0.1, 32.0, 100.0, 180)
    assert load_config("normsoftmax", "CPU").temperature == 0.05
    npairs = load_config("npairs", "CPU")
    assert (npairs.reg_lambda, npairs.samples_each_class, npairs.batch_size, npairs.lr_max) == (0.01, 2, 160, 1e-4)
    assert isinstance(create_loss("eml", load_config("eml", "CPU")), nn.Cell)


@pytest.mark.slow
def test_a_proxy_loss_resumes_bit_for_bit(data, proxyanchor_run, tmp_path):
    """Proxy-Anchor with its proxies at 100 x the rate (two learning-rate groups in the optimizer): resumed after
    epoch 1, the run ends where the uninterrupted one (proxyanchor_run) does."""
    full_dir = proxyanchor_run[0] / "ckpt"
    after_epoch_1 = next(full_dir.glob("resnet50_proxyanchor-1_*.ckpt"))
    log = train(*loss_run_args("proxyanchor", data), "--resume", str(after_epoch_1), "--output_dir",
                str(tmp_path / "resumed"))
    assert "resumed from" in log
    final = next(full_dir.glob("resnet50_proxyanchor-2_*.ckpt")).name
    full = values(full_dir / final)
    resumed = values(tmp_path / "resumed" / "ckpt" / final)
    # groups: decayed network parameters, BatchNorm's (no decay), the proxies with their own rate (group 2)
    assert full.keys() == resumed.keys() and "learning_rate_group_2" in full
    assert [k for k in full if not np.array_equal(full[k], resumed[k])] == []


def test_npairs_needs_pairs(data, tmp_path):
    log = train("--loss_name", "npairs", "--dataset_path", data, "--output_dir", str(tmp_path), "--batch_size", "9",
                "--samples_each_class", "3", *SMALL, expect=1)
    # npairs trains on the "pairs" layout (its registry entry), whose K is 2
    assert "ValueError: pairs batches are (anchor, positive) pairs: samples_each_class must be 2, got 3" in \
        log.strip()[-300:]
