"""Every loss compared fairly: the protocol of Musgrave et al. ("A Metric Learning Reality Check", ECCV 2020),
scaled to 2 CPU cores.

Usage:
  python bench/bench_losses.py [--output-dir DIR] [--markdown losses.md] [--plot losses.png] [--json OUT]
                               [--losses softmax,triplet,...] [--seeds 1,2,3]
  python bench/bench_losses.py --quick        # tiny sizes, one candidate per loss, one seed: does it all run?

The data is bench/bench_learning.py's (380 training and 95 test products of the photos inside the
scikit-image wheel, 10 views each, 32 px). What is the same for every loss:
  - the start: one softmax pre-training from scratch on the *fit* classes (3/4 of the training classes),
    the backbone every run starts from (the seed's recipe starts fine-tuning from a softmax checkpoint);
  - the embedding: the seed's, global average pooling of ResNet-50's last feature map (2048-d), no extra layer;
  - the image budget: EPOCHS passes over the run's training list (every sampler draws about one pass an epoch),
    batch 60, momentum SGD with the configs' weight decay, cosine decay from the run's lr to 0;
  - the evaluation: Recall@1 and MAP@R (eval.py's) after the last epoch.
Hyper-parameters are chosen on a validation split of the *training* classes, never the test classes: every
candidate of a loss (SEARCH) trains on the fit classes and is evaluated on the other quarter of the training
classes (val.txt); the one with the best MAP@R (then Recall@1) is then trained on all training classes with each
seed and evaluated on the test products. Baselines beside them: raw pixels, the untrained backbone, the start.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import functools
import json
import os
import shutil
import sys
import time

import numpy as np

from bench import bench_learning as learning
from bench import common
from bench.common import ROOT

LOSSES = ("softmax", "triplet", "quadruplet", "arcmargin", "multisimilarity", "proxyanchor", "normsoftmax",
          "npairs", "eml")
CLASS_LOSSES = ("softmax", "arcmargin", "proxyanchor", "normsoftmax")  # with class weights / proxies: class_num
VALIDATION_FRACTION = 0.25
# Sized for the 90 minutes the comparison may take on 2 cores (about 100 s a selection run, 120 s a final run).
EPOCHS, QUICK_EPOCHS = 2, 1
PRETRAIN_EPOCHS, QUICK_PRETRAIN_EPOCHS = 12, 2  # (the softmax recipe warms up for 2)
COMMON = ["--batch_size", "60", "--lr_decay_mode", "cosine", "--lr_end", "0", "--warmup_epochs", "0"]
# Batch layouts: P x K with the configs' K (npairs needs pairs); the others their configs' samplers.
LAYOUT = {"quadruplet": ["--samples_each_class", "5"], "multisimilarity": ["--samples_each_class", "5"],
          "npairs": ["--samples_each_class", "2"], "eml": ["--samples_each_class", "2"]}
# The candidates of each loss, two each: learning rates around its scale (the sum-reduced triplet loss of 20
# triplets a batch takes about 1/20 of the mean-reduced losses' rate), for the seed's quadruplet its mining at the
# rate each works at (docs/learning.md "Fine-tuning that adds to softmax": batch mining loses Recall@1 at 0.01).
SEARCH = {
    "softmax": [["--lr_max", "0.01"], ["--lr_max", "0.03"]],
    "triplet": [["--lr_max", "0.0005"], ["--lr_max", "0.0015"]],
    "quadruplet": [["--lr_max", "0.03", "--mining", "anchor"], ["--lr_max", "0.001", "--mining", "batch"]],
    "arcmargin": [["--lr_max", "0.003"], ["--lr_max", "0.01"]],
    "multisimilarity": [["--lr_max", "0.01"], ["--lr_max", "0.03"]],
    "proxyanchor": [["--lr_max", "0.003"], ["--lr_max", "0.01"]],
    "normsoftmax": [["--lr_max", "0.01"], ["--lr_max", "0.03"]],
    "npairs": [["--lr_max", "0.003"], ["--lr_max", "0.01"]],
    "eml": [["--lr_max", "0.01"], ["--lr_max", "0.03"]],
}
QUICK_OPTIONS = ["--batch_size", "12"]
QUICK_LAYOUT = {"quadruplet": ["--samples_each_class", "2"], "multisimilarity": ["--samples_each_class", "2"]}


log = functools.partial(common.log, "bench_losses")


def list_lines(path):
    """(class id, line) of every entry of an image list."""
    with open(path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    return [(line.split()[-1], line) for line in lines]


def split_classes(class_ids, fraction=VALIDATION_FRACTION, seed=0):
    """(fit, validation) class ids: a seeded `fraction` of the distinct ids (at least 2, so that validation
    retrieval has wrong answers) for validation, the rest for fitting."""
    ids = sorted(set(class_ids))
    count = max(2, int(round(len(ids) * fraction)))
    if len(ids) - count < 2:
        raise ValueError(f"{len(ids)} training classes cannot be split into fit and validation classes")
    chosen = set(np.random.default_rng(seed).choice(ids, count, replace=False).tolist())
    return [c for c in ids if c not in chosen], [c for c in ids if c in chosen]


def write_split(data):
    """Write fit.txt and val.txt (the training list's images by class split) into `data`; check that no test
    class is among them. Returns {name: class ids}."""
    from src.runtime.atomic_file import write_atomic

    train = list_lines(os.path.join(data, "train.txt"))
    test_classes = {c for c, _ in list_lines(os.path.join(data, "test.txt"))}
    fit, val = split_classes([c for c, _ in train])
    for name, classes in (("fit.txt", fit), ("val.txt", val)):
        leaked = test_classes.intersection(classes)
        if leaked:
            raise ValueError(f"{data}/train.txt shares class ids with test.txt ({sorted(leaked)[:5]} ...): the "
                             f"validation split would hold test classes")
        keep = set(classes)
        write_atomic(os.path.join(data, name), "\n".join(line for c, line in train if c in keep) + "\n")
    return {"fit.txt": fit, "val.txt": val}


def train_run(out, data, name, loss, epochs, candidate, options, size, start, train_list, eval_list):
    """One train.py run, evaluated on `eval_list` after its last epoch; its checkpoints are removed once its
    numbers are read. Returns (and caches in NAME/result.json) {recall@1, map@r, seconds, ...}."""
    from src.training.history import read_history

    run_dir = os.path.join(out, name)
    result_path = os.path.join(run_dir, "result.json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    class_num = learning.read_list(data, train_list).num_classes if loss in CLASS_LOSSES else None
    args = learning.stage_command(data, run_dir, loss, epochs, options, size, ckpt=start, class_num=class_num,
                                  train_list=train_list, eval_list=eval_list, eval_interval=epochs)
    os.makedirs(run_dir, exist_ok=True)
    common.write_json(os.path.join(run_dir, "command.json"),
                      {"train_list": train_list, "eval_list": eval_list, "args": args[1:]})
    log(f"{name}: {loss} {' '.join(options)}, {epochs} epoch(s) on {train_list}, evaluated on {eval_list}")
    began = time.monotonic()
    learning.run(args, os.path.join(run_dir, "train.log"))
    rows = read_history(os.path.join(run_dir, "history.csv"))
    result = {"name": name, "loss": loss, "candidate": " ".join(candidate), "options": options,
              "train_list": train_list, "eval_list": eval_list,
              "recall@1": float(rows[-1]["recall_at_1"]), "map@r": float(rows[-1]["map_at_r"]),
              "seconds": round(time.monotonic() - began, 1)}
    shutil.rmtree(os.path.join(run_dir, "ckpt"), ignore_errors=True)
    common.write_json(result_path, result)
    return result


def pretrain(out, data, epochs, size, quick):
    """The common start: softmax from scratch on the fit classes (bench_learning's recipe); its final checkpoint."""
    name, _, options = learning.STAGES["softmax"]
    options = options + (QUICK_OPTIONS if quick else [])
    class_num = learning.read_list(data, "fit.txt").num_classes
    stage_dir = os.path.join(out, "start")
    ckpts = learning.stage_checkpoints(stage_dir, "softmax") if os.path.isdir(os.path.join(stage_dir, "ckpt")) else {}
    if epochs not in ckpts:
        log(f"the start: softmax from scratch on fit.txt, {epochs} epoch(s)")
        os.makedirs(stage_dir, exist_ok=True)
        learning.run(learning.stage_command(data, stage_dir, name, epochs, options + ["--keep_checkpoint_max", "1"],
                                            size, class_num=class_num, train_list="fit.txt",
                                            eval_list="val.txt", eval_interval=epochs),
                     os.path.join(stage_dir, "train.log"))
        ckpts = learning.stage_checkpoints(stage_dir, "softmax")
    return ckpts[epochs]


def loss_options(loss, candidate, quick):
    """train.py options of a run: the common ones, the loss's batch layout, the candidate's."""
    layout = {**LAYOUT, **QUICK_LAYOUT} if quick else LAYOUT
    return COMMON + layout.get(loss, []) + (QUICK_OPTIONS if quick else []) + candidate


def best_candidate(results):
    """The candidate with the best validation MAP@R, ties broken by Recall@1 (then the first listed)."""
    return max(range(len(results)), key=lambda i: (results[i]["map@r"], results[i]["recall@1"], -i))


def summarise(values):
    values = np.asarray(values, np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def markdown(header, baselines, selection, finals, seeds):
    lines = [header, "", "| baseline (no training beyond it) | Recall@1 | MAP@R |", "|---|---|---|"]
    lines += [f"| {name} | {m['recall@1']:.4f} | {m['map@r']:.4f} |" for name, m in baselines.items()]
    lines += ["", f"Test products, mean +- std over seeds {', '.join(map(str, seeds))}; time: mean seconds of one run.",
              "", "| loss | chosen on validation | Recall@1 | MAP@R | per seed (Recall@1 / MAP@R) | s / run |",
              "|---|---|---|---|---|---|"]
    for loss, runs in finals.items():
        r1, mp = summarise([r["recall@1"] for r in runs]), summarise([r["map@r"] for r in runs])
        per_seed = ", ".join(f"{r['recall@1']:.4f} / {r['map@r']:.4f}" for r in runs)
        lines.append(f"| {loss} | {runs[0]['candidate'] or '-'} | {r1[0]:.4f} +- {r1[1]:.4f} | "
                     f"{mp[0]:.4f} +- {mp[1]:.4f} | {per_seed} | {np.mean([r['seconds'] for r in runs]):.0f} |")
    lines += ["", "The selection (fit classes -> validation classes, seed 1):", "",
              "| loss | candidate | validation Recall@1 | validation MAP@R | chosen |", "|---|---|---|---|---|"]
    for loss, results in selection.items():
        chosen = best_candidate(results)
        for i, r in enumerate(results):
            lines.append(f"| {loss} | {r['candidate']} | {r['recall@1']:.4f} | "
                         f"{r['map@r']:.4f} | {'yes' if i == chosen else ''} |")
    return "\n".join(lines) + "\n"


def plot(baselines, finals, path, title):
    """Bars of each loss's mean Recall@1 and MAP@R (std as error bars), the baselines as lines."""
    from src.training.history import pyplot, save_figure

    losses = list(finals)
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for axis, key, label in ((axes[0], "recall@1", "Recall@1"), (axes[1], "map@r", "MAP@R")):
        stats = [summarise([r[key] for r in finals[loss]]) for loss in losses]
        axis.bar(range(len(losses)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=3,
                 color="tab:blue", alpha=0.8)
        for (name, metrics), style in zip(baselines.items(), (":", "-.", "--"), strict=False):
            axis.axhline(metrics[key], color="gray", linestyle=style, label=name)
        axis.set_xticks(range(len(losses)), losses, rotation=35, ha="right", fontsize=8)
        axis.set_ylabel(f"{label} on the unseen test products")
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "bench_losses_output"),
                        help="data, runs and logs (re-running reuses finished runs)")
    parser.add_argument("--markdown", help="write the tables here")
    parser.add_argument("--plot", help="write the PNG bar chart here")
    parser.add_argument("--json", help="write every run's numbers here")
    parser.add_argument("--losses", default=",".join(LOSSES), help="comma list of losses to compare")
    parser.add_argument("--seeds", default=None, help="comma list of seeds of the final runs (default 1,2,3)")
    parser.add_argument("--quick", action="store_true",
                        help="bench_learning's quick photo set, 1 epoch a run, one candidate a loss, seed 1")
    args = parser.parse_args(argv)
    losses = [name for name in args.losses.split(",") if name]
    unknown = [name for name in losses if name not in LOSSES]
    if unknown or not losses:
        parser.error(f"--losses: unknown {', '.join(unknown) or '(none given)'}; expected some of {', '.join(LOSSES)}")
    seeds = [int(s) for s in (args.seeds or ("1" if args.quick else "1,2,3")).split(",")]
    from src.runtime.log import setup_logging

    setup_logging()
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)
    spec = learning.QUICK_DATA if args.quick else learning.DATA
    data, size = os.path.join(out, "data"), spec["size"]
    began = time.monotonic()
    common.build_photo_set(data, **spec)
    split = write_split(data)
    epochs = QUICK_EPOCHS if args.quick else EPOCHS
    start = pretrain(out, data, QUICK_PRETRAIN_EPOCHS if args.quick else PRETRAIN_EPOCHS, size, args.quick)

    baselines = learning.untrained_baselines(out, data, size)
    baselines["the start (softmax on the fit classes)"] = learning.parse_metrics(learning.run(
        [sys.executable, os.path.join(ROOT, "eval.py"), "--ckpt_path", start, *learning.eval_options(data, size)],
        os.path.join(out, "start_eval.log")))

    selection, finals = {}, {}
    for loss in losses:
        candidates = SEARCH[loss][:1] if args.quick else SEARCH[loss]
        selection[loss] = [train_run(out, data, f"select/{loss}-{i}", loss, epochs, candidate,
                                     loss_options(loss, candidate, args.quick), size, start, "fit.txt", "val.txt")
                           for i, candidate in enumerate(candidates)]
        chosen = candidates[best_candidate(selection[loss])]
        finals[loss] = [train_run(out, data, f"final/{loss}-seed{seed}", loss, epochs, chosen,
                                  loss_options(loss, chosen, args.quick) + ["--seed", str(seed)], size, start,
                                  "train.txt", "test.txt")
                        for seed in seeds]

    header = (f"{common.machine_and_date()}; {len(split['fit.txt'])} fit + {len(split['val.txt'])} validation "
              f"classes (all training classes in the final runs), {epochs} epoch(s) a run, {size} px; "
              f"{time.monotonic() - began:.0f} s in all")
    table = markdown(header, baselines, selection, finals, seeds)
    print(table)
    if args.markdown:
        common.write_report(args.markdown, table)
    if args.json:
        common.write_json(args.json, {"header": header, "baselines": baselines, "split": split,
                                      "selection": selection, "finals": finals})
    plot(baselines, finals, args.plot or os.path.join(out, "losses.png"), header)


if __name__ == "__main__":
    main()
