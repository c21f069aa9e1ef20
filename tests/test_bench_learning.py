"""The learning benchmark's bookkeeping: parsing the entry points' output, the table, checkpoints, the plot.

The benchmark itself trains for half an hour; these tests check what turns its runs into the published
table and picture, on values made up here.
"""

import cv2
import numpy as np
import pytest

from bench import bench_learning


def test_metrics_are_read_from_eval_and_baseline_output():
    text = ("recall@1        0.4702\nrecall@10       0.8000\nmap@r           0.2187\nr_precision  0.3\n"
            "eval_recall: 0.4702\n")
    assert bench_learning.parse_metrics(text) == {"recall@1": 0.4702, "map@r": 0.2187}
    with pytest.raises(ValueError, match="no eval_recall"):
        bench_learning.parse_metrics("recall@1 0.5\n")


def test_stage_checkpoints_are_found_by_epoch(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for name in ("resnet50_softmax-2_76.ckpt", "resnet50_softmax-10_380.ckpt", "resnet50_softmax-best.ckpt",
                 "resnet50_triplet-1_5.ckpt"):
        (ckpt / name).write_bytes(b"")
    found = bench_learning.stage_checkpoints(str(tmp_path), "softmax")
    assert list(found) == [2, 10] and found[10].endswith("resnet50_softmax-10_380.ckpt")


def history(epochs, recall0):
    return [{"epoch": str(e), "mean_loss": f"{5 - e:.7f}", "lr": "0.0100000", "images_per_s": "80.0",
             "recall_at_1": f"{recall0 + 0.05 * e:.4f}", "map_at_r": f"{(recall0 + 0.05 * e) / 2:.4f}"}
            for e in range(1, epochs + 1)]


BASELINES = {"raw pixels (8x8 RGB)": {"recall@1": 0.3649, "map@r": 0.1099},
             "untrained backbone": {"recall@1": 0.15, "map@r": 0.06}}


def test_table_has_the_baselines_and_one_row_per_stage_epoch():
    stages = {"softmax": history(3, 0.2), "quadruplet": history(2, 0.35)}
    analysis = {"softmax": {1: {"train_accuracy": 0.1, "train_recall@1": 0.3},
                            2: {"train_accuracy": 0.5, "train_recall@1": 0.6, "weight_change": 0.25}},
                "quadruplet": {2: {"weight_change": 0.125}}}
    table = bench_learning.markdown(BASELINES, stages, analysis, "header").splitlines()
    assert table[0] == "header"
    assert "| raw pixels (8x8 RGB) | 0.3649 | 0.1099 |" in table
    rows = [line for line in table if line.startswith(("| softmax |", "| quadruplet |"))]
    assert len(rows) == 5
    assert rows[1] == ("| softmax | 2 | 3.0000000 | 0.0100000 | 0.3000 | 0.1500 | 0.5000 | 0.6000 | 0.2500 "
                       "| 80.0 |")
    assert rows[0].split(" | ")[8] == ""  # no weight change before the first epoch's checkpoint
    assert rows[3].startswith("| quadruplet | 1 | 4.0000000 |") and rows[3].endswith("|  |  |  | 80.0 |")
    assert rows[4].endswith("|  |  | 0.1250 | 80.0 |")


def test_weight_change_is_relative_to_the_previous_epoch(tmp_path):
    ms = pytest.importorskip("mindspore")
    paths = {}
    for epoch, scale in ((1, 1.0), (2, 1.5), (3, 1.5)):
        weights = {"conv1.weight": np.full((2, 2), 2.0 * scale, np.float32), "bn1.gamma": np.full(2, scale, np.float32),
                   "bn1.moving_mean": np.full(2, 100.0 * epoch, np.float32),  # statistics are not weights
                   "moments.conv1.weight": np.full((2, 2), 7.0 * epoch, np.float32), "fc.weight": np.eye(2) * epoch}
        paths[epoch] = str(tmp_path / f"e{epoch}.ckpt")
        ms.save_checkpoint([{"name": k, "data": ms.Tensor(v.astype(np.float32))} for k, v in weights.items()],
                           paths[epoch])
    assert bench_learning.weight_changes(paths) == {2: pytest.approx(0.5), 3: 0.0}
    assert bench_learning.weight_changes({2: paths[2]}, start=paths[1]) == {2: pytest.approx(0.5)}


def test_plot_draws_stages_and_baselines(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "learning.png"
    bench_learning.plot(BASELINES, {"softmax": history(4, 0.2), "triplet": history(2, 0.4)}, str(path), "t")
    picture = cv2.imread(str(path))
    assert picture.shape == (420, 1100, 3)
    blue = np.array([180, 119, 31])  # tab:blue (BGR), the softmax curve
    assert (np.abs(picture.astype(int) - blue).max(axis=2) < 30).sum() > 100


def test_training_sample_takes_whole_classes_like_the_test_set():
    labels = np.repeat(np.arange(20), 4)
    chosen = bench_learning.training_sample(labels, 5)
    assert len(chosen) == 20 and len(np.unique(labels[chosen])) == 5
    assert all(np.sum(labels[chosen] == c) == 4 for c in np.unique(labels[chosen]))  # every view of a class
    assert np.array_equal(chosen, bench_learning.training_sample(labels, 5))  # seeded


def test_seed_table_has_each_seeds_gain_and_their_mean():
    per_seed = {seed: bench_learning.seed_result(history(2, s), history(3, r))
                for seed, s, r in ((1, 0.40, 0.41), (2, 0.30, 0.35))}
    assert per_seed[1] == {"softmax": {"recall@1": 0.5, "map@r": 0.25}, "recipe": {"recall@1": 0.56, "map@r": 0.28}}
    lines = bench_learning.seeds_markdown(per_seed).splitlines()
    assert "| 1 | 0.5000 | 0.2500 | 0.5600 | 0.2800 | +0.0600 | +0.0300 |" in lines
    assert "| 2 | 0.4000 | 0.2000 | 0.5000 | 0.2500 | +0.1000 | +0.0500 |" in lines
    assert lines[-1] == "| mean | 0.4500 | 0.2250 | 0.5300 | 0.2650 | +0.0800 | +0.0400 |"
