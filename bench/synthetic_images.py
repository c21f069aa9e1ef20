"""Photo-like JPEGs for the benchmarks: gradients, discs and noise, so they compress like photos."""
import os

import cv2
import numpy as np


def make_jpegs(folder, count, side, seed=0):
    """Write `count` JPEGs of side x side named 0.jpg, 1.jpg, ... into `folder` (existing files are kept)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        base = rng.uniform(0, 255, 3) * (0.5 + 0.5 * np.stack([xx, yy, 1 - xx], axis=2))
        image = base + rng.normal(0, 12, (side, side, 3))
        for _ in range(5):
            center = tuple(int(v) for v in rng.integers(0, side, 2))
            cv2.circle(image, center, int(rng.integers(10, max(11, side // 4))), rng.uniform(0, 255, 3).tolist(), -1)
        path = os.path.join(folder, f"{i}.jpg")
        if not os.path.exists(path):
            cv2.imwrite(path, np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
