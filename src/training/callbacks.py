"""Training callbacks: progress log with NaN stop, periodic checkpoints, periodic retrieval eval."""
import math
import os
import time

import numpy as np
from mindspore.train import Callback

from src.models.checkpoint import save_checkpoint_atomic
from src.runtime.log import format_seconds, get_logger
from src.training.sink_mode import StepPlan, finished_epoch

logger = get_logger()


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _loss_value(net_outputs):
    # Loss-scale train cells return (loss, overflow, scale); plain ones the loss alone.
    out = net_outputs[0] if isinstance(net_outputs, (tuple, list)) else net_outputs
    return float(np.mean(out.asnumpy()))


class TrainMonitor(Callback):
    """Logs every `log_interval` steps and at each epoch end, in the seed's words:

    `epoch: 3/30 step: 20/62, loss is 0.2131956 (mean 0.2302577), 0.110 s/step, lr 0.0001000,
    545.5 img/s, ETA 0:03:12`. A NaN/Inf loss raises NonFiniteLossError naming the step.

    In dataset sink mode (`plan`, src/training/sink_mode.py) MindSpore reports once per sink of plan.sink_size steps:
    a line is written at the end of a sink that passed a multiple of log_interval or ended the epoch;
    `loss is` is the sink's last step's loss, `mean` the mean of those sink-end losses this epoch, s/step the
    sink's time over its steps.
    """

    def __init__(self, steps_per_epoch, total_epochs, images_per_step, lr, log_interval=10, plan=None):
        super().__init__()
        self.plan = plan or StepPlan(steps_per_epoch)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = int(total_epochs)
        self.images_per_step = int(images_per_step)
        self.lr = np.asarray(lr)
        self.log_interval = max(1, int(log_interval))
        self.losses = []
        self.step_times = []
        self.run_start = None
        self.steps_done = 0
        self.calls_in_model_epoch = 0
        self.epoch_start = self.model_epoch_start = self.step_start = 0.0
        self.epoch_summary = None  # the last finished epoch's logged values (strings as logged), for history.csv

    def on_train_begin(self, run_context):
        self.run_start = time.monotonic()

    def on_train_epoch_begin(self, run_context):
        self.calls_in_model_epoch = 0
        self.model_epoch_start = time.monotonic()

    def on_train_step_begin(self, run_context):
        self.step_start = time.monotonic()

    def on_train_step_end(self, run_context):
        args = run_context.original_args()
        sink = self.plan.sink_size
        step_time = (time.monotonic() - self.step_start) / sink
        self.calls_in_model_epoch += 1
        global_step = self.plan.global_step(args.cur_epoch_num, self.calls_in_model_epoch)
        epoch, step = self.plan.locate(global_step)
        if step == sink:  # the first call of a training epoch
            self.losses = []
            self.epoch_start = self.model_epoch_start
        loss = _loss_value(args.net_outputs)
        if not math.isfinite(loss):
            where = f" (the last of a {sink}-step sink)" if sink > 1 else ""
            raise NonFiniteLossError(f"loss is {loss} at epoch {epoch} step {step}{where} (global step "
                                     f"{global_step}); training stopped, the last checkpoint written before it "
                                     f"is kept")
        self.losses.append(loss)
        if self.steps_done:  # the run's first call includes graph compilation: not a rate sample
            self.step_times.append(step_time)
        self.steps_done += sink
        if self.plan.logs_at(step, self.log_interval):
            logger.info(self._step_line(epoch, step, global_step, loss, step_time))

    def _lr_at(self, global_step):
        """The learning rate of 1-based `global_step` (the last entry past the array's end)."""
        return float(self.lr[min(global_step - 1, len(self.lr) - 1)])

    def _step_line(self, epoch, step, global_step, loss, step_time):
        recent = self.step_times[-self.log_interval:]
        per_step = float(np.median(recent)) if recent else step_time
        remaining = (self.total_epochs - epoch + 1) * self.steps_per_epoch - step
        lr = self._lr_at(global_step)
        return (f"epoch: {epoch}/{self.total_epochs} step: {step}/{self.steps_per_epoch}, loss is {loss:.7f} "
                f"(mean {np.mean(self.losses):.7f}), {per_step:.3f} s/step, lr {lr:.7f}, "
                f"{self.images_per_step / max(per_step, 1e-9):.1f} img/s, "
                f"ETA {format_seconds(remaining * per_step)}")

    def on_train_epoch_end(self, run_context):
        epoch = finished_epoch(run_context, self.plan)
        if epoch is None:
            return
        elapsed = time.monotonic() - self.epoch_start
        self.epoch_summary = {
            "epoch": epoch,
            "mean_loss": f"{np.mean(self.losses):.7f}",
            "lr": f"{self._lr_at(epoch * self.steps_per_epoch):.7f}",
            "images_per_s": f"{self.images_per_step * self.steps_per_epoch / max(elapsed, 1e-9):.1f}",
        }
        summary = self.epoch_summary
        logger.info(f"epoch: {epoch}/{self.total_epochs} done, mean loss {summary['mean_loss']}, "
                    f"last loss {self.losses[-1]:.7f}, lr {summary['lr']}, epoch time {elapsed:.1f} s, "
                    f"{summary['images_per_s']} img/s")


def checkpoint_name(prefix, epoch, step):
    return f"{prefix}-{epoch}_{step}.ckpt"


class CheckpointSaver(Callback):
    """Saves the whole training state (weights, optimizer moments, step) every `every_epochs` epochs and
    after the last one, as `<prefix>-<epoch>_<step>.ckpt` (MindSpore's naming), keeping the newest
    `keep_max` of this run's. Files are written under a temporary name and renamed, so a crash never
    leaves half a checkpoint. Only the process with `enabled=True` (rank 0) writes.
    """

    def __init__(self, directory, prefix, every_epochs, keep_max, total_epochs, steps_per_epoch, enabled=True,
                 plan=None, marker=None):
        super().__init__()
        self.plan = plan
        self.marker = dict(marker or {})  # entries written into every checkpoint (backbone_padding)
        self.directory = directory
        self.prefix = prefix
        self.every_epochs = max(1, int(every_epochs))
        self.keep_max = max(1, int(keep_max))
        self.total_epochs = int(total_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        self.enabled = enabled
        self.last_saved = None
        self.written = []

    def on_train_epoch_end(self, run_context):
        args = run_context.original_args()
        epoch = finished_epoch(run_context, self.plan)
        if not self.enabled or epoch is None or (epoch % self.every_epochs and epoch != self.total_epochs):
            return
        step = epoch * self.steps_per_epoch
        path = os.path.join(self.directory, checkpoint_name(self.prefix, epoch, step))
        save_checkpoint_atomic(args.train_network, path, {**self.marker, "epoch_num": epoch, "step_num": step})
        self.last_saved = path
        logger.info("saved checkpoint %s", path)
        if path not in self.written:
            self.written.append(path)
        self._rotate()

    def _rotate(self):
        """Delete this run's oldest checkpoints beyond keep_max (files of other runs are never touched)."""
        while len(self.written) > self.keep_max:
            old = self.written.pop(0)
            if os.path.exists(old):
                os.remove(old)
                logger.info("removed old checkpoint %s (keep_checkpoint_max=%d)", old, self.keep_max)


class EvalCallback(Callback):
    """Every `interval` epochs (and after the last), run `evaluate()` -> metrics dict and keep the training
    state with the best Recall@1 as `<prefix>-best.ckpt`. Only the process with `enabled=True` runs it."""

    def __init__(self, evaluate, interval, directory, prefix, total_epochs, enabled=True, plan=None, marker=None):
        super().__init__()
        self.plan = plan
        self.marker = dict(marker or {})
        self.evaluate = evaluate
        self.interval = max(1, int(interval))
        self.best_path = os.path.join(directory, f"{prefix}-best.ckpt")
        self.total_epochs = int(total_epochs)
        self.enabled = enabled
        self.best = -1.0
        self.history = []
        self.last = None  # the last evaluation's logged values (strings as logged), for history.csv

    def on_train_epoch_end(self, run_context):
        args = run_context.original_args()
        epoch = finished_epoch(run_context, self.plan)
        if not self.enabled or epoch is None or (epoch % self.interval and epoch != self.total_epochs):
            return
        start = time.monotonic()
        metrics = self.evaluate()
        recall = metrics["recall@1"]
        self.history.append((epoch, recall))
        self.last = {"epoch": epoch, "recall_at_1": f"{recall:.4f}", "map_at_r": f"{metrics['map@r']:.4f}"}
        logger.info(f"epoch: {epoch} eval_recall: {self.last['recall_at_1']} (MAP@R {self.last['map_at_r']}, "
                    f"{time.monotonic() - start:.1f} s)")
        if recall > self.best:
            self.best = recall
            save_checkpoint_atomic(args.train_network, self.best_path,
                                   {**self.marker, "epoch_num": epoch, "recall_at_1": recall})
            logger.info("new best Recall@1 %.4f: saved %s", recall, self.best_path)
