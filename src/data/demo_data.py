"""Generated demo data: a small learnable retrieval problem as image files and "path label" lists.

Class c is a sinusoidal grating of its own orientation; every image has a random phase and a
random colour cast and noise that are strong next to the grating. Orientation survives random
crops, so training can learn it, while an untrained network's features are dominated by the cast.
(Horizontal flips mirror the orientation: train with hflip=false on it.)
"""
import os

import cv2
import numpy as np


def make_retrieval_dataset(root, num_classes=8, per_class=6, test_per_class=4, size=32, seed=0,
                           grating_amplitude=50.0, cast_amplitude=90.0, period=6.0):
    """Write class_<c>/<i>.png, train.txt (first per_class images of each class) and test.txt (the rest)."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    lists = {"train.txt": [], "test.txt": []}
    for c in range(num_classes):
        theta = np.pi * c / num_classes
        folder = os.path.join(root, f"class_{c:03d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class + test_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period + phase)
            cast = rng.uniform(-1, 1, size=(1, 1, 3)) * cast_amplitude
            noise = rng.normal(scale=8.0, size=(size, size, 3))
            image = np.clip(128 + grating_amplitude * wave[..., None] + cast + noise, 0, 255).astype(np.uint8)
            rel = f"class_{c:03d}/{i}.png"
            cv2.imwrite(os.path.join(root, rel), image)
            lists["train.txt" if i < per_class else "test.txt"].append(f"{rel} {c}")
    for name, lines in lists.items():
        with open(os.path.join(root, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return root


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m src.data.demo_data",

                                     description="Write the generated grating dataset (train.txt, test.txt).")
    parser.add_argument("--output_path", required=True)
    parser.add_argument("--num_classes", type=int, default=8)
    parser.add_argument("--per_class", type=int, default=6)
    parser.add_argument("--test_per_class", type=int, default=4)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_retrieval_dataset(args.output_path, args.num_classes, args.per_class, args.test_per_class, args.size,
                           args.seed)
    print(f"dataset written to {args.output_path}")


if __name__ == "__main__":
    main()
