"""Why the seed's fine-tuning does not add to softmax, and what does: fine-tuning variants, one thing changed at a
time, all from the same softmax end point.

Usage:
  python bench/bench_finetune.py [--output-dir DIR] [--markdown finetune.md] [--variants a,b,...]
  python bench/bench_finetune.py --quick        # tiny sizes, 1 epoch per variant: does it all run?

The data and the start are bench/bench_learning.py's (seed 1): its photo set and its 20-epoch softmax stage.
The output directory has bench_learning's layout, so --output-dir pointing at a bench_learning run reuses its
data, its softmax stage and the variants it already ran (quadruplet, quadruplet-anchor, triplet). Every variant
is a real train.py run from the softmax stage's final checkpoint, evaluated on the test products after every
epoch; the table gives Recall@1 after each epoch, MAP@R at the end and the change from the start.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import os
import time

from bench import bench_learning as learning
from bench import common


def with_option(options, key, value):
    """train.py options with `key`'s value replaced (or the pair appended)."""
    if key in options:
        i = options.index(key)
        return options[:i + 1] + [value] + options[i + 2:]
    return options + [key, value]


_, _RECIPE_EPOCHS, _RECIPE_OPTIONS = learning.STAGES[learning.RECIPE]
_ANCHOR_01 = with_option(_RECIPE_OPTIONS, "--lr_max", "0.01")
_BATCH_01 = with_option(_ANCHOR_01, "--mining", "batch")
# name: (what it asks, loss, epochs, train.py options). bench_learning's stages keep their names (reused).
VARIANTS = {
    "quadruplet": ("the seed's: the hinge once per batch, lr 0.001 constant", *learning.STAGES["quadruplet"]),
    "quadruplet-batch-lr0.01": ("is it the rate? the seed's mining at 10x, cosine", "quadruplet", 6, _BATCH_01),
    "quadruplet-anchor-lr0.01": ("is it the mining? the hinge per anchor at lr 0.01, cosine", "quadruplet",
                                 _RECIPE_EPOCHS, _ANCHOR_01),
    learning.RECIPE: ("the recipe: the hinge per anchor at lr 0.03, cosine", *learning.STAGES[learning.RECIPE]),
    "quadruplet-anchor-frozen-bn": ("the recipe with BatchNorm frozen (moving statistics used and kept)",
                                    "quadruplet", _RECIPE_EPOCHS, with_option(_RECIPE_OPTIONS, "--freeze_bn", "true")),
    "quadruplet-anchor-k2": ("the recipe on 30 products x 2 images a batch (the seed's triplet-like layout)",
                             "quadruplet", _RECIPE_EPOCHS, with_option(_RECIPE_OPTIONS, "--samples_each_class", "2")),
    "softmax-continued": ("the control: the same budget spent on more softmax (lr 0.03, cosine, batch 60, a new "
                          "classifier head as every stage from a checkpoint)",
                          "softmax", _RECIPE_EPOCHS,
                          ["--batch_size", "60", "--lr_max", "0.03", "--lr_end", "0", "--lr_decay_mode", "cosine"]),
    "triplet": ("the seed's other loss: random triplets, lr 0.001 constant", *learning.STAGES["triplet"]),
}
QUICK_OPTIONS = {"quadruplet": ["--samples_each_class", "2", "--batch_size", "4"], "triplet": ["--batch_size", "6"],
                 "softmax": ["--batch_size", "8"]}


def ensure_start(out, quick):
    """bench_learning's data and softmax stage (seed 1) in `out`, trained if missing; (data dir, class_num,
    softmax history rows, final softmax checkpoint)."""
    data = os.path.join(out, "data")
    spec = learning.QUICK_DATA if quick else learning.DATA
    common.build_photo_set(data, **spec)
    class_num = learning.read_list(data, "train.txt").num_classes
    loss, epochs, options = learning.stage_plan("softmax", quick)
    rows, ckpts = learning.train_stage(out, data, "softmax", loss, epochs, options, spec["size"],
                                       class_num=class_num)
    return data, class_num, rows, ckpts[max(ckpts)]


def end_metrics(rows):
    """(Recall@1, MAP@R) after a stage's last epoch."""
    end = learning.stage_end(rows)
    return end["recall@1"], end["map@r"]


def markdown(header, start_rows, results):
    """The start, then one row per variant: Recall@1 after each epoch, MAP@R at the end, the change."""
    r0, m0 = end_metrics(start_rows)
    lines = [header, "", f"From the softmax stage's end point: Recall@1 {r0:.4f}, MAP@R {m0:.4f}.", "",
             "| variant | what it asks | Recall@1 after each epoch | MAP@R at the end | change Recall@1 | "
             "change MAP@R |", "|---|---|---|---|---|---|"]
    for name, (question, rows) in results.items():
        r, m = end_metrics(rows)
        curve = ", ".join(f"{float(row['recall_at_1']):.4f}" for row in rows if row["recall_at_1"])
        lines.append(f"| {name} | {question} | {curve} | {m:.4f} | {r - r0:+.4f} | {m - m0:+.4f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(common.ROOT, "bench_learning_output"),
                        help="bench_learning's output directory (re-running reuses its data, stages and variants)")
    parser.add_argument("--markdown", help="write the table here")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of variants to run")
    parser.add_argument("--quick", action="store_true", help="bench_learning's tiny set, 1 epoch per variant")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    from src.runtime.log import setup_logging

    setup_logging()
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    start = time.monotonic()
    data, class_num, start_rows, start_ckpt = ensure_start(out, args.quick)
    size = (learning.QUICK_DATA if args.quick else learning.DATA)["size"]
    results = {}
    for name in names:
        question, loss, epochs, options = VARIANTS[name]
        if args.quick:
            epochs, options = 1, options + QUICK_OPTIONS[loss]
        rows, _ = learning.train_stage(out, data, name, loss, epochs, options, size, ckpt=start_ckpt,
                                       class_num=class_num if loss == "softmax" else None)
        results[name] = (question, rows)
    header = (f"{common.machine_and_date()}; bench_learning's set (seed 1); {time.monotonic() - start:.0f} s "
              f"(stages already run are reused)")
    table = markdown(header, start_rows, results)
    print(table)
    if args.markdown:
        common.write_report(args.markdown, table)


if __name__ == "__main__":
    main()
