"""Per-step learning-rate schedules (one float32 per training step), as the seed's `get_lr`.

Every mode starts with `warmup_epochs` of linear warm-up from `lr_init` towards `lr_max`
(step i of W: lr_init + (lr_max - lr_init) * i / W). After it, with t running from 0 at the end
of warm-up to 1 at the last step:

- `steps`:  lr_max until 40% of all steps, lr_max * 0.1 until 80%, lr_max * 0.01 after (the seed);
- `poly`:   lr_end + (lr_max - lr_end) * (1 - t)^2;
- `cosine`: lr_end + (lr_max - lr_end) * (1 + cos(pi * t)) / 2;
- `linear` (the seed spells it `liner`; both accepted): lr_max - (lr_max - lr_end) * t;
- `const`:  lr_max.
"""
import math

import numpy as np

LR_DECAY_MODES = ("steps", "poly", "cosine", "linear", "liner", "const")


def _decayed(mode, i, total_steps, t, lr_max, lr_end):
    if mode == "steps":
        if i < 0.4 * total_steps:
            return lr_max
        return lr_max * (0.1 if i < 0.8 * total_steps else 0.01)
    if mode == "poly":
        return lr_end + (lr_max - lr_end) * (1.0 - t) ** 2
    if mode == "cosine":
        return lr_end + (lr_max - lr_end) * 0.5 * (1.0 + math.cos(math.pi * t))
    if mode in ("linear", "liner"):
        return lr_max - (lr_max - lr_end) * t
    return lr_max


def get_lr(lr_init, lr_end, lr_max, warmup_epochs, total_epochs, steps_per_epoch, lr_decay_mode):
    """Return a float32 array of total_epochs * steps_per_epoch learning rates."""
    if lr_decay_mode not in LR_DECAY_MODES:
        raise ValueError(f"unknown lr_decay_mode {lr_decay_mode!r}; valid modes: {', '.join(LR_DECAY_MODES)}")
    for name, value in (("total_epochs", total_epochs), ("steps_per_epoch", steps_per_epoch)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not 0 <= warmup_epochs <= total_epochs:
        raise ValueError(f"warmup_epochs must be in [0, total_epochs={total_epochs}], got {warmup_epochs!r}")
    for name, value in (("lr_init", lr_init), ("lr_end", lr_end), ("lr_max", lr_max)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    total_steps = int(total_epochs) * int(steps_per_epoch)
    warmup_steps = int(warmup_epochs * steps_per_epoch)
    decay_steps = max(total_steps - warmup_steps, 1)
    lrs = np.empty(total_steps, dtype=np.float64)
    for i in range(total_steps):
        if i < warmup_steps:
            lrs[i] = lr_init + (lr_max - lr_init) * i / warmup_steps
        else:
            t = (i - warmup_steps) / decay_steps
            lrs[i] = _decayed(lr_decay_mode, i, total_steps, t, lr_max, lr_end)
    return lrs.astype(np.float32)
