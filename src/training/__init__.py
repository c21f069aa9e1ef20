"""The training run: trainer, optimizer, callbacks, learning-rate schedule, dataset sink mode, per-epoch history."""
