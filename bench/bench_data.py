"""Images/s of the training input pipeline next to a plain single-process OpenCV loop doing the same work.

Usage: python bench/bench_data.py [--images 200] [--image-size 224] [--workers 1 2]
Generates ~500x500 JPEGs in a temporary folder, then times create_dataset("shuffle") (decode,
RandomResizedCrop, flip, normalise, CHW, batch) per worker count against cv2 calls in a loop.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import os
import sys
import tempfile
import time

import cv2
import numpy as np

from bench import synthetic_images
from src.data.dataset import create_dataset
from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD, random_resized_crop_box
from src.runtime.log import get_logger, setup_logging

logger = get_logger()


def make_jpegs(folder, count, side, num_classes=20):
    """`count` photo-like JPEGs and a list file (list.txt, labels i % num_classes)."""
    synthetic_images.make_jpegs(folder, count, side)
    with open(os.path.join(folder, "list.txt"), "w") as f:
        f.write("".join(f"{i}.jpg {i % num_classes}\n" for i in range(count)))


def plain_loop(folder, count, size, rounds):
    """Decode + random resized crop + flip + normalise + CHW with cv2/numpy, one process."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(rounds):
        for i in range(count):
            image = cv2.cvtColor(cv2.imread(os.path.join(folder, f"{i}.jpg")), cv2.COLOR_BGR2RGB)
            top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng)
            crop = cv2.resize(image[top:top + h, left:left + w], (size, size), interpolation=cv2.INTER_CUBIC)
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            chw = np.ascontiguousarray(crop.transpose(2, 0, 1)).astype(np.float32)
            chw -= IMAGENET_MEAN[:, None, None]
            chw /= IMAGENET_STD[:, None, None]
    return count * rounds / (time.perf_counter() - start)


def pipeline(folder, size, batch_size, workers, epochs, processes=True):
    """Images/s over `epochs` epochs after a first, untimed one (worker start-up)."""
    dataset = create_dataset(folder, "list.txt", batch_size, size, "shuffle", num_parallel_workers=workers,
                             python_multiprocessing=processes)
    iterator = dataset.create_tuple_iterator(num_epochs=epochs + 1, output_numpy=True)
    for _ in iterator:
        pass
    start, images = time.perf_counter(), 0
    for _ in range(epochs):
        for image, _ in iterator:
            images += len(image)
    return images / (time.perf_counter() - start)


def main(argv=None):
    setup_logging()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--source-size", type=int, default=500, help="side of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        make_jpegs(folder, args.images, args.source_size)
        logger.info("%d JPEGs of %dx%d, output %dx%d, %d CPUs", args.images, args.source_size,
                    args.source_size, args.image_size, args.image_size, os.cpu_count())
        plain = plain_loop(folder, args.images, args.image_size, args.epochs)
        logger.info("plain OpenCV loop, 1 process: %.1f images/s", plain)
        for workers in args.workers:
            for processes in [True, False] if workers > 1 else [False]:
                rate = pipeline(folder, args.image_size, args.batch_size, workers, args.epochs, processes)
                kind = "processes" if processes else "threads"
                logger.info("create_dataset, %d worker %s: %.1f images/s = %.2f x the plain loop",
                            workers, kind, rate, rate / plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
