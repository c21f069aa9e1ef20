"""The MindSpore input pipeline of each batch layout and of evaluation: list, sampler, decode, transform, batch.

Decoding and transforms run inside the GeneratorDataset source (in worker processes when
num_parallel_workers > 1) rather than as mindspore.dataset.vision ops, because their randomness comes
from a per-sample key carried in the sampler's token (src/data/samplers.py), so a batch depends only on
(seed, epoch, rank), not on worker count or global RNG state, and a resumed run (start_epoch=k)
reproduces the augmentations of an uninterrupted one; decoding needs OpenCV anyway (16-bit,
grayscale, palette, alpha).
"""
import os

import mindspore.dataset as ds
import numpy as np

from src.data.decoding import check_files_exist, drop_bad_images, load_image
from src.data.image_list import ImageList, read_image_list
from src.data.samplers import PKSampler, ShuffleSampler, TripletSampler, decode_token
from src.data.transforms import EVAL_RESIZE_MODES, eval_transform, train_transform
from src.runtime.log import get_logger

logger = get_logger()

# Batch layouts: how a training run draws its batches (src/data/samplers.py): every image once in random order;
# consecutive (anchor, positive, negative) triples; P classes x K consecutive images (K = samples_each_class); P x 2
# (anchor, positive) pairs of distinct classes. "eval" reads the list in order. Which layout a loss trains on is its
# registry entry's (src/losses/registry.py); this package knows layouts, not losses.
TRAIN_LAYOUTS = ("shuffle", "triplets", "pk", "pairs")
LAYOUTS = TRAIN_LAYOUTS + ("eval",)
_PER_CLASS = ("pk", "pairs")  # P x K layouts (PKSampler)


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


def create_dataset(dataset_path, list_file, batch_size, image_size, layout, seed=0, start_epoch=0, rank=0,
                   group_size=1, num_parallel_workers=2, samples_each_class=2, hflip=True,
                   eval_resize="crop", skip_bad=False, drop_remainder=None, python_multiprocessing=True,
                   crop_scale_min=0.08):
    """The batched dataset of one batch layout (LAYOUTS), columns ("image" float32 NCHW, "label" int32).

    list_file is relative to dataset_path unless absolute, or an already read ImageList. Training
    layouts draw a new order every epoch from seed + epoch (epoch = start_epoch, start_epoch + 1,
    ... per iterator) and give rank
    `rank` of `group_size` its own equal-sized slice; "pk" takes samples_each_class images of each class,
    "pairs" two; "eval" reads the whole list in order, no
    shuffling, no augmentation, no dropped images, on every rank. skip_bad decodes every listed
    file once up front and drops (and logs) the bad ones instead of failing on them later; without it a
    missing file is a FileNotFoundError here, before any batch (one that does not decode fails when read).
    With num_parallel_workers > 1 the workers are processes (python_multiprocessing=True: scales
    with cores, ~1 ms of transfer per image) or threads (no transfer, but they share the GIL).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if batch_size < 1 or image_size < 1:
        raise ValueError(f"batch_size and image_size must be >= 1, got {batch_size}, {image_size}")
    if eval_resize not in EVAL_RESIZE_MODES:
        raise ValueError(f"eval_resize must be one of {EVAL_RESIZE_MODES}, got {eval_resize!r}")
    train = layout in TRAIN_LAYOUTS
    if layout == "triplets" and batch_size % 3:
        raise ValueError(f"triplets batches: batch_size must be a multiple of 3, got batch_size={batch_size}")
    if layout in _PER_CLASS and batch_size % samples_each_class:
        raise ValueError(f"{layout} batches: batch_size must be a multiple of samples_each_class="
                         f"{samples_each_class}, got batch_size={batch_size}")
    if layout == "pairs" and samples_each_class != 2:
        raise ValueError(f"pairs batches are (anchor, positive) pairs: samples_each_class must be 2, "
                         f"got {samples_each_class}")
    drop_remainder = train if drop_remainder is None else drop_remainder

    if isinstance(list_file, ImageList):
        images = list_file
    else:
        images = read_image_list(os.path.join(dataset_path, list_file), dataset_path)
    images = drop_bad_images(images, num_parallel_workers) if skip_bad else check_files_exist(images)

    sampler = None
    if layout == "shuffle":
        sampler = ShuffleSampler(len(images), seed, start_epoch, rank, group_size)
    elif layout == "triplets":
        sampler = TripletSampler(images.labels, batch_size // 3, seed, start_epoch, rank, group_size)
    elif layout in _PER_CLASS:
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
    logger.info("%s data: %s, %d images, %d classes, %d steps per epoch (rank %d of %d)", layout,
                images.list_file, len(images), len(np.unique(images.labels)), steps, rank, group_size)
    return dataset
