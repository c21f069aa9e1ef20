"""Our training against PyTorch's, without torch: tests/fixtures/parity_reference.npz holds, for each stage, the
batches our pipeline gave (uint8), PyTorch's losses and a digest of its change of every tensor after each step
(written by `python bench/parity_torch.py --write-fixture tests/fixtures/parity_reference.npz`, which says how
PyTorch was set up to train as we do; 2 steps at 32 px, batch 12, weight decay 0.01 so that a parameter decayed
on one side only shows). Here ours trains from the same converted weights on the same batches.

The start is the seeded random weights with calm residual branches (parity_torch.calm_residuals: each
bottleneck's last BatchNorm scale a tenth as large, as torchvision's zero_init_residual starts a ResNet), whose
first steps are well conditioned: two correct float32 runs keep together through both steps, so both steps are
checked, every tensor. (From the random weights' own scales the updates of two correct runs part by 0.5-6% at
step 1 and 10-50% at step 2, and the check had to allow 15% on step 1's updates and 10% on step 2's loss.)

What is compared, at each step, and how tightly; the fixture also holds the two floors of the bench, PyTorch with
its own convolution kernels instead of oneDNN's (torch_native) and PyTorch from the start moved by one float32
ulp (torch_ulp), and test_the_fixture_floors_* checks that they pass the same check. Measured when the fixture
was written (AMD EPYC, AVX-512), ours / the worse floor:
  - the loss, within 1e-4 (ours at most 4.9e-5, floors 2.0e-5);
  - BatchNorm's moving statistics after step 1 (that forward's batch statistics, and the momentum convention):
    every tensor within 1e-3 (ours 5.3e-7, floors 7.8e-7);
  - the change of every tensor from the start (parameters, moving statistics, a loss's proxies), as the relative
    L2 difference of the digests: each group's median within 0.02 (ours 9.0e-5, floors 2.7e-3) and every
    tensor within 0.1 (ours 9.0e-3, floors 9.0e-3: the largest are BatchNorm tensors whose change is tiny);
  - weight decay, on its own: the component of each tensor's change along the tensor itself, where decay acts
    (-lr wd |w|), differs between the sides by less than 0.1 of lr wd |w| for every tensor (ours 1.9e-2,
    floors 3.5e-2): a tensor decayed on one side only differs by about 1.
A convention that differs moves far more: test_the_check_catches_* below.
"""
import argparse
import os

import numpy as np
import pytest

from bench import parity_torch
from bench.torchvision_reference import random_state_dict
from tests.paths import FIXTURES

REFERENCE = np.load(os.path.join(FIXTURES, "parity_reference.npz"))
SIZES = parity_torch.FIXTURE
LOSS_TOL, STATS_TOL, MEDIAN_TOL, TENSOR_TOL, DECAY_TOL = 1e-4, 1e-3, 0.02, 0.1, 0.1


def digest_rel(ours, theirs):
    """Relative L2 difference of two changes, from their digests (the count sketches, then the norm)."""
    k = parity_torch.PROJECTIONS
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    if theirs[k] == 0:
        return 0.0 if ours[k] == 0 else float("inf")
    return float(np.linalg.norm(ours[:k] - theirs[:k]) / (np.sqrt(k) * theirs[k]))


def group(name):
    if "moving_" in name:
        return "moving statistics"
    if name.endswith((".gamma", ".beta")):
        return "BatchNorm gamma/beta"
    return "proxies" if "proxies" in name else "weights"


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    classes = int(REFERENCE["classes"])
    ckpt = str(tmp_path_factory.mktemp("parity") / "start.ckpt")
    parity_torch.convert_in_process(parity_torch.start_weights(None, classes, calm=True), ckpt)
    return classes, ckpt


def config(stage):
    return parity_torch.stage_config(stage, SIZES["image_size"], SIZES["batch"], int(REFERENCE["classes"]),
                                     SIZES["steps"], weight_decay=SIZES["weight_decay"])


def train_ours(stage, start):
    _, ckpt = start
    cfg = config(stage)
    batches = [(parity_torch.from_uint8(REFERENCE[f"{stage}/x{i}"]), REFERENCE[f"{stage}/y{i}"])
               for i in range(SIZES["steps"])]
    proxies = parity_torch.initial_proxies(cfg) if stage == "proxyanchor" else None
    losses, states = [], []

    def on_step(step, loss, state):
        losses.append(loss)
        states.append(state)

    first = parity_torch.train_ours(stage, cfg, ckpt, batches, proxies, on_step)
    return losses, parity_torch.digests([first] + states)


def problems(stage, losses, digests, reference="torch"):
    """What differs from the fixture's run `reference` of the stage beyond the tolerances, step by step (empty:
    nothing). `digests`: (names, steps x tensors x digest) as parity_torch.digests gives them."""
    found = []
    names, ours = digests
    assert list(names) == list(REFERENCE[f"{stage}/names"])
    theirs, ref = REFERENCE[f"{stage}/{reference}/losses"], REFERENCE[f"{stage}/{reference}/digests"]
    k, lr = parity_torch.PROJECTIONS, float(REFERENCE[f"{stage}/lr"][0]) * SIZES["weight_decay"]
    multiplier = config(stage).proxy_lr_multiplier
    for step in range(len(theirs)):
        at = f"step {step + 1}"
        loss_diff = abs(losses[step] - theirs[step]) / abs(theirs[step])
        if loss_diff > LOSS_TOL:
            found.append(f"{at} loss {losses[step]:.7g} vs {theirs[step]:.7g} (rel {loss_diff:.1e})")
        by_group = {}
        for i, name in enumerate(names):
            kind, rel = group(name), digest_rel(ours[step, i], ref[step, i])
            by_group.setdefault(kind, []).append(rel)
            if rel > TENSOR_TOL:
                found.append(f"{at} {kind}: {name} changed otherwise (rel {rel:.1e})")
            if kind == "moving statistics":  # not decayed; after step 1, that forward's batch statistics
                if step == 0 and rel > STATS_TOL:
                    found.append(f"{at} moving statistics: {name} differs (rel {rel:.1e})")
                continue
            scale = lr * (multiplier if kind == "proxies" else 1.0) * ref[0, i, k + 2]
            # a tensor that starts at zero (fc.bias) has nothing to decay yet
            decay = abs(float(ours[step, i, k + 1]) - float(ref[step, i, k + 1])) / scale if scale > 0 else 0.0
            if decay > DECAY_TOL:
                found.append(f"{at} {kind}: weight decay of {name} differs by {decay:.2f} of lr wd |w|")
        for name, rels in by_group.items():
            if np.median(rels) > MEDIAN_TOL:
                found.append(f"{at} {name}: median relative difference of the change {np.median(rels):.1e}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("stage", parity_torch.STAGES)
def test_training_takes_pytorchs_steps(stage, start):
    import mindspore as ms

    mode = ms.get_context("mode")
    losses, digests = train_ours(stage, start)
    assert ms.get_context("mode") == mode  # graph mode for the run only: the next test here may need PyNative
    assert len(losses) == SIZES["steps"]
    assert not problems(stage, losses, digests)


def test_the_fixture_floors_are_within_the_tolerances():
    """PyTorch with its native convolution kernels, and PyTorch from a start one float32 ulp away, pass the same
    check against PyTorch: the tolerances leave room for rounding, and no more than two correct runs need."""
    for stage in parity_torch.STAGES:
        for floor in parity_torch.FLOORS:
            digests = (REFERENCE[f"{stage}/names"], REFERENCE[f"{stage}/{floor}/digests"])
            found = problems(stage, list(REFERENCE[f"{stage}/{floor}/losses"]), digests)
            assert not found, (stage, floor, found)


@pytest.mark.slow
def test_the_check_catches_weight_decay_on_batchnorm(start, monkeypatch):
    from src.training import trainer

    monkeypatch.setattr(trainer, "parameter_groups",
                        lambda network, loss, lr, weight_decay, proxy_lr_multiplier=1.0: [
                            {"params": network.trainable_params() + loss.trainable_params(),
                             "weight_decay": weight_decay}])
    losses, digests = train_ours("softmax", start)
    found = problems("softmax", losses, digests)
    assert any("BatchNorm gamma/beta" in line for line in found), found


@pytest.mark.slow
def test_the_check_catches_the_batchnorm_momentum_convention_flipped(start, monkeypatch):
    from src.models import resnet

    monkeypatch.setattr(resnet, "BN_MOMENTUM", 1 - resnet.BN_MOMENTUM)
    losses, digests = train_ours("triplet", start)
    found = problems("triplet", losses, digests)
    assert any("moving statistics" in line for line in found), found


@pytest.mark.slow
def test_the_check_catches_momentum_dropped_at_step_2(start, monkeypatch):
    """Step 2 is checked too: without momentum the first step is the same, the second is not."""
    from src.training import trainer

    momentum_optimizer = trainer.momentum_optimizer
    monkeypatch.setattr(trainer, "momentum_optimizer",
                        lambda params, lr, momentum, *rest: momentum_optimizer(params, lr, 0.0, *rest))
    losses, digests = train_ours("softmax", start)
    found = problems("softmax", losses, digests)
    assert found and all(line.startswith("step 2") for line in found), found


def test_calm_residuals_scales_each_blocks_last_batchnorm_alone():
    """The fixture's start: every bottleneck's bn3 scale times CALM_SCALE, every other tensor as drawn."""
    state = random_state_dict(0, classes=7)
    calm = parity_torch.calm_residuals(state)
    scaled = [name for name in state if name.endswith(".bn3.weight")]
    assert len(scaled) == 16 and set(calm) == set(state)
    for name in state:
        expected = state[name] * np.float32(parity_torch.CALM_SCALE) if name in scaled else state[name]
        assert calm[name].dtype == state[name].dtype and np.array_equal(calm[name], expected), name
    assert np.array_equal(parity_torch.start_weights(None, 7, calm=True)["layer1.0.bn3.weight"],
                          calm["layer1.0.bn3.weight"])


def test_the_digest_is_a_count_sketch_of_each_change_with_its_norms_and_decay_component():
    """Each change's digest: PROJECTIONS sums of its elements with random signs (a count sketch: linear, one +-1
    entry per element, the same for every step of a tensor and seeded by its name), whose difference estimates the
    L2 difference of two changes; then |delta|, its component along the start and |start|, exactly."""
    k = parity_torch.PROJECTIONS
    rng = np.random.default_rng(5)
    start, a, b = (rng.standard_normal(3000) for _ in range(3))
    rows = parity_torch.projection_digests("w", [a, b, a + b, np.eye(3000)[17]], start)
    assert np.allclose(rows[2][:k], rows[0][:k] + rows[1][:k])  # linear
    one_hot = rows[3][:k]
    assert np.count_nonzero(one_hot) == 1 and abs(one_hot.sum()) == 1.0
    np.testing.assert_allclose(rows[0][k:], [np.linalg.norm(a), a @ start / np.linalg.norm(start),
                                             np.linalg.norm(start)])
    assert np.array_equal(parity_torch.projection_digests("w", [a], start)[0], rows[0])  # drawn from the name
    assert not np.array_equal(parity_torch.projection_digests("v", [a], start)[0][:k], rows[0][:k])
    # The sketch of a difference keeps its squared norm in expectation: over 300 names, within 10%.
    other = a + 0.1 * rng.standard_normal(3000)
    squares = [np.sum((d[0][:k] - d[1][:k]) ** 2) for d in
               (parity_torch.projection_digests(f"t{i}", [a, other], start) for i in range(300))]
    assert abs(np.mean(squares) / np.sum((a - other) ** 2) - 1) < 0.1


def test_one_ulp_away_moves_every_float_by_exactly_one_ulp():
    """The bench's floor side torch_ulp starts from this: every float32 element one representable value up or down
    (both directions drawn), integers untouched."""
    rng = np.random.default_rng(3)
    state = {"w": (rng.standard_normal((64, 32)) * 10.0 ** rng.integers(-8, 3, (64, 32))).astype(np.float32),
             "zero": np.zeros(40, np.float32), "num_batches_tracked": np.array(7, np.int64)}
    moved = parity_torch.one_ulp_away(state)
    for name in ("w", "zero"):
        step = np.abs(moved[name].astype(np.float64) - state[name].astype(np.float64))
        # np.spacing(x) is the gap above |x|; at a power of two the gap below is half of it.
        up = np.spacing(np.abs(state[name])).astype(np.float64)
        assert np.all((step == up) | (step == up / 2)), name
        assert moved[name].dtype == np.float32
        assert 0 < np.mean(moved[name] > state[name]) < 1, name
    assert moved["num_batches_tracked"] == 7 and moved["num_batches_tracked"].dtype == np.int64


def test_with_new_fc_draws_the_classifier_alone_anew():
    """--new-fc: torch.nn.Linear's initialisation (uniform within 1 / sqrt(fan_in)) for fc, seeded; the rest kept."""
    state = random_state_dict(0, classes=7)
    new = parity_torch.with_new_fc(state)
    bound = 1 / np.sqrt(state["fc.weight"].shape[1])
    assert set(new) == set(state)
    for name in state:
        if name.startswith("fc."):
            assert new[name].shape == state[name].shape and new[name].dtype == np.float32
            assert not np.array_equal(new[name], state[name])
            assert np.abs(new[name]).max() <= bound
        else:
            assert new[name] is state[name], name
    assert np.abs(new["fc.weight"]).max() > 0.99 * bound  # 14,336 uniform draws reach the bound's last percent
    assert np.array_equal(parity_torch.with_new_fc(state)["fc.weight"], new["fc.weight"])


def test_a_resync_step_is_compared_from_pytorchs_state_before_it(tmp_path):
    """--resync: a side that takes each step from PyTorch's state is judged on that step alone. Its update is its
    state after step k minus PyTorch's after step k-1, against PyTorch's own step; a free side's is measured from
    its start. Synthetic states with known errors: e_k on the resync side, carried errors on the free one."""
    rng = np.random.default_rng(0)
    steps = 3
    torch_states = [{"w": rng.standard_normal(50).astype(np.float32)}]
    for _ in range(steps):
        torch_states.append({"w": torch_states[-1]["w"] + rng.standard_normal(50).astype(np.float32)})
    errors = [np.zeros(50, np.float32)] + [rng.standard_normal(50).astype(np.float32) * 1e-3 * k
                                           for k in range(1, steps + 1)]
    resync = [s | {"w": s["w"] + e} for s, e in zip(torch_states, errors, strict=True)]
    sides = {"torch": torch_states, "ms_resync": resync}
    # the free side: every error carried on (its step k is PyTorch's plus the sum of errors so far)
    sides["ms"] = [s | {"w": s["w"] + sum(errors[:k + 1])} for k, s in enumerate(torch_states)]
    for side, states in sides.items():
        for k, state in enumerate(states):
            np.savez(tmp_path / f"{side}_step{k:03d}.npz", **state)
        np.save(tmp_path / f"{side}_losses.npy", np.arange(1.0, steps + 1))
    cfg = argparse.Namespace(steps=steps, batch_size=6, image_size=32)
    results = parity_torch.compare_stage("softmax", cfg, str(tmp_path), {}, ("ms", "ms_resync"))
    for k in range(1, steps + 1):
        update = torch_states[k]["w"] - torch_states[k - 1]["w"]
        resynced, free = results["ms_resync"]["per_step"][k - 1], results["ms"]["per_step"][k - 1]
        expected = np.abs(errors[k]).max() / np.abs(update).max()
        assert resynced["rel_update_diff"] == pytest.approx(expected, rel=1e-5)
        carried = np.abs(sum(errors[1:k + 1])).max() / np.abs(torch_states[k]["w"] - torch_states[0]["w"]).max()
        assert free["rel_update_diff"] == pytest.approx(carried, rel=1e-5)
    assert results["ms_resync"]["max_rel_step_update_diff"] == max(
        r["rel_update_diff"] for r in results["ms_resync"]["per_step"])
    table = parity_torch.markdown({"softmax": results["ms_resync"] | {"torch_native_resync": results["ms_resync"]}},
                                  "header", parity_torch.RESYNC[1:])
    assert "worst step: max rel diff of the step's update" in table and "step 1:" not in table


@pytest.mark.parametrize("argv, message", [
    (["--pretrain-steps", "0"], "--pretrain-steps must be at least 1, got 0"),
    (["--resync", "--write-fixture", "f.npz"], "--resync does not apply to --write-fixture"),
    (["--set", "lr_maximum=0.03"], "--set: override: unknown key 'lr_maximum'"),
    (["--float64", "--resync"], "--float64 is a floor of the free runs: not with --resync or --write-fixture"),
])
def test_bad_arguments_stop_before_any_run(argv, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        parity_torch.parse_args(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_the_table_gives_each_floor_a_value_in_every_cell_in_the_order_it_names_them():
    """--float64 adds PyTorch in float64 as a third floor: each cell holds ours, then every floor, in the order the
    cell line names them."""
    floors = parity_torch.FLOORS + (parity_torch.FLOAT64,)
    keys = ("step1_rel_loss_diff", "step1_rel_param_diff", "max_rel_loss_diff", "max_rel_param_diff")

    def run(value):
        return {key: value for key in keys} | {"first_parting": {"step": round(value * 1e4), "what": "loss"}}

    values = {"ms": 1e-4, "torch_native": 2e-4, "torch_ulp": 3e-4, "torch_f64": 4e-4}
    results = {"softmax": run(values["ms"]) | {"steps": 20, "batch_size": 60, "max_rel_param_diff_tensor": "fc.weight"}
               | {side: run(values[side]) for side in floors}}
    lines = parity_torch.markdown(results, "header", floors).splitlines()
    assert lines[2] == "Each cell: " + " / ".join(["ours against PyTorch"] + [parity_torch.FLOOR_CELLS[side]
                                                                              for side in floors]) + "."
    row = next(line for line in lines if line.startswith("| softmax"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[3:6] == ["1.0e-04 / 2.0e-04 / 3.0e-04 / 4.0e-04"] * 3
    assert cells[6] == "1.0e-04 / 2.0e-04 / 3.0e-04 / 4.0e-04 (fc.weight)"
    assert cells[7] == "1 (loss) / 2 (loss) / 3 (loss) / 4 (loss)"
