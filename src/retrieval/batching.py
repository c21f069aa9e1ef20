"""One thread that runs a Retriever's model for many callers: the searches queued while it was busy are answered
together, as one batch padded to a few fixed sizes.

MindSpore's cells are not known to be safe to call from several threads at once, so one thread calls the model.
Batching is what makes that thread fast under load: on 2 cores (AVX-512 Xeon) a batch of 16 32-px images took
76 ms, 16 single calls 16 x 38 ms. The batch sizes are powers of two (1, 2, 4, ... max_batch) and warm_up runs each
once, because MindSpore prepares its kernels for each new input shape the first time it comes (1-2 s a size; the
five sizes up to 16 took 7.4 s there): a server would otherwise pay that on the requests of its first busy moments.

    worker = SearchWorker(retriever, max_batch=16)
    worker.warm_up()
    hits, timing = worker.submit(image=rgb_array, k=10).result()   # or submit(features=row, k=10)
"""
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from src.runtime.log import get_logger

logger = get_logger()


def batch_sizes(max_batch):
    """1, 2, 4, ... up to and including `max_batch` (which need not be a power of two)."""
    if int(max_batch) != max_batch or max_batch < 1:
        raise ValueError(f"--max_batch must be a positive integer, got {max_batch}")
    sizes = [1]
    while sizes[-1] * 2 < max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes + ([int(max_batch)] if sizes[-1] != max_batch else [])


_STOP = object()  # queued by close()


@dataclass(frozen=True)
class Timing:
    """Seconds a search waited in the queue and took in the model thread (its whole batch's embedding and search),
    and how many searches that batch held."""

    queued: float
    searched: float
    batch: int


@dataclass
class _Job:
    image: object  # HxWx3 uint8 RGB, or None
    features: object  # one L2-normalised row, or None
    k: int
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class SearchWorker:
    """The model thread of a server. `submit` returns a Future of (hits, Timing); hits as Retriever gives them."""

    def __init__(self, retriever, max_batch=16):
        self.retriever = retriever
        self.sizes = batch_sizes(max_batch)
        self.max_batch = self.sizes[-1]
        size = int(retriever.embedder.settings["image_size"])
        self._blank = np.zeros((size, size, 3), np.uint8)  # what pads a batch to its size
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="search-worker", daemon=True)
        self._thread.start()

    def submit(self, k, image=None, features=None):
        """Queue one search: of a decoded image (embedded first) or of a feature row (searched directly)."""
        if (image is None) == (features is None):
            raise ValueError("a search takes an image or a feature row")
        job = _Job(image, features, int(k))
        self._queue.put(job)
        return job.future

    def warm_up(self):
        """Embed and search a batch of each size once, in the model thread, so that no request pays for compiling
        it; logs how long that took."""
        start = time.perf_counter()
        for size in self.sizes:
            self.call(lambda size=size: self.retriever.search_features(self._embed([self._blank] * size), 1))
        logger.info("model warmed up for batches of %s in %.1f s", ", ".join(map(str, self.sizes)),
                    time.perf_counter() - start)

    def call(self, function):
        """function() run in the model thread, between batches; its result (or its exception, raised here)."""
        future = Future()

        def run():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(function())
                except BaseException as err:  # raised again in the caller's thread
                    future.set_exception(err)

        self._queue.put(run)
        return future.result()

    def close(self):
        """Answer what is queued, then stop the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self):
        pending = None  # what was taken from the queue after a batch and comes next
        while True:
            item = pending if pending is not None else self._queue.get()
            pending = None
            if item is _STOP:
                return
            if not isinstance(item, _Job):  # a call()
                item()
                continue
            jobs = [item]
            while len(jobs) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(item, _Job):
                    pending = item
                    break
                jobs.append(item)
            self._answer(jobs)

    def _embed(self, images):
        """Features of `images`, the batch padded with blank images to the next of self.sizes."""
        size = next(s for s in self.sizes if s >= len(images))
        padded = list(images) + [self._blank] * (size - len(images))
        return self.retriever.embedder.embed_images(padded)[:len(images)]

    def _answer(self, jobs):
        start = time.perf_counter()
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]  # a caller that left: skipped
        if not jobs:
            return
        try:
            images = [job.image for job in jobs if job.image is not None]
            embedded = iter(self._embed(images) if images else ())
            rows = np.stack([next(embedded) if job.image is not None else job.features for job in jobs])
            hits = self.retriever.search_features(rows, max(job.k for job in jobs))
        except Exception as err:  # every caller of the batch hears of it; the thread goes on
            for job in jobs:
                job.future.set_exception(err)
            return
        searched = time.perf_counter() - start
        for job, found in zip(jobs, hits, strict=True):
            job.future.set_result((found[:job.k], Timing(start - job.queued_at, searched, len(jobs))))
