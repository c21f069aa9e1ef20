"""The model thread of the server: searches queued together are answered as padded batches, each with the results
it would get alone; a failure reaches every caller of its batch and the thread goes on."""
import threading
import time
from concurrent.futures import CancelledError

import numpy as np
import pytest

from src.retrieval.batching import SearchWorker, batch_sizes
from src.retrieval.index import UNKNOWN_LABEL, RetrievalIndex
from src.retrieval.retriever import Retriever
from src.retrieval.search import ExactSearch
from tests.retrieval.stub import PixelEmbedder


class GatedEmbedder(PixelEmbedder):
    """PixelEmbedder that records each batch's size and, while `gate` is clear, holds the batch it is embedding."""

    def __init__(self):
        super().__init__()
        self.sizes = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def embed_images(self, images):
        self.sizes.append(len(images))
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("the model failed")
        return super().embed_images(images)


def images(count, seed=0):
    return [np.random.default_rng([seed, i]).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(count)]


def wait_until(condition, seconds=10):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def same_hits(a, b):
    return [h.id for h in a] == [h.id for h in b] and np.allclose([h.similarity for h in a],
                                                                  [h.similarity for h in b], atol=1e-6)


@pytest.fixture
def worker():
    embedder = GatedEmbedder()
    features = PixelEmbedder().embed_images(images(40, seed=1))
    index = RetrievalIndex("/nowhere", {"labels": False}, features, [f"{i}.png" for i in range(40)], ["0" * 64] * 40,
                           np.full(40, UNKNOWN_LABEL, np.int64))
    worker = SearchWorker(Retriever(index, embedder, ExactSearch(features)), max_batch=8)
    yield worker, embedder, features
    embedder.gate.set()
    worker.close()


@pytest.mark.parametrize(("largest", "sizes"), [(16, [1, 2, 4, 8, 16]), (12, [1, 2, 4, 8, 12]), (1, [1]),
                                                (2, [1, 2])])
def test_batch_sizes_are_powers_of_two_up_to_the_largest(largest, sizes):
    assert batch_sizes(largest) == sizes


@pytest.mark.parametrize("largest", [0, -2, 2.5])
def test_a_batch_size_below_one_is_refused(largest):
    with pytest.raises(ValueError, match="--max_batch must be a positive integer"):
        batch_sizes(largest)


def test_queued_searches_are_answered_together_as_padded_batches(worker):
    worker, embedder, features = worker
    queries = images(11, seed=2)
    alone = [worker.submit(5, image=image).result()[0] for image in queries[:3]]
    assert embedder.sizes == [1, 1, 1]
    embedder.gate.clear()  # the first search holds the thread while the others queue
    first = worker.submit(5, image=queries[0])
    wait_until(lambda: len(embedder.sizes) == 4)
    futures = [worker.submit(4, features=features[7])]
    futures += [worker.submit(3 + i % 4, image=image) for i, image in enumerate(queries[1:])]
    embedder.gate.set()
    answers = [future.result(10) for future in [first, *futures]]
    # 1 alone; then 8 (the largest batch) of the 11 queued: the feature row and 7 images, padded to 8; then the
    # other 3 images, padded to 4
    assert embedder.sizes[3:] == [1, 8, 4]
    assert [timing.batch for _, timing in answers] == [1] + [8] * 8 + [3] * 3
    assert same_hits(answers[0][0], alone[0])
    row_hits, _ = answers[1]
    assert row_hits[0].id == 7 and len(row_hits) == 4
    for i, (hits, _) in enumerate(answers[2:4], start=1):
        assert len(hits) == 3 + (i - 1) % 4 and same_hits(hits, alone[i][:len(hits)])
    assert all(timing.queued >= 0 and timing.searched > 0 for _, timing in answers)


def test_a_failure_reaches_every_caller_of_its_batch_and_the_thread_goes_on(worker):
    worker, embedder, _ = worker
    embedder.fail = True
    embedder.gate.clear()
    futures = [worker.submit(2, image=image) for image in images(3)]
    embedder.gate.set()
    for future in futures:
        with pytest.raises(RuntimeError, match="the model failed"):
            future.result(10)
    embedder.fail = False
    assert len(worker.submit(2, image=images(1)[0]).result(10)[0]) == 2


def test_a_cancelled_search_is_skipped(worker):
    worker, embedder, _ = worker
    embedder.gate.clear()
    held = worker.submit(2, image=images(1)[0])
    wait_until(lambda: embedder.sizes)
    gone, kept = (worker.submit(2, image=image) for image in images(2, seed=3))
    assert gone.cancel()
    embedder.gate.set()
    assert held.result(10) and kept.result(10)
    assert embedder.sizes == [1, 1]
    with pytest.raises(CancelledError):
        gone.result()


def test_warm_up_embeds_each_batch_size_once_in_the_model_thread(worker):
    worker, embedder, _ = worker
    threads = []
    original = embedder.embed_images
    embedder.embed_images = lambda batch: threads.append(threading.current_thread().name) or original(batch)
    worker.warm_up()
    assert embedder.sizes == [1, 2, 4, 8] and set(threads) == {"search-worker"}


def test_a_search_takes_an_image_or_features(worker):
    worker, _, features = worker
    with pytest.raises(ValueError, match="an image or a feature row"):
        worker.submit(3, image=images(1)[0], features=features[0])
