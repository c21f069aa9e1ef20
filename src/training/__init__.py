"""The training run: trainer, callbacks, learning-rate schedule, dataset sink mode, per-epoch history."""
