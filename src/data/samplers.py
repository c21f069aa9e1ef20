"""Which images go into each training batch: shuffled singles, triplets, P x K class batches.

Every order is a pure function of (labels, seed, epoch, rank, group_size): the global order of an
epoch is drawn from `seed + epoch` alone and then cut into `group_size` equal, disjoint slices of
whole units (samples, triplets, P x K batches), so that
  - two runs with one seed see the same data, every epoch draws anew,
  - a run resumed at epoch k (`start_epoch=k`) continues exactly as an uninterrupted one,
  - all ranks run the same number of steps.

The `mindspore.dataset.Sampler` subclasses at the bottom are thin wrappers: MindSpore deep-copies
the sampler into every iterator and calls its `__iter__` once per epoch (possibly ahead of time,
to prefetch), so the wrapper counts its own calls: epoch = start_epoch + calls so far. A new
iterator starts again at `start_epoch`.

Each yielded value is a *sample token* `key * num_images + index`: the image index plus a random
augmentation key for that draw, so a worker process can seed its random crop/flip from the token
alone (see `decode_token`). Augmentation is then independent of worker count and scheduling.
"""
import math

import mindspore.dataset as ds
import numpy as np

from src.runtime.log import get_logger

logger = get_logger()

# Augmentation keys stay below 2**31 so that key * num_images + index fits in int64 for any
# list of fewer than 2**31 images.
AUGMENT_KEY_LIMIT = 2**31
_ORDER_STREAM = 0
_AUGMENT_STREAM = 1


def epoch_rng(seed, epoch, stream=_ORDER_STREAM, rank=0):
    """The random generator of one epoch; distinct streams for the order and the augmentation keys."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), stream, int(rank)]))


def _check_rank(rank, group_size):
    if group_size < 1 or not 0 <= rank < group_size:
        raise ValueError(f"rank must be in [0, group_size), got rank={rank}, group_size={group_size}")


def _check_labels(labels):
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    return labels


def class_members(labels, min_images=1):
    """{label: sorted indices of its images} for every label with at least `min_images` images."""
    labels = _check_labels(labels)
    order = np.argsort(labels, kind="stable")
    values, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    return {int(v): order[s:s + c] for v, s, c in zip(values, starts, counts, strict=True) if c >= min_images}


def _units_per_rank(num_images, images_per_unit, units_per_batch, group_size):
    """Whole batches per rank so that an epoch holds about `num_images` images (at least one batch)."""
    units = num_images // images_per_unit
    steps = max(1, math.ceil(units / (units_per_batch * group_size)))
    return steps * units_per_batch


def shuffled_length(num_images, group_size=1):
    """Samples per rank of `shuffled_indices`: ceil(num_images / group_size)."""
    return math.ceil(num_images / group_size)


def shuffled_indices(num_images, seed, epoch, rank=0, group_size=1):
    """A permutation of range(num_images) for softmax/arcmargin training, this rank's slice.

    The permutation is padded by wrapping around to a multiple of group_size, so every rank gets
    ceil(num_images / group_size) samples (a few images are seen twice on multi-rank runs).
    """
    _check_rank(rank, group_size)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    per_rank = shuffled_length(num_images, group_size)
    order = np.resize(epoch_rng(seed, epoch).permutation(num_images), per_rank * group_size)
    return order[rank * per_rank:(rank + 1) * per_rank].astype(np.int64)


def triplet_count(num_images, triplets_per_batch=1, group_size=1):
    """Triplets per rank and epoch: about num_images / 3 over all ranks, rounded up to whole batches."""
    return _units_per_rank(num_images, 3, triplets_per_batch, group_size)


def triplet_indices(labels, seed, epoch, triplets_per_batch=1, rank=0, group_size=1):
    """This rank's triplets of one epoch, flattened as a0, p0, n0, a1, p1, n1, ...

    Anchors run through a fresh permutation of all images whose class has >= 2 images (a new
    permutation starts when one is used up). The positive is another image of the anchor's class,
    the negative any image of another class (one-image classes may serve as negatives only).
    """
    labels = _check_labels(labels)
    _check_rank(rank, group_size)
    anchor_pool = _eligible_images(labels)
    per_rank = triplet_count(len(labels), triplets_per_batch, group_size)
    total = per_rank * group_size
    rng = epoch_rng(seed, epoch)

    passes = math.ceil(total / len(anchor_pool))
    anchors = np.concatenate([rng.permutation(anchor_pool) for _ in range(passes)])[:total]

    # Sorting by label puts each class in one block [start, start + count) of `by_label`.
    by_label = np.argsort(labels, kind="stable")
    rank_in_sorted = np.empty_like(by_label)
    rank_in_sorted[by_label] = np.arange(len(labels))
    values, starts, counts = np.unique(labels[by_label], return_index=True, return_counts=True)
    block = np.searchsorted(values, labels[anchors])
    start, count = starts[block], counts[block]

    # Positive: one of the other count-1 images of the block, skipping the anchor itself.
    offset = rng.integers(0, count - 1)
    offset += offset >= rank_in_sorted[anchors] - start
    positives = by_label[start + offset]
    # Negative: one of the len-count images outside the block.
    outside = rng.integers(0, len(labels) - count)
    outside += np.where(outside >= start, count, 0)
    negatives = by_label[outside]

    triplets = np.stack([anchors, positives, negatives], axis=1)
    return triplets[rank * per_rank:(rank + 1) * per_rank].reshape(-1).astype(np.int64)


def pk_batch_count(num_images, batch_size, group_size=1):
    """P x K batches per rank and epoch: about num_images images over all ranks, at least one."""
    return _units_per_rank(num_images, batch_size, 1, group_size)


def pk_indices(labels, classes_per_batch, samples_per_class, seed, epoch, rank=0, group_size=1):
    """This rank's P x K batches of one epoch, flattened; each batch is P blocks of K images of one class.

    Classes run through a fresh permutation (a batch never holds a class twice). A class with
    fewer than K (but at least 2) images fills its block with all its images plus draws with
    replacement, so it still shows >= 2 distinct images.
    """
    labels = _check_labels(labels)
    _check_rank(rank, group_size)
    p, k = classes_per_batch, samples_per_class
    members = _check_pk(labels, p, k)
    classes = np.array(sorted(members))
    per_rank = pk_batch_count(len(labels), p * k, group_size)
    rng = epoch_rng(seed, epoch)

    batches = []
    pool = rng.permutation(classes)
    for _ in range(per_rank * group_size):
        if len(pool) < p:
            fresh = rng.permutation(classes)
            fresh = fresh[~np.isin(fresh, pool)]
            pool = np.concatenate([pool, fresh])
        chosen, pool = pool[:p], pool[p:]
        blocks = []
        for c in chosen:
            images = members[int(c)]
            if len(images) >= k:
                blocks.append(rng.choice(images, k, replace=False))
            else:
                blocks.append(np.concatenate([rng.permutation(images), rng.choice(images, k - len(images))]))
        batches.append(np.concatenate(blocks))
    batches = np.stack(batches)
    return batches[rank * per_rank:(rank + 1) * per_rank].reshape(-1).astype(np.int64)


def _eligible_classes(labels):
    members = class_members(labels, min_images=2)
    if len(members) < 2:
        raise ValueError(f"need at least 2 classes with >= 2 images to form positives, found {len(members)}")
    return members


def _check_pk(labels, p, k):
    if p < 1 or k < 2:
        raise ValueError(f"need classes_per_batch >= 1 and samples_per_class >= 2, got P={p}, K={k}")
    members = _eligible_classes(labels)
    if p > len(members):
        raise ValueError(f"classes_per_batch P={p} exceeds the {len(members)} classes with >= 2 images")
    return members


def _eligible_images(labels):
    return np.sort(np.concatenate(list(_eligible_classes(labels).values())))


def augment_keys(count, seed, epoch, rank=0):
    """Random augmentation keys for the `count` samples one rank draws in one epoch."""
    return epoch_rng(seed, epoch, _AUGMENT_STREAM, rank).integers(0, AUGMENT_KEY_LIMIT, count)


def encode_tokens(indices, keys, num_images):
    return np.asarray(keys, np.int64) * num_images + np.asarray(indices, np.int64)


def decode_token(token, num_images):
    """(image index, augmentation key) of a sample token."""
    key, index = divmod(int(token), num_images)
    return index, key


def log_excluded_classes(labels, what):
    """Log how many classes (and images) cannot give a positive pair and are left out of `what`."""
    labels = _check_labels(labels)
    _, counts = np.unique(labels, return_counts=True)
    single = int(np.sum(counts < 2))
    if single:
        logger.info("%d of %d classes have a single image and cannot give a positive pair; left out of %s",
                    single, len(counts), what)


class _EpochSampler(ds.Sampler):
    """Yields sample tokens of epoch start_epoch, start_epoch + 1, ... on successive `__iter__` calls."""

    def __init__(self, num_images, length, seed, start_epoch, rank, group_size):
        _check_rank(rank, group_size)
        if num_images >= AUGMENT_KEY_LIMIT:
            raise ValueError(f"at most {AUGMENT_KEY_LIMIT - 1} images supported, got {num_images}")
        # MindSpore's Sampler.__init__ reads __len__, so these must exist before it runs.
        self.num_images = int(num_images)
        self.length = int(length)
        self.seed = int(seed)
        self.start_epoch = int(start_epoch)
        self.rank = int(rank)
        self.group_size = int(group_size)
        self.epochs_started = 0
        super().__init__()

    def __len__(self):
        return self.length

    def epoch_indices(self, epoch):
        raise NotImplementedError

    def epoch_tokens(self, epoch):
        """The tokens `__iter__` yields for `epoch` (pure: does not advance the epoch counter)."""
        indices = self.epoch_indices(epoch)
        keys = augment_keys(len(indices), self.seed, epoch, self.rank)
        return encode_tokens(indices, keys, self.num_images)

    def __iter__(self):
        epoch = self.start_epoch + self.epochs_started
        self.epochs_started += 1
        yield from self.epoch_tokens(epoch).tolist()


class ShuffleSampler(_EpochSampler):
    """Each image once per epoch in random order (softmax / arcmargin training)."""

    def __init__(self, num_images, seed=0, start_epoch=0, rank=0, group_size=1):
        super().__init__(num_images, shuffled_length(num_images, group_size), seed, start_epoch, rank,
                         group_size)

    def epoch_indices(self, epoch):
        return shuffled_indices(self.num_images, self.seed, epoch, self.rank, self.group_size)


class TripletSampler(_EpochSampler):
    """Consecutive (anchor, positive, negative) triples, `triplets_per_batch` of them per batch."""

    def __init__(self, labels, triplets_per_batch, seed=0, start_epoch=0, rank=0, group_size=1):
        self.labels = _check_labels(labels)
        self.triplets_per_batch = int(triplets_per_batch)
        _eligible_classes(self.labels)  # fail now, not in the first epoch
        log_excluded_classes(self.labels, "triplet anchors (still used as negatives)")
        length = 3 * triplet_count(len(self.labels), self.triplets_per_batch, group_size)
        super().__init__(len(self.labels), length, seed, start_epoch, rank, group_size)

    def epoch_indices(self, epoch):
        return triplet_indices(self.labels, self.seed, epoch, self.triplets_per_batch, self.rank,
                               self.group_size)


class PKSampler(_EpochSampler):
    """Batches of P classes x K images, the K images of a class consecutive (quadruplet loss)."""

    def __init__(self, labels, classes_per_batch, samples_per_class, seed=0, start_epoch=0, rank=0,
                 group_size=1):
        self.labels = _check_labels(labels)
        self.classes_per_batch = int(classes_per_batch)
        self.samples_per_class = int(samples_per_class)
        _check_pk(self.labels, self.classes_per_batch, self.samples_per_class)  # fail now, not in epoch 1
        log_excluded_classes(self.labels, "P x K batches")
        batch = self.classes_per_batch * self.samples_per_class
        length = batch * pk_batch_count(len(self.labels), batch, group_size)
        super().__init__(len(self.labels), length, seed, start_epoch, rank, group_size)

    def epoch_indices(self, epoch):
        return pk_indices(self.labels, self.classes_per_batch, self.samples_per_class, self.seed, epoch,
                          self.rank, self.group_size)
