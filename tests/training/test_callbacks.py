"""Training callbacks driven with a stand-in run context: rotation, atomic files, NaN stop, log line, best."""
import logging
import os
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.training.callbacks import CheckpointSaver, EvalCallback, NonFiniteLossError, TrainMonitor


class FakeContext:
    def __init__(self, **args):
        self.args = SimpleNamespace(**args)

    def original_args(self):
        return self.args


@pytest.fixture
def net():
    return nn.Dense(3, 2)


def test_saver_keeps_newest_of_this_run_and_never_touches_other_files(net, tmp_path):
    other = tmp_path / "resnet50_triplet-9_90.ckpt"  # an earlier run's checkpoint with a higher epoch
    ms.save_checkpoint(net, str(other))
    saver = CheckpointSaver(str(tmp_path), "resnet50_triplet", every_epochs=1, keep_max=2, total_epochs=3,
                            steps_per_epoch=10)
    for epoch in (1, 2, 3):
        saver.on_train_epoch_end(FakeContext(cur_epoch_num=epoch, train_network=net))
    assert sorted(os.listdir(tmp_path)) == ["resnet50_triplet-2_20.ckpt", "resnet50_triplet-3_30.ckpt",
                                            "resnet50_triplet-9_90.ckpt"]
    saved = ms.load_checkpoint(saver.last_saved)
    np.testing.assert_array_equal(saved["weight"].asnumpy(), net.weight.asnumpy())
    assert int(saved["epoch_num"].asnumpy()) == 3 and int(saved["step_num"].asnumpy()) == 30


def test_saver_interval_and_final_epoch(net, tmp_path):
    saver = CheckpointSaver(str(tmp_path), "p", every_epochs=2, keep_max=5, total_epochs=5, steps_per_epoch=4)
    for epoch in range(1, 6):
        saver.on_train_epoch_end(FakeContext(cur_epoch_num=epoch, train_network=net))
    assert sorted(os.listdir(tmp_path)) == ["p-2_8.ckpt", "p-4_16.ckpt", "p-5_20.ckpt"]


def test_saver_disabled_on_other_ranks(net, tmp_path):
    saver = CheckpointSaver(str(tmp_path), "p", 1, 1, 1, 4, enabled=False)
    saver.on_train_epoch_end(FakeContext(cur_epoch_num=1, train_network=net))
    assert os.listdir(tmp_path) == []


def test_failed_save_leaves_nothing_behind(tmp_path):
    saver = CheckpointSaver(str(tmp_path), "p", 1, 1, 1, 4)
    with pytest.raises(Exception):  # noqa: B017 - whatever MindSpore raises for a non-network
        saver.on_train_epoch_end(FakeContext(cur_epoch_num=1, train_network=object()))
    assert os.listdir(tmp_path) == []


def _step(monitor, epoch, loss):
    monitor.on_train_step_begin(None)
    monitor.on_train_step_end(FakeContext(cur_epoch_num=epoch, net_outputs=ms.Tensor(np.float32(loss))))


def test_monitor_logs_seed_style_line_and_stops_on_nan(caplog):
    monitor = TrainMonitor(steps_per_epoch=3, total_epochs=2, images_per_step=12, lr=np.full(6, 0.5, np.float32),
                           log_interval=2)
    monitor.on_train_begin(None)
    monitor.on_train_epoch_begin(None)
    with caplog.at_level(logging.INFO, logger="metric_learn"):
        for loss in (1.0, 3.0, 2.0):
            _step(monitor, 1, loss)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # step 2 (interval) and step 3 (end of epoch)
    assert lines[0].startswith("epoch: 1/2 step: 2/3, loss is 3.0000000 (mean 2.0000000), ")
    assert "lr 0.5000000" in lines[0] and "img/s" in lines[0] and "ETA" in lines[0]
    monitor.on_train_epoch_begin(None)
    _step(monitor, 2, 1.5)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 2 step 2 \(global step 5\)"):
        _step(monitor, 2, float("nan"))
    with pytest.raises(NonFiniteLossError, match="loss is inf"):
        _step(monitor, 2, float("inf"))


def test_eval_callback_keeps_the_best(net, tmp_path):
    recalls = iter([0.3, 0.5, 0.4])
    callback = EvalCallback(lambda: {"recall@1": next(recalls), "map@r": 0.1}, interval=1, directory=str(tmp_path),
                            prefix="p", total_epochs=3)
    best = tmp_path / "p-best.ckpt"
    for epoch in (1, 2, 3):
        net.weight.set_data(ms.Tensor(np.full((2, 3), epoch, np.float32)))
        callback.on_train_epoch_end(FakeContext(cur_epoch_num=epoch, train_network=net))
    saved = ms.load_checkpoint(str(best))
    assert np.all(saved["weight"].asnumpy() == 2)  # epoch 2 had the best Recall@1
    assert callback.best == 0.5 and callback.history == [(1, 0.3), (2, 0.5), (3, 0.4)]
