"""Image lists, image decoding, transforms and the MindSpore input pipeline for each training stage.

Transforms are plain OpenCV/numpy functions run inside the GeneratorDataset source (in worker
processes when num_parallel_workers > 1) rather than mindspore.dataset.vision ops, because
  - their randomness comes from a per-sample key carried in the sampler's token (src/samplers.py),
    so a batch depends only on (seed, epoch, rank), not on worker count or global RNG state, and a
    resumed run (start_epoch=k) reproduces the augmentations of an uninterrupted one;
  - decoding needs OpenCV anyway (16-bit, grayscale, palette, alpha), and the evaluation transform
    can be checked against an independent OpenCV reference.

Evaluation default: resize the short side to `image_size`, then crop the centre square
(`eval_resize="crop"`, keeps the aspect ratio); `"squash"` resizes to image_size x image_size like
the seed did.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import mindspore.dataset as ds
import numpy as np

from src.log import Progress, get_logger
from src.samplers import PKSampler, ShuffleSampler, TripletSampler, decode_token

logger = get_logger(__name__)

# How each training stage draws its batches (src/samplers.py): every image once in random order, consecutive
# (anchor, positive, negative) triples, or P classes x K consecutive images (samples_each_class).
BATCHES = {"softmax": "shuffle", "arcmargin": "shuffle", "normsoftmax": "shuffle", "proxyanchor": "shuffle",
           "triplet": "triplet", "quadruplet": "pk", "multisimilarity": "pk", "npairs": "pk", "eml": "pk"}
TRAIN_STAGES = tuple(BATCHES)
STAGES = TRAIN_STAGES + ("eval",)
EVAL_RESIZE_MODES = ("crop", "squash")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
INTERPOLATION = cv2.INTER_CUBIC
_LABEL = re.compile(r"[+-]?\d+")
_BAD_PATHS_SHOWN = 5


# ----------------------------------------------------------------------------------------------
# Image lists

@dataclass(frozen=True)
class ImageList:
    """A parsed "path label" list. labels are contiguous 0..C-1; class_ids[label] is the id in the file."""

    root: str
    list_file: str
    paths: tuple
    labels: np.ndarray
    class_ids: np.ndarray
    line_numbers: np.ndarray

    def __len__(self):
        return len(self.paths)

    @property
    def num_classes(self):
        return len(self.class_ids)

    @property
    def ids(self):
        """Each entry's class id as written in the file (labels are positions in class_ids)."""
        return self.class_ids[self.labels]

    def full_path(self, index):
        return os.path.join(self.root, self.paths[index])

    def where(self, index):
        """`list_file:line` of an entry, for error messages."""
        return f"{self.list_file}:{self.line_numbers[index]}"

    def subset(self, indices):
        """The entries at `indices`; the label mapping (class_ids) is kept as it is."""
        indices = np.asarray(indices, np.int64)
        return ImageList(self.root, self.list_file, tuple(self.paths[i] for i in indices),
                         self.labels[indices], self.class_ids, self.line_numbers[indices])


def read_image_list(list_file, root=None):
    """Parse a list of "relative/path class_id" lines (paths relative to `root`, default: the list's folder).

    Blank lines and a leading `image_id ...` header line are skipped. Class ids may be any integers;
    they are mapped to contiguous labels in increasing id order. Raises ValueError naming
    `file:line` for a malformed line or a non-integer label, and for a list without entries.
    """
    root = os.path.dirname(os.path.abspath(list_file)) if root is None else root
    paths, ids, lines = [], [], []
    first = True
    with open(list_file, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if first and fields[0] == "image_id":
                first = False
                continue
            first = False
            if len(fields) != 2:
                raise ValueError(f"{list_file}:{number}: expected 'path label', got {len(fields)} fields: "
                                 f"{line.strip()!r}")
            if not _LABEL.fullmatch(fields[1]):
                raise ValueError(f"{list_file}:{number}: label {fields[1]!r} is not an integer")
            paths.append(fields[0])
            ids.append(int(fields[1]))
            lines.append(number)
    if not paths:
        raise ValueError(f"{list_file}: the list holds no images")
    class_ids, labels = np.unique(np.array(ids, np.int64), return_inverse=True)
    return ImageList(root, list_file, tuple(paths), labels.astype(np.int32), class_ids,
                     np.array(lines, np.int64))


# ----------------------------------------------------------------------------------------------
# Decoding

def load_image(path, where=None):
    """Decode an image file into an HxWx3 uint8 RGB array.

    Grayscale and palette images become 3 channels, alpha is dropped, 16-bit images are scaled to
    8 bits; EXIF orientation is applied. A missing or undecodable file raises FileNotFoundError /
    ValueError naming the path and `where` (the list's file:line).
    """
    listed = f" (listed at {where})" if where else ""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}{listed}")
    # ANYDEPTH keeps 16 bits, ANYCOLOR keeps grayscale as one channel; unlike IMREAD_UNCHANGED
    # both still apply the EXIF orientation.
    image = cv2.imread(path, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if image is None or image.size == 0:
        raise ValueError(f"cannot decode image: {path}{listed}")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}: {path}{listed}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels in (1, 2):  # gray (+ alpha)
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def find_bad_images(images, num_workers=2, progress_what="checking images"):
    """[(index, reason)] for every entry of `images` that is missing or does not decode."""
    def check(index):
        try:
            load_image(images.full_path(index), images.where(index))
        except (OSError, ValueError, cv2.error) as error:
            return index, str(error)
        return None

    progress = Progress(len(images), progress_what, logger, interval=30.0)
    bad = []
    # cv2.imread releases the GIL, so threads decode in parallel.
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        for result in pool.map(check, range(len(images)), chunksize=64):
            progress.update()
            if result is not None:
                bad.append(result)
    return bad


def drop_bad_images(images, num_workers=2):
    """`images` without its missing/undecodable files; logs how many were dropped and the first few."""
    bad = find_bad_images(images, num_workers)
    if not bad:
        return images
    for _, reason in bad[:_BAD_PATHS_SHOWN]:
        logger.warning("skipping %s", reason)
    more = f" (first {_BAD_PATHS_SHOWN} shown)" if len(bad) > _BAD_PATHS_SHOWN else ""
    logger.warning("skip_bad: dropped %d of %d images of %s%s", len(bad), len(images), images.list_file, more)
    if len(bad) == len(images):
        raise ValueError(f"{images.list_file}: none of its {len(images)} images can be decoded")
    keep = np.setdiff1d(np.arange(len(images)), [index for index, _ in bad])
    return images.subset(keep)


# ----------------------------------------------------------------------------------------------
# Transforms (HxWx3 uint8 RGB in, 3xSxS float32 out)

def normalize_chw(image):
    """ImageNet mean/std normalisation of an RGB uint8 image, HWC -> CHW float32."""
    # Transposing the uint8 image first and working in place is ~4x faster than the float HWC way.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
    chw -= IMAGENET_MEAN[:, None, None]
    chw /= IMAGENET_STD[:, None, None]
    return chw


def random_resized_crop_box(height, width, rng, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), attempts=10):
    """(top, left, h, w) of a random crop covering `scale` of the area with aspect ratio in `ratio`.

    Falls back to the largest centred crop with the closest allowed ratio when 10 draws miss.
    """
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(np.sqrt(target * aspect)))
        h = int(round(np.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image, size, rng, hflip=True, crop_scale_min=0.08):
    """RandomResizedCrop(size, scale (crop_scale_min, 1), ratio (3/4, 4/3), bicubic), random h-flip, normalise."""
    top, left, h, w = random_resized_crop_box(image.shape[0], image.shape[1], rng, scale=(crop_scale_min, 1.0))
    crop = cv2.resize(image[top:top + h, left:left + w], (size, size), interpolation=INTERPOLATION)
    if hflip and rng.random() < 0.5:
        crop = crop[:, ::-1]
    return normalize_chw(crop)


def eval_transform(image, size, resize="crop"):
    """"crop": short side to `size`, then the centre size x size; "squash": straight to size x size."""
    if resize == "squash":
        return normalize_chw(cv2.resize(image, (size, size), interpolation=INTERPOLATION))
    if resize != "crop":
        raise ValueError(f"eval_resize must be one of {EVAL_RESIZE_MODES}, got {resize!r}")
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_h = max(size, int(round(height * scale)))
    new_w = max(size, int(round(width * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATION)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return normalize_chw(resized[top:top + size, left:left + size])


# ----------------------------------------------------------------------------------------------
# Pipeline

class ImageSource:
    """Random-access GeneratorDataset source: sample token -> (3xSxS float32 image, int32 label)."""

    def __init__(self, images, image_size, train, hflip=True, eval_resize="crop", crop_scale_min=0.08):
        self.images = images
        self.image_size = int(image_size)
        self.train = train
        self.hflip = hflip
        self.crop_scale_min = float(crop_scale_min)
        self.eval_resize = eval_resize

    def __len__(self):
        return len(self.images)

    def __getitem__(self, token):
        index, key = decode_token(token, len(self.images))
        image = load_image(self.images.full_path(index), self.images.where(index))
        if self.train:
            out = train_transform(image, self.image_size, np.random.default_rng(key), self.hflip,
                                  self.crop_scale_min)
        else:
            out = eval_transform(image, self.image_size, self.eval_resize)
        return out, np.array(self.images.labels[index], np.int32)


def create_dataset(dataset_path, list_file, batch_size, image_size, stage, seed=0, start_epoch=0, rank=0,
                   group_size=1, num_parallel_workers=2, samples_each_class=2, hflip=True,
                   eval_resize="crop", skip_bad=False, drop_remainder=None, python_multiprocessing=True,
                   crop_scale_min=0.08):
    """The batched dataset of one stage, columns ("image" float32 NCHW, "label" int32).

    list_file is relative to dataset_path unless absolute, or an already read ImageList. Training
    stages draw a new order every epoch from seed + epoch (epoch = start_epoch, start_epoch + 1,
    ... per iterator) and give rank
    `rank` of `group_size` its own equal-sized slice; "eval" reads the whole list in order, no
    shuffling, no augmentation, no dropped images, on every rank. skip_bad decodes every listed
    file once up front and drops (and logs) the bad ones instead of failing on them later.
    With num_parallel_workers > 1 the workers are processes (python_multiprocessing=True: scales
    with cores, ~1 ms of transfer per image) or threads (no transfer, but they share the GIL).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    if eval_resize not in EVAL_RESIZE_MODES:
        raise ValueError(f"eval_resize must be one of {EVAL_RESIZE_MODES}, got {eval_resize!r}")
    train = stage in TRAIN_STAGES
    if stage == "triplet" and batch_size % 3:
        raise ValueError(f"triplet batch_size must be a multiple of 3, got batch_size={batch_size}")
    batches = BATCHES.get(stage)
    if batches == "pk" and batch_size % samples_each_class:
        raise ValueError(f"{stage} batch_size must be a multiple of samples_each_class="
                         f"{samples_each_class}, got batch_size={batch_size}")
    if stage == "npairs" and samples_each_class != 2:
        raise ValueError(f"npairs batches are (anchor, positive) pairs: samples_each_class must be 2, "
                         f"got {samples_each_class}")
    drop_remainder = train if drop_remainder is None else drop_remainder

    if isinstance(list_file, ImageList):
        images = list_file
    else:
        images = read_image_list(os.path.join(dataset_path, list_file), dataset_path)
    if skip_bad:
        images = drop_bad_images(images, num_parallel_workers)

    sampler = None
    if batches == "shuffle":
        sampler = ShuffleSampler(len(images), seed, start_epoch, rank, group_size)
    elif batches == "triplet":
        sampler = TripletSampler(images.labels, batch_size // 3, seed, start_epoch, rank, group_size)
    elif batches == "pk":
        sampler = PKSampler(images.labels, batch_size // samples_each_class, samples_each_class, seed,
                            start_epoch, rank, group_size)

    if not 0 < crop_scale_min <= 1:
        raise ValueError(f"crop_scale_min must be in (0, 1], got {crop_scale_min!r}")
    source = ImageSource(images, image_size, train, hflip, eval_resize, crop_scale_min)
    workers = max(1, int(num_parallel_workers))
    dataset = ds.GeneratorDataset(source, column_names=["image", "label"], sampler=sampler,
                                  shuffle=False if sampler is None else None, num_parallel_workers=workers,
                                  python_multiprocessing=python_multiprocessing and workers > 1)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    steps = dataset.get_dataset_size()
    if steps == 0:
        raise ValueError(f"{images.list_file}: {len(images)} images give no full batch of batch_size="
                         f"{batch_size} on each of {group_size} ranks")
    logger.info("%s data: %s, %d images, %d classes, %d steps per epoch (rank %d of %d)", stage,
                images.list_file, len(images), len(np.unique(images.labels)), steps, rank, group_size)
    return dataset
