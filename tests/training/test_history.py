"""history.csv written by its callback (fake run contexts), kept on resume, read back, and drawn."""
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from src.training.history import COLUMNS, HistoryWriter, format_history, main, plot_history, read_history


class FakeMonitor:
    def __init__(self):
        self.epoch_summary = None


class FakeEvaluator:
    def __init__(self):
        self.last = None


def context(epoch):
    return SimpleNamespace(original_args=lambda: SimpleNamespace(cur_epoch_num=epoch))


def finish_epoch(writer, monitor, evaluator, epoch, evaluated):
    monitor.epoch_summary = {"epoch": epoch, "mean_loss": f"{5.0 / epoch:.7f}", "lr": f"{0.1 / epoch:.7f}",
                             "images_per_s": f"{30 + epoch:.1f}"}
    if evaluated:
        evaluator.last = {"epoch": epoch, "recall_at_1": f"{0.1 * epoch:.4f}", "map_at_r": f"{0.05 * epoch:.4f}"}
    writer.on_train_epoch_end(context(epoch))


def test_rows_follow_the_epochs_and_leave_recall_empty_without_an_evaluation(tmp_path):
    path = tmp_path / "history.csv"
    monitor, evaluator = FakeMonitor(), FakeEvaluator()
    writer = HistoryWriter(str(path), monitor, evaluator)
    for epoch in (1, 2, 3):
        finish_epoch(writer, monitor, evaluator, epoch, evaluated=epoch != 2)
        assert len(read_history(path)) == epoch  # complete after every epoch
    assert path.read_text().splitlines() == [
        ",".join(COLUMNS),
        "1,5.0000000,0.1000000,31.0,0.1000,0.0500",
        "2,2.5000000,0.0500000,32.0,,",  # epoch 1's evaluation is not carried over
        "3,1.6666667,0.0333333,33.0,0.3000,0.1500"]
    assert os.listdir(tmp_path) == ["history.csv"]  # no temporary file left


def test_a_resumed_run_keeps_earlier_epochs_and_replaces_later_ones(tmp_path):
    path = tmp_path / "history.csv"
    monitor, evaluator = FakeMonitor(), FakeEvaluator()
    writer = HistoryWriter(str(path), monitor, None)
    for epoch in (1, 2, 3):
        finish_epoch(writer, monitor, evaluator, epoch, evaluated=False)
    resumed = HistoryWriter(str(path), monitor, None, start_epoch=2)  # resumed from epoch 2's checkpoint
    monitor.epoch_summary = {"epoch": 3, "mean_loss": "9.0000000", "lr": "0.0100000", "images_per_s": "1.0"}
    resumed.on_train_epoch_end(context(3))
    assert [(r["epoch"], r["mean_loss"]) for r in read_history(path)] == [
        ("1", "5.0000000"), ("2", "2.5000000"), ("3", "9.0000000")]
    fresh = HistoryWriter(str(path), monitor, None)  # a new run (not resumed) starts the file again
    fresh.on_train_epoch_end(context(3))
    assert [r["epoch"] for r in read_history(path)] == ["3"]


def test_other_ranks_write_nothing(tmp_path):
    monitor = FakeMonitor()
    monitor.epoch_summary = {"epoch": 1, "mean_loss": "1.0", "lr": "0.1", "images_per_s": "1.0"}
    HistoryWriter(str(tmp_path / "history.csv"), monitor, enabled=False).on_train_epoch_end(None)
    assert os.listdir(tmp_path) == []


def test_a_foreign_csv_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "other.csv"
    bad.write_text("epoch,loss\n1,2\n")
    with pytest.raises(ValueError, match="other.csv: expected the columns epoch,mean_loss"):
        read_history(bad)
    bad.write_text(",".join(COLUMNS) + "\nx,1,1,1,,\n")
    with pytest.raises(ValueError, match=r"other.csv:2: epoch 'x'"):
        read_history(bad)


def colour_pixels(image, rgb, tolerance=30):
    bgr = np.array(rgb[::-1], np.int32)
    return int((np.abs(image.astype(np.int32) - bgr).max(axis=2) < tolerance).sum())


TAB_BLUE, TAB_GREEN = (31, 119, 180), (44, 160, 44)


def test_plot_draws_the_loss_and_recall_curves(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [{"epoch": str(e), "mean_loss": f"{5 - e}", "lr": "0.1", "images_per_s": "1",
             "recall_at_1": f"{0.1 * e}" if e % 2 == 0 else "", "map_at_r": f"{0.05 * e}" if e % 2 == 0 else ""}
            for e in range(1, 7)]
    path = tmp_path / "history.csv"
    path.write_text(format_history(rows))
    main([str(path)])
    picture = cv2.imread(str(tmp_path / "history.png"))
    assert picture.shape == (400, 640, 3)
    assert colour_pixels(picture, TAB_BLUE) > 200 and colour_pixels(picture, TAB_GREEN) > 200
    loss_only = [dict(row, recall_at_1="", map_at_r="") for row in rows]
    plot_history(loss_only, str(tmp_path / "loss.png"))
    picture = cv2.imread(str(tmp_path / "loss.png"))
    assert colour_pixels(picture, TAB_BLUE) > 200 and colour_pixels(picture, TAB_GREEN) == 0
    with pytest.raises(ValueError, match="no epochs"):
        plot_history([], str(tmp_path / "empty.png"))
