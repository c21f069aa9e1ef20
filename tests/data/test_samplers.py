import mindspore.dataset as ds
import numpy as np
import pytest

from src.data.samplers import (
    PKSampler,
    ShuffleSampler,
    TripletSampler,
    decode_token,
    pk_batch_count,
    pk_indices,
    shuffled_indices,
    triplet_count,
    triplet_indices,
)

# 12 classes: two with a single image (3 and 9), one with exactly 2, the rest 3..6.
CLASS_SIZES = [4, 2, 5, 1, 6, 3, 3, 4, 2, 1, 5, 3]


@pytest.fixture
def labels():
    labels = np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)
    return np.random.default_rng(7).permutation(labels).astype(np.int32)


def singletons(labels):
    values, counts = np.unique(labels, return_counts=True)
    return set(values[counts == 1].tolist())


def test_shuffled_single_rank_is_a_permutation():
    order = shuffled_indices(17, seed=3, epoch=0)
    assert sorted(order.tolist()) == list(range(17))


@pytest.mark.parametrize("num_images,group_size", [(12, 3), (10, 3), (5, 4)])
def test_shuffled_rank_slices_equal_disjoint_and_covering(num_images, group_size):
    slices = [shuffled_indices(num_images, 1, 2, rank, group_size) for rank in range(group_size)]
    assert len({len(s) for s in slices}) == 1
    everything = np.concatenate(slices)
    assert set(everything.tolist()) == set(range(num_images))
    # Positions are disjoint; only the wrap-around padding repeats images.
    assert len(everything) - len(set(everything.tolist())) == len(everything) - num_images


def check_triplets(flat, labels):
    assert len(flat) % 3 == 0
    a, p, n = flat.reshape(-1, 3).T
    assert np.all(labels[a] == labels[p])
    assert np.all(a != p)
    assert np.all(labels[n] != labels[a])
    assert not {int(labels[i]) for i in a} & singletons(labels)


@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_triplets_are_valid(labels, epoch):
    flat = triplet_indices(labels, seed=0, epoch=epoch, triplets_per_batch=2)
    check_triplets(flat, labels)
    assert len(flat) == 3 * triplet_count(len(labels), 2)


def test_triplet_epoch_holds_about_num_images_in_whole_batches():
    assert triplet_count(29437, 20, 8) == 62 * 20  # the seed: 62 steps of 20 triplets on 8 devices
    assert triplet_count(100, 4) == 36  # 33 triplets rounded up to 9 batches of 4
    assert triplet_count(2, 4) == 4  # at least one batch


def test_triplet_anchors_run_through_a_permutation(labels):
    flat = triplet_indices(labels, seed=4, epoch=0)
    anchors = flat[0::3]
    assert len(anchors) <= np.sum(~np.isin(labels, list(singletons(labels))))
    assert len(set(anchors.tolist())) == len(anchors)


def test_triplets_with_more_draws_than_anchors_stay_valid():
    labels = np.array([0, 0, 1, 1, 2] * 3, np.int32)  # 15 images, 3 batches of 2 triplets needed
    flat = triplet_indices(labels, 0, 0, triplets_per_batch=2)
    check_triplets(flat, labels)
    assert len(flat) == 3 * 6


@pytest.mark.parametrize("p,k", [(3, 2), (4, 3), (2, 5)])
def test_pk_batches_hold_p_classes_of_k_consecutive_images(labels, p, k):
    flat = pk_indices(labels, p, k, seed=1, epoch=2)
    assert len(flat) == p * k * pk_batch_count(len(labels), p * k)
    for batch in flat.reshape(-1, p * k):
        blocks = labels[batch].reshape(p, k)
        assert np.all(blocks == blocks[:, :1])
        assert len(set(blocks[:, 0].tolist())) == p
        assert not set(blocks[:, 0].tolist()) & singletons(labels)
        for block in batch.reshape(p, k):
            assert len(set(block.tolist())) >= 2
            # Without replacement unless the class is smaller than K.
            class_size = np.sum(labels == labels[block[0]])
            assert len(set(block.tolist())) == min(k, class_size)


def test_pk_classes_come_from_permutations(labels):
    flat = pk_indices(labels, 2, 2, seed=0, epoch=0)  # 6 batches x 2 classes = 12 draws of 10 classes
    classes = labels[flat[0::2]]
    assert len(set(classes[:10].tolist())) == 10


def test_pk_rejects_bad_shapes(labels):
    with pytest.raises(ValueError, match="P=11 exceeds the 10 classes"):
        pk_indices(labels, 11, 2, 0, 0)
    with pytest.raises(ValueError, match="samples_each_class|K=1"):
        pk_indices(labels, 2, 1, 0, 0)


def test_too_few_usable_classes_fail_clearly():
    labels = np.array([0, 0, 1, 2, 3], np.int32)
    with pytest.raises(ValueError, match="at least 2 classes with >= 2 images"):
        triplet_indices(labels, 0, 0)
    with pytest.raises(ValueError, match="at least 2 classes with >= 2 images"):
        PKSampler(labels, 1, 2)


@pytest.mark.parametrize("draw", [
    lambda labels, seed, epoch, rank=0, group=1: shuffled_indices(len(labels), seed, epoch, rank, group),
    lambda labels, seed, epoch, rank=0, group=1: triplet_indices(labels, seed, epoch, 2, rank, group),
    lambda labels, seed, epoch, rank=0, group=1: pk_indices(labels, 3, 2, seed, epoch, rank, group),
], ids=["shuffled", "triplet", "pk"])
def test_orders_are_pure_and_differ_between_epochs_and_seeds(labels, draw):
    first = draw(labels, 5, 0)
    assert np.array_equal(first, draw(labels, 5, 0))
    assert not np.array_equal(first, draw(labels, 5, 1))
    assert not np.array_equal(first, draw(labels, 6, 0))


def test_triplet_rank_slices_are_disjoint_whole_triplets_of_equal_length(labels):
    group = 3
    slices = [triplet_indices(labels, 2, 1, 1, rank, group) for rank in range(group)]
    assert len({len(s) for s in slices}) == 1
    assert len(slices[0]) == 3 * triplet_count(len(labels), 1, group)
    for flat in slices:
        check_triplets(flat, labels)
    # Fewer triplets than anchors in total, so the ranks' anchors come from one permutation.
    anchors = np.concatenate([s[0::3] for s in slices])
    assert len(set(anchors.tolist())) == len(anchors)


def test_pk_rank_slices_are_whole_batches_of_equal_length(labels):
    group, p, k = 2, 3, 2
    slices = [pk_indices(labels, p, k, 0, 3, rank, group) for rank in range(group)]
    assert len(slices[0]) == len(slices[1]) == p * k * pk_batch_count(len(labels), p * k, group)
    for flat in slices:
        for batch in flat.reshape(-1, p * k):
            assert len(set(labels[batch].tolist())) == p
    # The ranks' slices are consecutive pieces of one epoch: its first 3 batches (9 of the 10
    # usable classes) come from one class permutation, so no class repeats among them.
    stream = labels[np.concatenate(slices)[0::k]]
    assert len(set(stream[:9].tolist())) == 9


def test_sampler_counts_epochs_from_start_epoch(labels):
    sampler = TripletSampler(labels, 2, seed=9, start_epoch=0)
    epochs = [list(sampler), list(sampler)]
    assert len(epochs[0]) == len(sampler)
    assert epochs[0] == sampler.epoch_tokens(0).tolist()
    assert epochs[1] == sampler.epoch_tokens(1).tolist()
    resumed = TripletSampler(labels, 2, seed=9, start_epoch=1)
    assert list(resumed) == epochs[1]
    indices = [decode_token(t, len(labels))[0] for t in epochs[0]]
    assert indices == triplet_indices(labels, 9, 0, 2).tolist()


def test_sampler_logs_excluded_single_image_classes(labels, caplog):
    with caplog.at_level("INFO"):
        PKSampler(labels, 3, 2)
    assert "2 of 12 classes have a single image" in caplog.text


class IndexSource:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, token):
        return np.array(token, np.int64)


@pytest.mark.parametrize("make", [
    lambda labels, start: ShuffleSampler(len(labels), seed=3, start_epoch=start),
    lambda labels, start: TripletSampler(labels, 2, seed=3, start_epoch=start),
    lambda labels, start: PKSampler(labels, 3, 2, seed=3, start_epoch=start, rank=1, group_size=2),
], ids=["shuffle", "triplet", "pk"])
def test_generator_dataset_draws_each_epoch_from_the_sampler(labels, make):
    def run(start):
        sampler = make(labels, start)
        dataset = ds.GeneratorDataset(IndexSource(len(labels)), ["token"], sampler=sampler,
                                      num_parallel_workers=2, python_multiprocessing=False)
        iterator = dataset.create_tuple_iterator(num_epochs=2, output_numpy=True)
        return [[int(row[0]) for row in iterator] for _ in range(2)]

    first, second = run(start=0)
    reference = make(labels, 0)
    assert first == reference.epoch_tokens(0).tolist()
    assert second == reference.epoch_tokens(1).tolist()
    assert first != second
    # A run resumed at epoch 1 continues with the uninterrupted run's epoch 1.
    assert run(start=1)[0] == second
