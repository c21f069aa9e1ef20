"""Training history: one row per epoch in `<output_dir>/history.csv`, and its picture.

Columns: epoch, mean_loss, lr (the epoch's last step), images_per_s, recall_at_1 and map_at_r
(empty in epochs without an evaluation, i.e. without --run_eval or between eval_interval). The values
are the strings the training log prints, so the file and the log agree digit for digit. The file is
rewritten whole after every epoch (temporary file + rename): a crash leaves the previous epoch's
complete file. A resumed run keeps the rows of the epochs it resumes after and replaces the rest.

    python -m src.training.history OUTPUT_DIR/history.csv [--output OUTPUT_DIR/history.png]

draws mean loss and Recall@1 against epoch.
"""
import csv
import io
import os

from mindspore.train import Callback

from src.runtime.atomic_file import write_atomic
from src.runtime.log import get_logger
from src.training.sink_mode import finished_epoch

logger = get_logger()

COLUMNS = ("epoch", "mean_loss", "lr", "images_per_s", "recall_at_1", "map_at_r")
FILE_NAME = "history.csv"


def read_history(path):
    """The rows of a history.csv as dicts of strings, checking the header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(COLUMNS)}, got {reader.fieldnames}")
        rows = list(reader)
    for number, row in enumerate(rows, start=2):
        if not row["epoch"].isdigit():
            raise ValueError(f"{path}:{number}: epoch {row['epoch']!r} is not a positive integer")
    return rows


def format_history(rows):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: row.get(key, "") for key in COLUMNS})
    return out.getvalue()


class HistoryWriter(Callback):
    """After every epoch, append the epoch's row (from the TrainMonitor and the EvalCallback, which
    run before it) and rewrite the file. `start_epoch`: rows of earlier epochs in an existing file are
    kept (a resumed run), later ones dropped."""

    def __init__(self, path, monitor, evaluator=None, start_epoch=0, enabled=True, plan=None):
        super().__init__()
        self.plan = plan
        self.path = path
        self.monitor = monitor
        self.evaluator = evaluator
        self.enabled = enabled
        self.rows = []
        if enabled and start_epoch and os.path.exists(path):
            self.rows = [row for row in read_history(path) if int(row["epoch"]) <= start_epoch]

    def on_train_epoch_end(self, run_context):
        if not self.enabled or finished_epoch(run_context, self.plan) is None:
            return
        row = dict(self.monitor.epoch_summary)
        last_eval = self.evaluator.last if self.evaluator is not None else None
        if last_eval and last_eval["epoch"] == row["epoch"]:
            row.update(recall_at_1=last_eval["recall_at_1"], map_at_r=last_eval["map_at_r"])
        self.rows.append(row)
        write_atomic(self.path, format_history(self.rows))


def _numbers(rows, key):
    """(epochs, values) of the rows where `key` has a value."""
    pairs = [(int(row["epoch"]), float(row[key])) for row in rows if row[key] not in ("", None)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Lay out `fig`, write it to `path` as a PNG atomically, and close it."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    write_atomic(path, buffer.getvalue())


def plot_history(rows, output, title=None):
    """Mean loss (left axis) and Recall@1 / MAP@R (right axis, when evaluated) against epoch, as a PNG."""
    plt = pyplot()
    if not rows:
        raise ValueError("the history holds no epochs to draw")
    fig, loss_axis = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    epochs, losses = _numbers(rows, "mean_loss")
    loss_axis.plot(epochs, losses, "o-", color="tab:blue", label="mean loss")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("mean training loss", color="tab:blue")
    handles = loss_axis.get_lines()
    eval_epochs, recalls = _numbers(rows, "recall_at_1")
    if eval_epochs:
        metric_axis = loss_axis.twinx()
        _, maps = _numbers(rows, "map_at_r")
        metric_axis.plot(eval_epochs, recalls, "s-", color="tab:green", label="Recall@1")
        metric_axis.plot(eval_epochs, maps, "^--", color="tab:olive", label="MAP@R")
        metric_axis.set_ylabel("Recall@1, MAP@R", color="tab:green")
        metric_axis.set_ylim(0, 1)
        handles = handles + metric_axis.get_lines()
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="upper right")
    loss_axis.grid(alpha=0.3)
    if title:
        loss_axis.set_title(title)
    save_figure(fig, output)


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m src.training.history",

                                     description="Draw a training run's history.csv (mean loss and Recall@1 "
                                     "against epoch) as a PNG.")
    parser.add_argument("history", help="history.csv written by train.py in its --output_dir")
    parser.add_argument("--output", default=None, help="PNG to write (default: history.png beside the csv)")
    parser.add_argument("--title", default=None, help="title above the plot (default: the csv's folder)")
    args = parser.parse_args(argv)
    output = args.output or os.path.join(os.path.dirname(os.path.abspath(args.history)), "history.png")
    rows = read_history(args.history)
    plot_history(rows, output, args.title or os.path.basename(os.path.dirname(os.path.abspath(args.history))))
    print(f"drew {len(rows)} epochs of {args.history} into {output}")


if __name__ == "__main__":
    from src.runtime.cli import run

    run(main)
