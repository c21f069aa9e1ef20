"""The calibration set of an int8 quantization: training images, never test images, preprocessed as evaluation.

    calibration = read_calibration(dataset_path, "train.txt", size=300, exclude=("test.txt",))
    batches = calibration.batches(batch_size=32, image_size=224)     # evaluation preprocessing (eval_resize)

Post-training quantization measures the range of every activation on these images, so they must be what the
model will see (the evaluation preprocessing) and must not be the images the model is then scored on: an image of
any test list in the dataset folder (SOP's Ebay_test.txt, test.txt, test_half.txt, In-Shop's query.txt and
gallery.txt) is refused, naming the calibration list's line. `size` images are drawn from the list with a fixed
seed, so the same list and size give the same calibration (and the same cached int8 model).
"""
import fnmatch
import hashlib
import os
from dataclasses import dataclass

import numpy as np

from src.data.decoding import IMAGE_SUFFIXES, load_image
from src.data.image_list import read_image_list
from src.data.transforms import eval_transform

DEFAULT_SIZE = 300  # NNCF's default subset size
# Lists of a dataset folder whose images are evaluation images (matched case-insensitively on the file name).
TEST_LIST_PATTERNS = ("*test*.txt", "query*.txt", "gallery*.txt")
_SEED = 0


class CalibrationError(ValueError):
    """A calibration list that cannot calibrate: missing, empty, or holding test images."""


def test_lists(dataset_path, extra=()):
    """The test lists in `dataset_path` (TEST_LIST_PATTERNS), plus `extra` list names (e.g. eval.py's --eval_list)
    that exist there; sorted, without repeats."""
    found = {name for name in os.listdir(dataset_path)
             if any(fnmatch.fnmatch(name.lower(), pattern) for pattern in TEST_LIST_PATTERNS)}
    found |= {name for name in extra if name}
    return sorted(name for name in found if os.path.isfile(os.path.join(dataset_path, name)))


def listed_images(list_file):
    """(line number, image path) of each line of a list in any of the layouts here ("path label", SOP's
    "image_id class_id super_class_id path"): the first field that names an image file."""
    with open(list_file, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            path = next((field for field in line.split() if field.lower().endswith(IMAGE_SUFFIXES)), None)
            if path is not None:
                yield number, path


@dataclass(frozen=True)
class Calibration:
    """`size` images of a list (full paths, in draw order) and what identifies them (list path, its SHA-256)."""

    root: str
    list_file: str
    list_sha256: str
    paths: tuple
    eval_resize: str = "crop"

    @property
    def key(self):
        """What a cached int8 model is keyed on."""
        return {"calibration_list": self.list_file, "calibration_sha256": self.list_sha256,
                "calibration_size": len(self.paths), "eval_resize": self.eval_resize}

    def record(self):
        """What an index's manifest keeps to calibrate the same way again (calibration_from_record)."""
        return {"dataset_path": self.root, "list": self.list_file, "sha256": self.list_sha256,
                "size": len(self.paths), "eval_resize": self.eval_resize}

    def batches(self, batch_size, image_size):
        """The images as float32 (batch_size, 3, S, S) batches, evaluation preprocessing; the last batch is
        filled up with the first images again (an exported model takes full batches only)."""
        count = -(-len(self.paths) // batch_size) * batch_size
        order = [self.paths[i % len(self.paths)] for i in range(count)]
        for start in range(0, count, batch_size):
            yield np.stack([eval_transform(load_image(path, f"--calibration_list {self.list_file}"), image_size,
                                           self.eval_resize) for path in order[start:start + batch_size]])


def read_calibration(dataset_path, list_name, size=DEFAULT_SIZE, exclude=(), eval_resize="crop",
                     what="--precision int8"):
    """The Calibration of `list_name` (a "path label" list inside `dataset_path`, or a path to one): `size` of its
    images drawn with a fixed seed (all of them if it has fewer), to be preprocessed with `eval_resize`.

    CalibrationError when the list is missing, `size` < 1, or an image is also in a test list of `dataset_path`
    (test_lists(dataset_path, exclude)): the message names the calibration list's line and the test list; `what`
    names the request in the message for a missing list.
    """
    if size is None or int(size) < 1:
        raise CalibrationError(f"--calibration_size must be >= 1, got {size}")
    if not list_name:
        raise CalibrationError(f"{what} needs --calibration_list: a list of training images to calibrate on")
    list_file = list_name if os.path.isfile(list_name) else os.path.join(dataset_path, list_name)
    if not os.path.isfile(list_file):
        raise CalibrationError(f"--calibration_list {list_name} not found (in {dataset_path} or as a path)")
    tests = [os.path.join(dataset_path, name) for name in test_lists(dataset_path, exclude)]
    if any(os.path.samefile(test_file, list_file) for test_file in tests):
        raise CalibrationError(f"--calibration_list {list_file} is a test list: calibrate on training images")
    images = read_image_list(list_file, dataset_path)
    full = [os.path.normpath(images.full_path(i)) for i in range(len(images))]
    where = {path: i for i, path in reversed(list(enumerate(full)))}
    for test_file in tests:
        for line, path in listed_images(test_file):
            i = where.get(os.path.normpath(os.path.join(dataset_path, path)))
            if i is not None:
                raise CalibrationError(f"--calibration_list {images.where(i)}: {images.paths[i]} is a test image "
                                       f"({test_file}:{line}): calibrate on training images")
    rng = np.random.default_rng(_SEED)
    picked = rng.permutation(len(full))[:int(size)]
    with open(list_file, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return Calibration(os.path.abspath(dataset_path), os.path.abspath(list_file), digest,
                       tuple(full[i] for i in picked), eval_resize)


def calibration_from_record(record, what="the index"):
    """The Calibration a record (Calibration.record) describes, read again; CalibrationError when its list is gone
    or changed (the int8 model would not be the one `what` was made with)."""
    if not os.path.isfile(record["list"]):
        raise CalibrationError(f"{what} was made in int8, calibrated on {record['list']}, which is not there any "
                               f"more: put it back, or use --precision fp32")
    calibration = read_calibration(record["dataset_path"], record["list"], record["size"],
                                   eval_resize=record["eval_resize"])
    if calibration.list_sha256 != record["sha256"]:
        raise CalibrationError(f"{what} was made in int8, calibrated on {record['list']}, which has changed since: "
                               f"put the old list back, or use --precision fp32")
    return calibration


def add_calibration_arguments(parser):
    """--calibration_list and --calibration_size (what --precision int8 / --quantize int8 calibrates on)."""
    parser.add_argument("--calibration_list", default=None,
                        help="int8: list of training images (inside --dataset_path) to calibrate on; never test images")
    parser.add_argument("--calibration_size", type=int, default=DEFAULT_SIZE,
                        help="int8: images drawn from --calibration_list (fixed seed)")
