"""Dataset sink mode: its resolution per device, and the callbacks driven the way MindSpore 2.10's Model.train
drives them with and without sink mode fire at the same training steps and epochs."""
import logging
import math
import os
import re
from types import SimpleNamespace

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.runtime.config import ConfigError, load_config
from src.training.callbacks import CheckpointSaver, EvalCallback, TrainMonitor
from src.training.history import HistoryWriter, read_history
from src.training.sink_mode import StepPlan, largest_divisor_up_to, resolve_plan


def config(device="GPU", **overrides):
    return load_config("softmax", device, overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.parametrize("device, sink", [("GPU", True), ("Ascend", True), ("CPU", False)])
def test_sink_mode_is_on_for_gpu_and_ascend_and_off_on_cpu(device, sink):
    cfg = config(device)
    assert cfg.dataset_sink_mode is sink and cfg.sink_size == 0
    plan = resolve_plan(cfg, device, 124)
    assert plan.sink_mode is sink
    assert plan.sink_size == (math.gcd(cfg.log_interval, 124) if sink else 1)


def test_cpu_ignores_a_requested_sink_mode_with_a_message(caplog):
    with caplog.at_level(logging.INFO):
        plan = resolve_plan(config("CPU", dataset_sink_mode="true"), "CPU", 30)
    assert plan == StepPlan(30)
    assert "has no effect on CPU" in caplog.text


@pytest.mark.parametrize("sink_size, steps, expected", [(0, 30, 10), (0, 124, 2), (0, 7, 1), (-1, 124, 124),
                                                        (31, 124, 31), (10, 124, 4), (500, 124, 124), (1, 9, 1)])
def test_sink_size_resolution(sink_size, steps, expected, caplog):
    with caplog.at_level(logging.INFO):
        plan = resolve_plan(config(sink_size=sink_size, log_interval=10), "Ascend", steps)
    assert plan.sink_mode and plan.sink_size == expected
    assert steps % plan.sink_size == 0
    assert f"dataset sink mode: {expected} step(s) per sink" in caplog.text


def test_bad_sink_size_names_the_key():
    with pytest.raises(ConfigError, match="sink_size must be -1 .* got -2"):
        resolve_plan(config(sink_size=-2), "GPU", 10)
    with pytest.raises(ConfigError, match="sink_size must be int"):
        config(sink_size="half")


def test_largest_divisor_against_brute_force():
    for n in range(1, 60):
        for limit in range(1, 70):
            assert largest_divisor_up_to(n, limit) == max(d for d in range(1, n + 1) if n % d == 0 and d <= limit)


def test_model_train_arguments():
    assert StepPlan(12).train_arguments(5, 2) == {"epoch": 5, "initial_epoch": 2, "dataset_sink_mode": False,
                                                  "sink_size": -1}
    assert StepPlan(12, 4, True).train_arguments(5, 2) == {"epoch": 15, "initial_epoch": 6,
                                                           "dataset_sink_mode": True, "sink_size": 4}
    assert StepPlan(12, 12, True).train_arguments(5) == {"epoch": 5, "initial_epoch": 0, "dataset_sink_mode": True,
                                                         "sink_size": 12}
    with pytest.raises(ValueError, match="must divide"):
        StepPlan(12, 5, True)


# ---------------------------------------------------------------------------------------------------------
# The callback calls of MindSpore 2.10's Model.train (mindspore/train/model.py): `_train_process` without sink
# mode, `_train_dataset_sink_process` with it (graph mode: cur_step_num += sink_size per sink, one sink per
# MindSpore epoch, cur_epoch_num = epoch_iter + 1 + initial_epoch, net_outputs of the sink's last step).

class Run(SimpleNamespace):
    def original_args(self):
        return self


def drive(callbacks, plan, epochs, start_epoch, loss_of_step):
    """Call `callbacks` as Model.train(**plan.train_arguments(epochs, start_epoch)) would."""
    arguments = plan.train_arguments(epochs, start_epoch)
    sink = arguments["sink_size"] if arguments["dataset_sink_mode"] else 1
    calls = plan.steps_per_epoch if not arguments["dataset_sink_mode"] else 1
    run = Run(cur_step_num=0, cur_epoch_num=0, net_outputs=None, train_network=nn.Dense(2, 2))
    done = start_epoch * plan.steps_per_epoch  # steps before this run (the optimizer's global step)
    for callback in callbacks:
        callback.on_train_begin(run)
    for model_epoch in range(arguments["initial_epoch"] + 1, arguments["epoch"] + 1):
        run.cur_epoch_num = model_epoch
        for callback in callbacks:
            callback.on_train_epoch_begin(run)
        for _ in range(calls):
            run.cur_step_num += sink
            done += sink
            for callback in callbacks:
                callback.on_train_step_begin(run)
            run.net_outputs = ms.Tensor(np.float32(loss_of_step(done)))
            for callback in callbacks:
                callback.on_train_step_end(run)
        for callback in callbacks:
            callback.on_train_epoch_end(run)
    for callback in callbacks:
        callback.on_train_end(run)


def train_like(tmp_path, plan, epochs=4, start_epoch=0, log_interval=3, caplog=None):
    """The trainer's callbacks for `plan`: returns (step log lines as (epoch, step, loss), checkpoint files,
    evaluation epochs, history rows, epoch lines)."""
    steps = plan.steps_per_epoch
    lr = np.linspace(0.1, 0.2, epochs * steps).astype(np.float32)
    monitor = TrainMonitor(steps, epochs, 8, lr, log_interval, plan=plan)
    saver = CheckpointSaver(str(tmp_path), "p", every_epochs=2, keep_max=10, total_epochs=epochs,
                            steps_per_epoch=steps, plan=plan)
    evaluated = []
    recalls = iter(np.linspace(0.1, 0.9, epochs))

    def evaluate():
        evaluated.append(len(evaluated))
        return {"recall@1": float(next(recalls)), "map@r": 0.5}

    evaluator = EvalCallback(evaluate, 1, str(tmp_path), "p", epochs, plan=plan)
    history = HistoryWriter(str(tmp_path / "history.csv"), monitor, evaluator, start_epoch, plan=plan)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        drive([monitor, evaluator, history, saver], plan, epochs, start_epoch, loss_of_step=lambda g: 1.0 / g)
    text = "\n".join(r.getMessage() for r in caplog.records)
    lines = [(int(e), int(s), float(v)) for e, s, v in
             re.findall(r"^epoch: (\d+)/\d+ step: (\d+)/\d+, loss is ([0-9.]+)", text, re.M)]
    epoch_lines = re.findall(r"^epoch: (\d+)/\d+ done, mean loss [0-9.]+, last loss ([0-9.]+), lr ([0-9.]+)", text,
                             re.M)
    evals = [int(e) for e in re.findall(r"^epoch: (\d+) eval_recall", text, re.M)]
    files = sorted(name for name in os.listdir(tmp_path) if name.endswith(".ckpt"))
    rows = [(row["epoch"], row["lr"], row["recall_at_1"]) for row in read_history(str(tmp_path / "history.csv"))]
    return lines, files, evals, rows, epoch_lines


@pytest.mark.parametrize("steps, log_interval", [(12, 3), (12, 4), (10, 10), (9, 2)])
def test_callbacks_fire_at_the_same_points_in_sink_mode(tmp_path, caplog, steps, log_interval):
    per_step = train_like(tmp_path / "per_step", StepPlan(steps), log_interval=log_interval, caplog=caplog)
    sink = math.gcd(steps, log_interval)  # sink_size 0
    sunk = train_like(tmp_path / "sink", StepPlan(steps, sink, True), log_interval=log_interval, caplog=caplog)
    assert per_step[0] == sunk[0]  # the same steps logged, with the loss of that step
    assert [s for e, s, _ in per_step[0] if e == 1] == sorted({*range(log_interval, steps + 1, log_interval), steps})
    assert per_step[1:] == sunk[1:]  # checkpoint names, evaluations, history rows, epoch lines
    assert per_step[1] == ["p-2_" + str(2 * steps) + ".ckpt", "p-4_" + str(4 * steps) + ".ckpt", "p-best.ckpt"]
    assert per_step[2] == [1, 2, 3, 4]
    assert [row[0] for row in per_step[3]] == ["1", "2", "3", "4"]


def test_one_sink_per_epoch_logs_each_epochs_last_step(tmp_path, caplog):
    per_step = train_like(tmp_path / "per_step", StepPlan(12), caplog=caplog)
    whole = train_like(tmp_path / "whole", StepPlan(12, 12, True), caplog=caplog)
    assert whole[0] == [(e, 12, pytest.approx(1.0 / (12 * e), abs=1e-7)) for e in (1, 2, 3, 4)]
    assert whole[1:] == per_step[1:]


def test_sinks_that_do_not_fall_on_the_log_points(tmp_path, caplog):
    """sink_size 4 with log_interval 3: a line at the end of each sink that passed a multiple of 3."""
    lines = train_like(tmp_path, StepPlan(12, 4, True), epochs=1, log_interval=3, caplog=caplog)[0]
    assert [s for _, s, _ in lines] == [4, 8, 12]  # passed 3; 6; 9 and 12


def test_a_resumed_run_continues_at_the_same_points(tmp_path, caplog):
    full = train_like(tmp_path / "full", StepPlan(12, 3, True), epochs=4, caplog=caplog)
    resumed = train_like(tmp_path / "resumed", StepPlan(12, 3, True), epochs=4, start_epoch=2, caplog=caplog)
    assert resumed[0] == [line for line in full[0] if line[0] > 2]
    assert resumed[1] == ["p-4_48.ckpt", "p-best.ckpt"]
    assert resumed[4] == full[4][2:]  # epoch lines with the same last loss and learning rate


def test_nan_in_a_sink_names_the_epoch_step_and_sink(caplog):
    plan = StepPlan(12, 4, True)
    monitor = TrainMonitor(12, 2, 8, np.full(24, 0.1, np.float32), 3, plan=plan)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2 step 8 \(the last of a 4-step sink\) "
                                                 r"\(global step 20\)"):
        drive([monitor], plan, 2, 0, loss_of_step=lambda g: float("nan") if g == 20 else 1.0)
