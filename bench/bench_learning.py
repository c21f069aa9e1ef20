"""Does training learn? The recipe's two branches on a larger photo set, epoch by epoch, next to the
baselines that need no learning.

Usage:
  python bench/bench_learning.py [--output-dir DIR] [--markdown learning.md] [--plot learning.png]
  python bench/bench_learning.py --quick        # tiny sizes, 1 epoch per stage: does it all run?

The data is built from the photos inside the scikit-image wheel (src/data/demo_photos.py, the demo's views
but more of them): 5 x 5 regions of each of the 19 photos are products, 5 per photo test products
(95, none seen in training), the other 380 training products; 10 views each at 32 px, turned by any
angle, half of them mirrored. Every stage is a real train.py run (--run_eval after every epoch, its
history.csv read back); every evaluation is Recall@1 and MAP@R over the test products:

  baselines: raw-pixel nearest neighbours (src/evaluation/baselines.py, best of 8/16/32 px, RGB and gray), the
             untrained backbone, BatchNorm statistics alone (the softmax batches at lr 0 for 1 epoch);
  softmax:   pre-training from scratch; after every epoch also the classification accuracy and the
             retrieval Recall@1 on a sample of the *training* products shaped like the test set (as
             many products, all their views: learning vs memorising), and the relative change of the
             backbone's weights since the epoch before;
  triplet / quadruplet: the seed's fine-tuning from the softmax stage's final checkpoint (and the same weight
             change, the first epoch's measured from that checkpoint);
  quadruplet-anchor: the fine-tuning recipe from the same checkpoint (the hinge per anchor, lr 0.03, cosine);
  seeds 2, 3: softmax from scratch and the recipe from its end point again, for the per-seed gain table.

The table and the plot (Recall@1 and MAP@R against epoch, baselines as lines) go to --markdown and --plot.
Took 84 min (5042 s) on 2 idle cores of an AMD EPYC with AVX-512, 3 seeds (bench/results/learning_results.md).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import functools
import os
import re
import subprocess
import sys
import time

import numpy as np

from bench import common
from bench.common import ROOT

DATA = {"grid": 5, "test_regions": 5, "views": 10, "size": 32, "rotation": 180.0, "flip": True}
QUICK_DATA = {"grid": 2, "test_regions": 1, "views": 4, "size": 32, "rotation": 180.0, "flip": True,
              "photos": ("astronaut", "coffee", "chelsea", "rocket")}
AUGMENT = ["--hflip", "true", "--crop_scale_min", "0.25"]
RECIPE, RECIPE_EPOCHS, RECIPE_LR = "quadruplet-anchor", 6, "0.03"
# Stage recipes (train.py options besides data, eval and checkpoints). The softmax one is the demo's with
# more epochs; fine-tuning at the demo's lr 0.001, constant (the stage configs' schedule), as lr 0.01 lowered
# Recall@1 on the demo's set (docs/learning.md).
STAGES = {
    "bn_only": ("softmax", 1, ["--batch_size", "64", "--lr_init", "0", "--lr_max", "0", "--lr_end", "0"]),
    "softmax": ("softmax", 20, ["--batch_size", "64", "--lr_init", "0.02", "--lr_max", "0.2", "--warmup_epochs", "2",
                                "--lr_decay_mode", "cosine"]),
    "triplet": ("triplet", 6, ["--batch_size", "60", "--lr_max", "0.001"]),
    "quadruplet": ("quadruplet", 8, ["--batch_size", "60", "--samples_each_class", "5", "--lr_max", "0.001"]),
    # The fine-tuning recipe (docs/learning.md "Fine-tuning that adds to softmax"): the seed's quadruplet loss with its
    # hinge per anchor instead of once per batch, at 30x the rate, decayed to 0 along a cosine.
    RECIPE: ("quadruplet", RECIPE_EPOCHS, ["--batch_size", "60", "--samples_each_class", "5", "--mining", "anchor",
                                           "--lr_max", RECIPE_LR, "--lr_end", "0", "--lr_decay_mode", "cosine"]),
}
FINETUNE = ("triplet", "quadruplet", RECIPE)
QUICK_EPOCHS = {"bn_only": 1, "softmax": 2, "triplet": 1, "quadruplet": 1, RECIPE: 1}
QUICK_STAGE_OPTIONS = {"quadruplet": ["--samples_each_class", "2", "--batch_size", "4"],
                       RECIPE: ["--samples_each_class", "2", "--batch_size", "4"],
                       "triplet": ["--batch_size", "6"], "softmax": ["--batch_size", "8"],
                       "bn_only": ["--batch_size", "8"]}


log = functools.partial(common.log, "bench_learning")


def run(args, log_path):
    """Run a command with its output in log_path; a failure raises naming the log's last lines."""
    env = common.child_env(GLOG_v=os.environ.get("GLOG_v", "2"))
    with open(log_path, "w") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    with open(log_path) as f:
        text = f.read()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed (exit {proc.returncode}); last lines of {log_path}:\n"
                           + "\n".join(text.splitlines()[-15:]))
    return text


def parse_metrics(text):
    """{recall@1, map@r} from the output of eval.py or src.evaluation.baselines."""
    recall = re.search(r"^eval_recall: ([0-9.]+)$", text, re.M)
    map_r = re.search(r"^map@r\s+([0-9.]+)$", text, re.M)
    if not recall or not map_r:
        raise ValueError("no eval_recall / map@r line in the output")
    return {"recall@1": float(recall.group(1)), "map@r": float(map_r.group(1))}


def eval_options(data, size):
    """eval.py's options for the test products of `data` at `size` px (the first six: src.evaluation.baselines')."""
    return ["--dataset_path", data, "--eval_list", "test.txt", "--recall_ks", "1,10", "--image_size", str(size),
            "--eval_batch_size", "64"]


def untrained_baselines(out, data, size):
    """{name: {recall@1, map@r}} on the test products of what needs no training: the best raw-pixel nearest
    neighbours and the untrained backbone (logs in `out`)."""
    options = eval_options(data, size)
    log("raw-pixel baseline")
    text = run([sys.executable, "-m", "src.evaluation.baselines", *options[:6]], os.path.join(out, "raw_pixels.log"))
    best = re.search(r"^best: raw pixels (.+)$", text, re.M).group(1)
    baselines = {f"raw pixels ({best})": parse_metrics(text)}
    log("untrained backbone")
    text = run([sys.executable, os.path.join(ROOT, "eval.py"), "--random_init", *options],
               os.path.join(out, "untrained.log"))
    baselines["untrained backbone"] = parse_metrics(text)
    return baselines


def read_list(data, name):
    from src.data.image_list import read_image_list

    return read_image_list(os.path.join(data, name), data)


def stage_checkpoints(stage_dir, loss):
    """{epoch: path} of a stage's per-epoch checkpoints."""
    found = {}
    for name in os.listdir(os.path.join(stage_dir, "ckpt")):
        m = re.fullmatch(rf"resnet50_{loss}-(\d+)_\d+\.ckpt", name)
        if m:
            found[int(m.group(1))] = os.path.join(stage_dir, "ckpt", name)
    return dict(sorted(found.items()))


def stage_command(data, stage_dir, loss, epochs, options, image_size, ckpt=None, class_num=None,
                  train_list="train.txt", eval_list="test.txt", eval_interval=1):
    """The train.py command of one stage: its data, evaluations, per-epoch checkpoints and augmentation."""
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--loss_name", loss, "--dataset_path", data,
            "--train_list", train_list, "--output_dir", stage_dir, "--epoch_size", str(epochs),
            "--image_size", str(image_size), "--run_eval", "--eval_list", eval_list, "--eval_interval",
            str(eval_interval), "--eval_batch_size", "64", "--save_checkpoint_epochs", "1",
            "--keep_checkpoint_max", str(epochs), "--log_interval", "50", *AUGMENT, *options]
    if ckpt:
        args += ["--ckpt_path", ckpt]
    if class_num:
        args += ["--class_num", str(class_num)]
    return args


def train_stage(out, data, name, loss, epochs, options, image_size, ckpt=None, class_num=None):
    """Run train.py for one stage (skipped when its final checkpoint exists); returns (history rows, ckpts)."""
    from src.training.history import read_history

    stage_dir = os.path.join(out, name)
    done = os.path.isdir(os.path.join(stage_dir, "ckpt")) and epochs in stage_checkpoints(stage_dir, loss)
    if not done:
        log(f"{name}: {loss}, {epochs} epoch(s)")
        os.makedirs(stage_dir, exist_ok=True)
        run(stage_command(data, stage_dir, loss, epochs, options, image_size, ckpt, class_num),
            os.path.join(stage_dir, "train.log"))
    return read_history(os.path.join(stage_dir, "history.csv")), stage_checkpoints(stage_dir, loss)


def backbone_vector(ckpt):
    """The backbone's trainable weights (conv and BN scale/shift, not statistics or head) as one vector."""
    import mindspore as ms

    values = ms.load_checkpoint(ckpt)
    keys = sorted(k for k in values if not k.startswith(("moments.", "fc.", "head.")) and
                  k.endswith(("weight", "gamma", "beta")) and "." in k)
    return np.concatenate([values[k].asnumpy().ravel() for k in keys]).astype(np.float64)


def training_sample(labels, num_classes, seed=0):
    """Indices of all images of `num_classes` training classes drawn with `seed`: a sample shaped like the
    test set (as many classes, all their views), so that its Recall@1 compares with the test Recall@1."""
    classes = np.random.default_rng(seed).choice(np.unique(labels), min(num_classes, len(np.unique(labels))),
                                                 replace=False)
    return np.flatnonzero(np.isin(labels, classes))


def softmax_epoch_analysis(data, ckpts, class_num, image_size):
    """Per epoch: classification accuracy and retrieval Recall@1 on a test-shaped sample of the training
    products (training_sample), and the backbone's relative weight change since the previous epoch."""
    import mindspore as ms

    from src.data.dataset import create_dataset
    from src.evaluation.metrics import retrieval_metrics
    from src.models.resnet import resnet50

    images = read_list(data, "train.txt")
    sample = images.subset(training_sample(images.labels, read_list(data, "test.txt").num_classes))
    rows = {}
    for epoch, ckpt in ckpts.items():
        net = resnet50(class_num)
        ms.load_param_into_net(net, ms.load_checkpoint(ckpt))
        net.set_train(False)
        dataset = create_dataset(data, sample, 64, image_size, "eval", num_parallel_workers=2)
        logits, feats, labels = [], [], []
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            feature = net.backbone(image)
            feats.append(feature.asnumpy())
            logits.append(net.head(feature).asnumpy())
            labels.append(label.asnumpy())
        labels = np.concatenate(labels)
        accuracy = float(np.mean(np.concatenate(logits).argmax(1) == labels))
        train_recall = retrieval_metrics(np.concatenate(feats), labels, ks=(1,))["recall@1"]
        rows[epoch] = {"train_accuracy": accuracy, "train_recall@1": train_recall}
        log(f"softmax epoch {epoch}: training accuracy {accuracy:.4f}, training-image Recall@1 {train_recall:.4f}")
    return rows


def weight_changes(ckpts, start=None):
    """{epoch: |W_epoch - W_before| / |W_before|} of the backbone's weights, W_before being the previous
    epoch's checkpoint (for the first epoch: `start`, the checkpoint the stage began from, if given)."""
    changes, previous = {}, backbone_vector(start) if start else None
    for epoch, ckpt in ckpts.items():
        vector = backbone_vector(ckpt)
        if previous is not None:
            changes[epoch] = float(np.linalg.norm(vector - previous) / np.linalg.norm(previous))
        previous = vector
    return changes


def stage_plan(name, quick=False):
    """(loss, epochs, train.py options) of a stage of STAGES, shrunk for --quick."""
    loss, epochs, options = STAGES[name]
    return (loss, QUICK_EPOCHS[name], options + QUICK_STAGE_OPTIONS[name]) if quick else (loss, epochs, options)


def stage_end(rows):
    """{recall@1, map@r} after a stage's last epoch (its history rows)."""
    return {"recall@1": float(rows[-1]["recall_at_1"]), "map@r": float(rows[-1]["map_at_r"])}


def seed_result(softmax_rows, recipe_rows):
    """{softmax, recipe: {recall@1, map@r}} at the end of each stage of one seed's run."""
    return {"softmax": stage_end(softmax_rows), "recipe": stage_end(recipe_rows)}


def seeds_markdown(per_seed):
    """One row per seed: the softmax stage's end point, the recipe's fine-tuning from it, the gain; their means."""
    lines = [f"The fine-tuning recipe ({RECIPE}) from each seed's own softmax end point:", "",
             "| seed | softmax Recall@1 | softmax MAP@R | fine-tuned Recall@1 | fine-tuned MAP@R | gain Recall@1 | "
             "gain MAP@R |", "|---|---|---|---|---|---|---|"]
    gains = []
    for seed, result in per_seed.items():
        s, r = result["softmax"], result["recipe"]
        gains.append((r["recall@1"] - s["recall@1"], r["map@r"] - s["map@r"]))
        lines.append(f"| {seed} | {s['recall@1']:.4f} | {s['map@r']:.4f} | {r['recall@1']:.4f} | {r['map@r']:.4f} | "
                     f"{gains[-1][0]:+.4f} | {gains[-1][1]:+.4f} |")
    mean = {stage: {key: np.mean([res[stage][key] for res in per_seed.values()]) for key in ("recall@1", "map@r")}
            for stage in ("softmax", "recipe")}
    lines.append(f"| mean | {mean['softmax']['recall@1']:.4f} | {mean['softmax']['map@r']:.4f} | "
                 f"{mean['recipe']['recall@1']:.4f} | {mean['recipe']['map@r']:.4f} | "
                 f"{np.mean([g[0] for g in gains]):+.4f} | {np.mean([g[1] for g in gains]):+.4f} |")
    return "\n".join(lines) + "\n"


def markdown(baselines, stages, analysis, header):
    """The results as markdown: baselines, then one row per stage epoch."""
    lines = [header, "", "| what | Recall@1 | MAP@R |", "|---|---|---|"]
    lines += [f"| {name} | {m['recall@1']:.4f} | {m['map@r']:.4f} |" for name, m in baselines.items()]
    lines += ["", "| stage | epoch | mean loss | lr | Recall@1 | MAP@R | training accuracy | training-image "
              "Recall@1 | weight change | images/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, rows in stages.items():
        for row in rows:
            extra = analysis.get(name, {}).get(int(row["epoch"]), {})
            scored = ["" if extra.get(key) is None else f"{extra[key]:.4f}"
                      for key in ("train_accuracy", "train_recall@1", "weight_change")]
            lines.append(f"| {name} | {row['epoch']} | {row['mean_loss']} | {row['lr']} | {row['recall_at_1']} | "
                         f"{row['map_at_r']} | {' | '.join(scored)} | {row['images_per_s']} |")
    return "\n".join(lines) + "\n"


def plot(baselines, stages, path, title):
    """Recall@1 (solid) and MAP@R (dashed) against epochs of training; fine-tuning continues after softmax."""
    from src.training.history import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2), dpi=100, sharex=True)
    softmax_epochs = len(stages.get("softmax", []))
    colours = {"softmax": "tab:blue", "triplet": "tab:orange", "quadruplet": "tab:red", RECIPE: "tab:green"}
    for axis, key, column in ((axes[0], "recall@1", "recall_at_1"), (axes[1], "map@r", "map_at_r")):
        for (name, metrics), style in zip(baselines.items(), (":", "-.", "--", (0, (1, 3))), strict=False):
            axis.axhline(metrics[key], color="gray", linestyle=style, label=name)
        for name, rows in stages.items():
            offset = softmax_epochs if name in FINETUNE else 0
            xs = [offset + int(r["epoch"]) for r in rows if r[column]]
            ys = [float(r[column]) for r in rows if r[column]]
            if name in FINETUNE and "softmax" in stages:  # start from the softmax end point
                xs, ys = [softmax_epochs] + xs, [float(stages["softmax"][-1][column])] + ys
            axis.plot(xs, ys, "o-", color=colours.get(name, "black"), markersize=3, label=name)
        axis.set_xlabel("epoch (fine-tuning continues after the softmax epochs)")
        axis.set_ylabel({"recall@1": "Recall@1", "map@r": "MAP@R"}[key] + " on the unseen test products")
        axis.set_ylim(0, None)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench_learning_output"),
                        help="data, stage runs and logs (re-running reuses finished stages)")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--plot", help="write the PNG plot here")
    parser.add_argument("--quick", action="store_true", help="4 photos, 2 x 2 regions, 1-2 epochs per stage")
    parser.add_argument("--seeds", default=None,
                        help="comma list: the first seed runs every stage, the others softmax and the recipe "
                             "(default 1,2,3; with --quick 1)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3")).split(",")]
    from src.runtime.log import setup_logging

    setup_logging()
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    spec = QUICK_DATA if args.quick else DATA
    data = os.path.join(out, "data")
    start = time.monotonic()
    common.build_photo_set(data, **spec)
    size = spec["size"]
    train_list, test_list = read_list(data, "train.txt"), read_list(data, "test.txt")
    class_num = train_list.num_classes
    baselines = untrained_baselines(out, data, size)

    def epochs(name):
        return stage_plan(name, args.quick)[1]

    def options(name):
        return stage_plan(name, args.quick)[2]

    rows, _ = train_stage(out, data, "bn_only", "softmax", epochs("bn_only"), options("bn_only"), size,
                          class_num=class_num)
    baselines["BatchNorm statistics only (lr 0)"] = stage_end(rows)
    stages, ckpts = {}, {}
    stages["softmax"], ckpts["softmax"] = train_stage(out, data, "softmax", "softmax", epochs("softmax"),
                                                      options("softmax"), size, class_num=class_num)
    final_softmax = ckpts["softmax"][max(ckpts["softmax"])]
    for name in FINETUNE:
        stages[name], ckpts[name] = train_stage(out, data, name, STAGES[name][0], epochs(name), options(name), size,
                                                ckpt=final_softmax)
    per_seed = {seeds[0]: seed_result(stages["softmax"], stages[RECIPE])}
    for seed in seeds[1:]:  # the other seeds: softmax from scratch and the recipe from its end point
        seed_dir, seeded = os.path.join(out, f"seed{seed}"), ["--seed", str(seed)]
        softmax_rows, softmax_ckpts = train_stage(seed_dir, data, "softmax", "softmax", epochs("softmax"),
                                                  options("softmax") + seeded, size, class_num=class_num)
        recipe_rows, _ = train_stage(seed_dir, data, RECIPE, STAGES[RECIPE][0], epochs(RECIPE),
                                     options(RECIPE) + seeded, size, ckpt=softmax_ckpts[max(softmax_ckpts)])
        per_seed[seed] = seed_result(softmax_rows, recipe_rows)
    log("softmax epochs: training-image accuracy; every stage: weight change per epoch")
    analysis = {"softmax": softmax_epoch_analysis(data, ckpts["softmax"], class_num, size)}
    for name, changes in [("softmax", weight_changes(ckpts["softmax"]))] + \
            [(name, weight_changes(ckpts[name], final_softmax)) for name in FINETUNE]:
        for epoch, change in changes.items():
            analysis.setdefault(name, {}).setdefault(epoch, {})["weight_change"] = change

    header = (f"{common.machine_and_date()}; {class_num} training products "
              f"({len(train_list)} images), {test_list.num_classes} test products "
              f"({len(test_list)} images), {size} px; {time.monotonic() - start:.0f} s in all")
    table = markdown(baselines, stages, analysis, header) + "\n" + seeds_markdown(per_seed)
    print(table)
    if args.markdown:
        common.write_report(args.markdown, table)
    plot(baselines, stages, args.plot or os.path.join(out, "learning.png"), header)


if __name__ == "__main__":
    main()
