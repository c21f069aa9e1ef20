"""What bf16 and int8 extraction cost in retrieval accuracy: one checkpoint's Recall@1 and MAP@R in fp32, bf16 and
int8 on each CPU engine, the change from the engine's fp32 with a paired 95% interval, and each image's cosine
similarity to its fp32 feature.

Usage:
  python bench/bench_precision.py --ckpt_path CKPT --dataset_path D --eval_list test.txt \\
      --calibration_list train.txt --image_size 32 [--variants openvino:fp32 openvino:int8 ...] \\
      [--markdown precision.md] [--json precision.json] [--title "the demo's model"]
  python bench/bench_precision.py --quick        # a tiny photo set and an untrained backbone: does it all run?

Every variant is a real eval.py run (--backend, --precision, --save_features); int8 is calibrated on
--calibration_list (training images; eval.py refuses test images). The change of a variant is measured against the
fp32 run of the same engine, query by query (src/evaluation/bootstrap.py: the same resampled test classes for
both). Targets (issue 48): Recall@1 and MAP@R drop <= 0.005 for int8, <= 0.002 for bf16.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import common
from bench.common import ROOT
from src.evaluation.bootstrap import metric_interval, paired_gain_interval, per_query_scores

DEFAULT_VARIANTS = ("openvino:fp32", "openvino:bf16", "openvino:int8", "onnxruntime:fp32", "onnxruntime:int8")
TARGETS = {"int8": 0.005, "bf16": 0.002}  # largest drop of Recall@1 and of MAP@R
METRICS = (("recall@1", "Recall@1"), ("map@r", "MAP@R"))


def parse_variant(text):
    """'openvino:int8' -> ("openvino", "int8")."""
    backend, sep, precision = text.partition(":")
    if not sep or backend not in ("onnxruntime", "openvino") or precision not in ("fp32", "bf16", "int8"):
        raise argparse.ArgumentTypeError(f"a variant is ENGINE:PRECISION (onnxruntime|openvino : fp32|bf16|int8), "
                                         f"got {text!r}")
    return backend, precision


def run_eval(args, backend, precision, features):
    """eval.py for one variant; its wall seconds."""
    command = ["--ckpt_path", args.ckpt_path, "--dataset_path",
               args.dataset_path, "--eval_list", args.eval_list, "--image_size", str(args.image_size),
               "--eval_batch_size", str(args.eval_batch_size), "--backend", backend, "--precision", precision,
               "--calibration_list", args.calibration_list, "--calibration_size", str(args.calibration_size),
               "--save_features", features]
    if args.threads:
        command += ["--threads", str(args.threads)]
    common.log("bench_precision", f"{backend} {precision}: {' '.join(shlex.quote(c) for c in command)}")
    start = time.monotonic()
    common.run_script(os.path.join(ROOT, "eval.py"), command, f"eval.py {backend} {precision}",
                      stderr=subprocess.STDOUT)
    return time.monotonic() - start


def cosines(features, reference):
    return (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)


def compare(runs):
    """Rows of the table: {variant: {metric: (est, low, high), change: {metric: (gain, low, high)}, cosine: ...}}."""
    rows = {}
    for (backend, precision), (features, labels, seconds) in runs.items():
        scores = per_query_scores(features, labels, normalize=False)  # eval.py saves unit rows
        row = {"seconds": seconds, "metrics": {m: metric_interval(scores[m], labels) for m, _ in METRICS}}
        reference = runs.get((backend, "fp32"))
        if precision != "fp32" and reference is not None:
            before = per_query_scores(reference[0], reference[1], normalize=False)
            row["change"] = {m: paired_gain_interval(before[m], scores[m], labels) for m, _ in METRICS}
            cos = cosines(features, reference[0])
            row["cosine"] = (float(cos.min()), float(np.percentile(cos, 1)), float(np.median(cos)))
            drops = [-row["change"][m][0] for m, _ in METRICS]
            row["target"] = TARGETS[precision]
            row["met"] = max(drops) <= TARGETS[precision]
        rows[f"{backend} {precision}"] = row
    return rows


def format_table(rows, title, command):
    lines = [f"### {title}", "", f"{common.machine_and_date()}. Command: `{command}`", "",
             "| variant | Recall@1 [95%] | MAP@R [95%] | change of Recall@1 from fp32 [paired 95%] | change of MAP@R "
             "[paired 95%] | cosine to fp32: min / 1st percentile / median | target: drop <= | met | eval.py s |",
             "|---|---|---|---|---|---|---|---|---|"]
    cell = "{:.4f} [{:.4f}, {:.4f}]".format
    signed = "{:+.4f} [{:+.4f}, {:+.4f}]".format
    for name, row in rows.items():
        metrics = [cell(*row["metrics"][m]) for m, _ in METRICS]
        if "change" in row:
            change = [signed(*row["change"][m]) for m, _ in METRICS]
            extra = ["{:.4f} / {:.4f} / {:.5f}".format(*row["cosine"]), f"{row['target']}",
                     "yes" if row["met"] else "**no**"]
        else:  # an fp32 row, or one whose engine has no fp32 run to compare with
            what = "reference" if name.endswith(" fp32") else "no fp32 run"
            change, extra = [what, what], ["—", "—", "—"]
        lines.append(f"| {name} | " + " | ".join(metrics + change + extra + [f"{row['seconds']:.0f}"]) + " |")
    return "\n".join(lines)


def quick_setup(folder):
    """A tiny photo set (64 px) and an untrained checkpoint, for --quick."""
    data = os.path.join(folder, "photos")
    common.build_photo_set(data, 64, grid=2, views=3, test_regions=2, photos=("astronaut", "coffee", "chelsea"))
    ckpt = os.path.join(folder, "untrained.ckpt")
    code = ("import src.runtime.env; import mindspore as ms; from src.models.resnet import ResNet50; ms.set_seed(1); "
            f"ms.save_checkpoint(ResNet50(), {ckpt!r})")
    subprocess.run([sys.executable, "-c", code], env=common.child_env(), check=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return data, ckpt


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--ckpt_path", help="the checkpoint to deploy")
    parser.add_argument("--dataset_path", help="the folder of its test and training lists")
    parser.add_argument("--eval_list", default="test.txt")
    parser.add_argument("--calibration_list", default="train.txt", help="int8's calibration images (training ones)")
    parser.add_argument("--calibration_size", type=int, default=300)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--eval_batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--variants", nargs="+", type=parse_variant, metavar="ENGINE:PRECISION",
                        default=[parse_variant(v) for v in DEFAULT_VARIANTS])
    parser.add_argument("--title", default=None, help="the table's heading")
    parser.add_argument("--markdown", default=None,
                        help="write the table here, in place of the file's section of the same --title")
    parser.add_argument("--quick", action="store_true", help="a tiny photo set, an untrained backbone, 64 px")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench_precision_")
    if args.quick:
        args.dataset_path, args.ckpt_path = quick_setup(work)
        args.image_size, args.eval_batch_size, args.calibration_size = 64, 16, 32
    elif not (args.ckpt_path and args.dataset_path):
        parser.error("--ckpt_path and --dataset_path are needed (or --quick)")
    command = "python bench/bench_precision.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    runs = {}
    for backend, precision in args.variants:
        path = os.path.join(work, f"{backend}-{precision}.npz")
        seconds = run_eval(args, backend, precision, path)
        with np.load(path) as data:
            runs[backend, precision] = (data["features"], data["labels"], seconds)
    text = format_table(compare(runs), args.title or f"{os.path.basename(args.ckpt_path)} on {args.eval_list}",
                        re.sub(r"\s+", " ", command).strip())
    print(text)
    if args.markdown:
        common.write_report(args.markdown, merge_section(args.markdown, text))
    return 0


def merge_section(path, section):
    """The text of `path` (a file of "### title" sections) with `section` in place of the one of its title, or after
    the others: one file keeps a table per model."""
    if not os.path.isfile(path):
        return section
    with open(path, encoding="utf-8") as f:
        sections = ["### " + part.strip() for part in re.split(r"^### ", f.read(), flags=re.M) if part.strip()]
    title = section.splitlines()[0]
    kept = [part if part.splitlines()[0] != title else section for part in sections]
    return "\n\n".join(kept if section in kept else kept + [section])


if __name__ == "__main__":
    sys.exit(main())
