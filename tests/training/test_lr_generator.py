"""Learning-rate schedules: values at known steps for every mode, warm-up, errors."""
import math

import numpy as np
import pytest

from src.training.lr_generator import LR_DECAY_MODES, get_lr


def test_steps_mode_seed_softmax_config():
    # The seed's softmax stage: lr_max 0.3, steps, 30 epochs, no warm-up; 46 steps per epoch (8P).
    lr = get_lr(0.01, 0.0001, 0.3, 0, 30, 46, "steps")
    total = 30 * 46
    assert lr.dtype == np.float32 and lr.shape == (total,)
    boundary1, boundary2 = math.ceil(0.4 * total), math.ceil(0.8 * total)  # 552, 1104
    assert np.all(lr[:boundary1] == np.float32(0.3))
    assert np.all(lr[boundary1:boundary2] == np.float32(0.03))
    assert np.all(lr[boundary2:] == np.float32(0.003))
    assert (boundary1, boundary2) == (552, 1104)


def test_const_mode_seed_triplet_config():
    lr = get_lr(0.01, 0.0001, 0.0001, 0, 30, 62, "const")
    assert lr.shape == (1860,) and np.all(lr == np.float32(0.0001))


def test_warmup_is_linear_from_lr_init():
    lr = get_lr(0.0, 0.0, 1.0, 2, 10, 5, "const")
    np.testing.assert_allclose(lr[:10], np.arange(10) / 10, rtol=1e-6)
    assert np.all(lr[10:] == 1.0)


@pytest.mark.parametrize("mode", ["linear", "liner"])
def test_linear_mode(mode):
    lr = get_lr(0.0, 0.1, 1.1, 0, 10, 10, mode)
    assert lr[0] == pytest.approx(1.1)
    assert lr[50] == pytest.approx(0.6)         # halfway: t = 0.5
    assert lr[99] == pytest.approx(1.1 - 0.99)  # t = 99/100
    assert np.all(np.diff(lr) < 0)


def test_cosine_mode_with_warmup():
    lr = get_lr(0.0, 0.0, 2.0, 1, 5, 10, "cosine")  # 10 warm-up steps, 40 decay steps
    assert lr[5] == pytest.approx(1.0)             # warm-up midpoint
    assert lr[10] == pytest.approx(2.0)            # t = 0
    assert lr[30] == pytest.approx(1.0, rel=1e-6)  # t = 0.5: (1 + cos(pi/2)) / 2
    assert lr[40] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.75)), rel=1e-6)


def test_poly_mode():
    lr = get_lr(0.0, 0.5, 4.5, 0, 4, 5, "poly")
    assert lr[0] == pytest.approx(4.5)
    assert lr[10] == pytest.approx(0.5 + 4.0 * 0.25)  # t = 0.5
    assert lr[-1] == pytest.approx(0.5 + 4.0 * (1 / 20) ** 2)


def test_length_matches_epochs_times_steps_for_every_mode():
    for mode in LR_DECAY_MODES:
        assert get_lr(0.01, 0.0001, 0.1, 1, 3, 7, mode).shape == (21,)


def test_unknown_mode_lists_valid_ones():
    valid = "steps, poly, cosine, linear, liner, const"
    with pytest.raises(ValueError, match=rf"unknown lr_decay_mode 'step'.*{valid}"):
        get_lr(0.01, 0.0001, 0.1, 0, 3, 7, "step")


@pytest.mark.parametrize("kwargs,match", [
    ({"total_epochs": 0}, "total_epochs"),
    ({"steps_per_epoch": 2.5}, "steps_per_epoch"),
    ({"warmup_epochs": 5}, "warmup_epochs"),
    ({"lr_max": float("nan")}, "lr_max"),
    ({"lr_init": -1.0}, "lr_init"),
])
def test_bad_arguments(kwargs, match):
    args = {"lr_init": 0.01, "lr_end": 0.0001, "lr_max": 0.1, "warmup_epochs": 0, "total_epochs": 3,
            "steps_per_epoch": 7, "lr_decay_mode": "steps"}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        get_lr(**args)
