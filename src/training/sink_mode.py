"""Dataset sink mode: whether a run uses it, how many steps each sink runs, and where a callback call falls.

With `dataset_sink_mode` (GPU and Ascend) MindSpore feeds batches through a device queue and runs `sink_size`
steps per launch of the training graph, so data loading overlaps compute. Its callbacks then see one
`on_train_step_end` per sink, and when a sink is shorter than an epoch every sink is a "model epoch" of its own
(`Model.train(epoch=sinks, sink_size=k)`, `cur_epoch_num` counting sinks). StepPlan turns MindSpore's counters
back into training epochs and steps, so the step log, checkpoints, evaluations and history.csv fire at the same
points as without sink mode. On CPU MindSpore 2.10 always trains step by step (`Model._train` falls back
to the non-sink loop, where a sink_size would silently change what an epoch is), so sink mode is off there.

Config keys: `dataset_sink_mode` (bool) and `sink_size`: 0 = gcd(log_interval, steps per epoch), so that every
log line falls on a sink's end (the default); -1 = one sink per epoch (the seed's, the fewest launches);
N > 0 = N steps, rounded down to a divisor of the steps per epoch.
"""
import math
from dataclasses import dataclass

from src.runtime.config import ConfigError
from src.runtime.log import get_logger

logger = get_logger()


@dataclass(frozen=True)
class StepPlan:
    """How Model.train walks one stage. sink_size is the number of steps per on_train_step_end call (1 without
    sink mode) and divides steps_per_epoch."""

    steps_per_epoch: int
    sink_size: int = 1
    sink_mode: bool = False

    def __post_init__(self):
        if self.steps_per_epoch < 1 or self.sink_size < 1 or self.steps_per_epoch % self.sink_size:
            raise ValueError(f"sink_size {self.sink_size} must divide steps_per_epoch {self.steps_per_epoch}")
        if not self.sink_mode and self.sink_size != 1:
            raise ValueError("without sink mode every call is one step (sink_size 1)")

    @property
    def model_epochs_per_epoch(self):
        """MindSpore epochs per training epoch: the sinks in an epoch (1 without sink mode)."""
        return self.steps_per_epoch // self.sink_size if self.sink_mode else 1

    @property
    def steps_per_model_epoch(self):
        return self.steps_per_epoch // self.model_epochs_per_epoch

    def train_arguments(self, epochs, start_epoch=0):
        """Keyword arguments of Model.train for `epochs` training epochs, resuming after `start_epoch`."""
        per_epoch = self.model_epochs_per_epoch
        return {"epoch": epochs * per_epoch, "initial_epoch": start_epoch * per_epoch,
                "dataset_sink_mode": self.sink_mode, "sink_size": self.sink_size if self.sink_mode else -1}

    def global_step(self, model_epoch, calls):
        """1-based global step after the `calls`-th on_train_step_end of MindSpore epoch `model_epoch`."""
        return (model_epoch - 1) * self.steps_per_model_epoch + calls * self.sink_size

    def locate(self, global_step):
        """(1-based training epoch, 1-based step in it) of a global step."""
        epoch = (global_step - 1) // self.steps_per_epoch + 1
        return epoch, global_step - (epoch - 1) * self.steps_per_epoch

    def epoch_end(self, model_epoch):
        """The training epoch that ends with MindSpore epoch `model_epoch`, or None mid-epoch."""
        if model_epoch % self.model_epochs_per_epoch:
            return None
        return model_epoch // self.model_epochs_per_epoch

    def logs_at(self, step, log_interval):
        """Whether the call ending at `step` (in its epoch) writes a log line: it passed a multiple of
        log_interval, or ended the epoch. Without sink mode: step % log_interval == 0 or the last step."""
        return step // log_interval > (step - self.sink_size) // log_interval or step == self.steps_per_epoch


def largest_divisor_up_to(n, limit):
    """The largest divisor of n that is <= limit (at least 1)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


def resolve_plan(cfg, device_target, steps_per_epoch, log=None):
    """The StepPlan of a run from the config keys dataset_sink_mode and sink_size (see the module docstring)."""
    log = log or logger
    steps_per_epoch = int(steps_per_epoch)
    requested = int(cfg.sink_size)
    if requested < -1:
        raise ConfigError(f"sink_size must be -1 (one sink per epoch), 0 (gcd of log_interval and the steps per "
                          f"epoch) or a positive number of steps, got {requested}")
    if not cfg.dataset_sink_mode:
        return StepPlan(steps_per_epoch)
    if device_target == "CPU":
        log.info("dataset_sink_mode=true has no effect on CPU (MindSpore trains CPU runs step by step): "
                 "training without it")
        return StepPlan(steps_per_epoch)
    if requested == -1:
        size, why = steps_per_epoch, "one sink per epoch (sink_size -1)"
    elif requested == 0:
        size = math.gcd(max(1, int(cfg.log_interval)), steps_per_epoch)
        why = (f"gcd of log_interval {cfg.log_interval} and the {steps_per_epoch} steps per epoch, so every log "
               f"line falls on a sink's end (sink_size 0)")
    else:
        size = largest_divisor_up_to(steps_per_epoch, requested)
        why = (f"sink_size {requested}" if size == requested else
               f"the largest divisor of the {steps_per_epoch} steps per epoch up to sink_size {requested}")
    log.info("dataset sink mode: %d step(s) per sink, %s", size, why)
    return StepPlan(steps_per_epoch, size, sink_mode=True)


def finished_epoch(run_context, plan=None):
    """In on_train_epoch_end: the training epoch that has just ended, or None in the middle of one (a sink
    shorter than the epoch ended). plan None: MindSpore's epochs are the training epochs."""
    model_epoch = run_context.original_args().cur_epoch_num
    return model_epoch if plan is None else plan.epoch_end(model_epoch)
