"""The no-learning baseline a trained model must beat: raw-pixel nearest neighbours.

Each image is resized to side x side (area interpolation), optionally turned to grayscale, centred on
its own mean (which removes a brightness offset) and L2-normalised; retrieval is then the same
leave-one-out ranking as for learnt features (src/evaluation/metrics.py). Several sides and both colour modes
are tried and the best is reported, so the bar a model has to clear is the strongest of them, not a
convenient one.

    python -m src.evaluation.baselines --dataset_path DATA --eval_list test.txt --recall_ks 1,10

prints one row per variant and, last, `eval_recall: <R@1>` of the best variant.
"""
import os

import cv2
import numpy as np

from src.data.decoding import load_image
from src.data.image_list import read_image_list
from src.evaluation.features import save_features
from src.evaluation.metrics import format_metrics_table, l2_normalize_rows, retrieval_metrics

DEFAULT_SIDES = (8, 16, 32)


def raw_pixel_features(images, side=32, gray=False):
    """(N, side*side*channels) float32 features of RGB uint8 images: resized, mean-centred, L2-normalised."""
    rows = []
    for image in images:
        small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
        if gray:
            small = small @ np.array([0.299, 0.587, 0.114], np.float32)
        small = small.reshape(-1)
        centred = small - small.mean()
        # A view of a flat region is all zero once centred: it carries no pixel information, so it gets the
        # constant direction, orthogonal to every centred row (similarity 0 to all: it is found by nothing).
        rows.append(centred if np.any(centred) else np.ones_like(centred))
    return l2_normalize_rows(np.stack(rows), "raw pixel features")


def variants(sides=DEFAULT_SIDES):
    """{name: (side, gray)} of every side x {RGB, gray}."""
    return {f"raw pixels {side}x{side} {'gray' if gray else 'RGB'}": (side, gray)
            for side in sides for gray in (False, True)}


def raw_pixel_baselines(images, labels, sides=DEFAULT_SIDES, ks=(1, 10)):
    """[(name, metrics dict)] for every side x {RGB, gray}, best Recall@1 (then MAP@R) first."""
    results = []
    for name, (side, gray) in variants(sides).items():
        features = raw_pixel_features(images, side, gray)
        results.append((name, retrieval_metrics(features, labels, ks=ks, normalize=False)))
    results.sort(key=lambda item: (-item[1]["recall@1"], -item[1]["map@r"]))
    return results


def load_list_images(dataset_path, eval_list):
    """(RGB images, int labels, class ids as written in the list, listed paths) of a list file inside dataset_path."""
    listed = read_image_list(os.path.join(dataset_path, eval_list), dataset_path)
    images = [load_image(listed.full_path(i), listed.where(i)) for i in range(len(listed))]
    return images, np.asarray(listed.labels, np.int32), listed.ids, listed.paths


def main(argv=None):
    import argparse

    from src.runtime.cli import add_recall_ks_argument

    parser = argparse.ArgumentParser(prog="python -m src.evaluation.baselines",

                                     description="Raw-pixel nearest-neighbour retrieval: the baseline that "
                                     "needs no learning.")
    parser.add_argument("--dataset_path", required=True, help="folder the list paths are relative to")
    parser.add_argument("--eval_list", default="test_half.txt", help="evaluation list inside dataset_path")
    parser.add_argument("--sides", default=",".join(map(str, DEFAULT_SIDES)),
                        help="comma-separated image sides to try (default %(default)s)")
    add_recall_ks_argument(parser)
    parser.add_argument("--save_features", default=None, metavar="NPZ",
                        help="write the best variant's features, labels and paths to this .npz (as eval.py does)")
    args = parser.parse_args(argv)
    try:
        sides = tuple(int(s) for s in args.sides.split(","))
    except ValueError:
        parser.error(f"--sides must be comma-separated integers, got {args.sides!r}")
    if not sides or min(sides) < 1:
        parser.error(f"--sides must be positive integers, got {args.sides!r}")
    images, labels, class_ids, paths = load_list_images(args.dataset_path, args.eval_list)
    results = raw_pixel_baselines(images, labels, sides, args.recall_ks)
    for name, metrics in results:
        print(f"{name:<24} recall@1 {metrics['recall@1']:.4f}  map@r {metrics['map@r']:.4f}")
    best_name, best = results[0]
    if args.save_features:
        # the same columns as eval.py --save_features (labels: the list's class ids)
        save_features(args.save_features, raw_pixel_features(images, *variants(sides)[best_name]), class_ids, paths)
    print(f"best: {best_name}")
    print(format_metrics_table(best))
    print(f"eval_recall: {best['recall@1']:.4f}")


if __name__ == "__main__":
    from src.runtime.cli import run

    run(main)
