"""A stand-in for the network in index tests: features from an image's pixels (a 4 x 4 colour thumbnail, centred),
deterministic and fast; `delay` seconds per call lets a test catch a build halfway."""
import time

import cv2
import numpy as np

from src.data.decoding import load_image
from src.evaluation.metrics import l2_normalize_rows

SETTINGS = {"checkpoint": "/nowhere/stub.ckpt", "checkpoint_sha256": "0" * 64, "backbone": {"pooling": "avg"},
            "image_size": 32, "eval_resize": "crop", "backend": "stub"}


def pixel_features(image):
    thumb = cv2.resize(image, (4, 4), interpolation=cv2.INTER_AREA).astype(np.float32).reshape(-1)
    return thumb - thumb.mean() + 1e-3 * np.arange(len(thumb), dtype=np.float32)


class PixelEmbedder:
    settings = SETTINGS

    def __init__(self, delay=0.0):
        self.delay = delay
        self.calls = 0

    def embed_images(self, images):
        return l2_normalize_rows(np.stack([pixel_features(image) for image in images]))

    def embed_list(self, images):
        self.calls += 1
        time.sleep(self.delay)
        return self.embed_images([load_image(images.full_path(i)) for i in range(len(images))])

    def embed_files(self, paths):
        return self.embed_images([load_image(path) for path in paths])
