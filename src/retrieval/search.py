"""Nearest-neighbour search over L2-normalised features: exact by default, approximate (faiss) behind the same call.

Similarity is the dot product of L2-normalised float32 rows (cosine similarity), as in src/evaluation/metrics.py.
Every searcher has `search(queries, k) -> (similarities (Q, k) float32, ids (Q, k) int64)`, most similar first;
queries are L2-normalised there (src.evaluation.metrics.l2_normalize_rows), the gallery rows are taken as they are.

  - ExactSearch: the queries against the gallery in blocks (one BLAS matrix product per block, bounded in memory),
    each block's rows merged into a running top-k by a compiled pass (src/retrieval/top_k.py). Exact ties go to the
    lower gallery index, as a stable sort would.
  - IvfSearch: faiss's inverted-file index (IndexIVFFlat, inner product): k-means cells over the gallery, a query
    scans the `nprobe` cells nearest to it. Built with the smallest nprobe whose Recall@10 against ExactSearch,
    measured on a sample of the gallery's own rows (each leaving itself out), reaches `target_recall`; that
    measured recall is kept with it.

`--ann auto` takes the approximate index from AUTO_ANN_ELEMENTS gallery values (rows x dimension) on, where exact
search of one query takes ~60 ms on 2 cores (bench/bench_retrieval.py; bench/results/retrieval_results.md).
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from src.evaluation.metrics import l2_normalize_rows
from src.runtime.log import get_logger

logger = get_logger()

ANN_CHOICES = ("auto", "exact", "faiss")
# 1e5 x 2048 (or 4e5 x 512) float32 values, 0.8 GB: one exact query 62 ms on 2 cores, the IVF index's 1 ms at
# Recall@10 0.99 (bench/results/retrieval_results.md); below it exact search is quick enough and needs no build.
AUTO_ANN_ELEMENTS = 200_000_000
TARGET_RECALL = 0.98
RECALL_K = 10
RECALL_QUERIES = 1000
DEFAULT_BLOCK_BYTES = 64 << 20


def check_top_k(k):
    """`k` as an int >= 1; ValueError naming --top_k otherwise."""
    if int(k) != k or int(k) < 1:
        raise ValueError(f"--top_k must be a positive integer, got {k}")
    return int(k)


def _threads(num_threads):
    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, int(num_threads))


def _check_gallery(features):
    features = np.asarray(features)
    if features.ndim != 2 or features.dtype != np.float32:
        raise ValueError(f"the gallery must be a 2-D float32 array, got shape {features.shape} dtype {features.dtype}")
    if len(features) == 0:
        raise ValueError("the gallery is empty")
    return np.ascontiguousarray(features)


def _queries(queries, dim):
    queries = l2_normalize_rows(np.atleast_2d(queries), "queries")
    if queries.shape[1] != dim:
        raise ValueError(f"queries have dimension {queries.shape[1]}, the gallery {dim}")
    return queries


class ExactSearch:
    """Exact top-k by cosine similarity: blocked matrix products and a compiled running top-k."""

    kind = "exact"

    def __init__(self, features, block_bytes=DEFAULT_BLOCK_BYTES, num_threads=None):
        self.features = _check_gallery(features)
        self.block_bytes = int(block_bytes)
        self.num_threads = _threads(num_threads)

    def __len__(self):
        return len(self.features)

    def describe(self):
        return f"exact search over {len(self)} items"

    def search(self, queries, k, normalized=False):
        """(similarities (Q, k), ids (Q, k)), k clipped to the gallery size. `normalized`: the queries' rows are
        L2-normalised float32 already (the index's own rows)."""
        from src.retrieval.top_k import merge_top_k  # numba: compiled once per machine, then loaded from its cache

        k = min(check_top_k(k), len(self))
        gallery = self.features
        queries = np.ascontiguousarray(queries, np.float32) if normalized else _queries(queries, gallery.shape[1])
        num_queries = len(queries)
        best_sim = np.full((num_queries, k), -np.inf, np.float32)
        best_id = np.full((num_queries, k), -1, np.int64)
        rows = max(1, min(num_queries, 1024))
        columns = max(k, min(len(gallery), self.block_bytes // (4 * rows)))
        block = np.empty((rows, columns), np.float32)
        with ThreadPoolExecutor(self.num_threads) as pool:
            for q0 in range(0, num_queries, rows):
                q1 = min(q0 + rows, num_queries)
                parts = np.array_split(np.arange(q1 - q0), min(self.num_threads, q1 - q0))
                for g0 in range(0, len(gallery), columns):
                    g1 = min(g0 + columns, len(gallery))
                    sim = block[:q1 - q0, :g1 - g0]
                    np.matmul(queries[q0:q1], gallery[g0:g1].T, out=sim)
                    jobs = [pool.submit(merge_top_k, sim[p[0]:p[-1] + 1], g0, best_sim[q0 + p[0]:q0 + p[-1] + 1],
                                        best_id[q0 + p[0]:q0 + p[-1] + 1]) for p in parts if len(p)]
                    for job in jobs:
                        job.result()
        return best_sim, best_id


def import_faiss():
    """The faiss module; ValueError saying how to install it if it is missing."""
    try:
        import faiss
    except ImportError as err:
        raise ValueError(f"--ann faiss needs the faiss-cpu package (pip install -r requirements.txt): {err}") from None
    return faiss


class IvfSearch:
    """faiss IndexIVFFlat (inner product) with the nprobe tuned to a measured Recall@10 against exact search."""

    kind = "faiss-ivf"

    def __init__(self, index, recall=None, num_threads=None):
        self.faiss = import_faiss()
        self.index = index
        self.recall = recall
        self.num_threads = _threads(num_threads)

    def __len__(self):
        return self.index.ntotal

    @property
    def nprobe(self):
        return self.index.nprobe

    @property
    def nlist(self):
        return self.index.nlist

    def describe(self):
        recall = f", Recall@{RECALL_K} {self.recall:.4f} against exact search (measured)" if self.recall else ""
        return f"faiss IVF-Flat over {len(self)} items, {self.nlist} cells, nprobe {self.nprobe}{recall}"

    def settings(self):
        """What the manifest records of it."""
        return {"kind": "faiss IndexIVFFlat", "nlist": int(self.nlist), "nprobe": int(self.nprobe),
                f"recall_at_{RECALL_K}": self.recall, "faiss": self.faiss.__version__}

    @staticmethod
    def cells_for(count):
        """nlist: a power of two near sqrt(count), at most count / 32 (k-means needs points per centroid)."""
        return int(max(1, min(2 ** round(math.log2(max(1.0, math.sqrt(count)))), count // 32)))

    @classmethod
    def build(cls, features, target_recall=TARGET_RECALL, num_threads=None, seed=0, sample=RECALL_QUERIES,
              nlist=None):
        """Train the cells (spherical k-means on <= 32 points per cell), add `features` (float32, rows L2-normalised)
        and pick the smallest power-of-two nprobe reaching `target_recall` (measure_recall)."""
        faiss = import_faiss()
        threads = _threads(num_threads)
        faiss.omp_set_num_threads(threads)
        features = _check_gallery(features)
        count, dim = features.shape
        nlist = cls.cells_for(count) if nlist is None else int(nlist)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.spherical = True
        index.cp.seed = seed
        index.cp.niter = 10
        index.cp.min_points_per_centroid = 1
        index.cp.max_points_per_centroid = 32
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(count, size=min(count, 32 * nlist), replace=False))
        index.train(features[train])
        # The cells of every row by our exact search against the centroids: faiss's own assignment runs its BLAS,
        # ~3x slower than numpy's here (bench/results/retrieval_results.md).
        centroids = faiss.rev_swig_ptr(quantizer.get_xb(), nlist * dim).reshape(nlist, dim).copy()
        assign = ExactSearch(centroids, num_threads=threads)
        step = 65536
        for start in range(0, count, step):
            chunk = features[start:start + step]
            cells = np.ascontiguousarray(assign.search(chunk, 1, normalized=True)[1][:, 0])
            index.add_core(len(chunk), faiss.swig_ptr(chunk), None, faiss.swig_ptr(cells))
        searcher = cls(index, num_threads=threads)
        exact = ExactSearch(features, num_threads=threads)
        queries = np.sort(rng.choice(count, size=min(count, sample), replace=False))
        truth = _without_self(exact.search(features[queries], RECALL_K + 1, normalized=True)[1], queries)
        nprobe = 1
        while True:
            index.nprobe = nprobe
            found = _without_self(searcher.search(features[queries], RECALL_K + 1, normalized=True)[1], queries)
            searcher.recall = recall_against(found, truth)
            if searcher.recall >= target_recall or nprobe >= nlist:
                break
            nprobe = min(2 * nprobe, nlist)
        logger.info("approximate index: %s", searcher.describe())
        if searcher.recall < target_recall:
            logger.warning("approximate index: Recall@%d %.4f stays below %.2f even scanning every cell",
                           RECALL_K, searcher.recall, target_recall)
        return searcher

    def search(self, queries, k, normalized=False):
        k = min(check_top_k(k), len(self))
        queries = np.ascontiguousarray(queries, np.float32) if normalized else _queries(queries, self.index.d)
        self.faiss.omp_set_num_threads(self.num_threads)
        sims, ids = self.index.search(queries, k)
        return sims.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def save(self, path):
        self.faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path, recall=None, num_threads=None):
        faiss = import_faiss()
        try:
            index = faiss.read_index(path)
        except RuntimeError as err:
            raise ValueError(f"{path} is not a readable faiss index ({str(err).strip().splitlines()[-1]}): an "
                             f"interrupted or damaged index; rebuild it") from None
        return cls(index, recall, num_threads)  # read_index gives the IndexIVFFlat itself


def _without_self(ids, query_ids):
    """Each row's ids without the query's own id (or, when it was not found, without the last), k - 1 columns."""
    ids = np.asarray(ids)
    keep = ids != np.asarray(query_ids)[:, None]
    missing = keep.all(axis=1)
    keep[missing, -1] = False
    return ids[keep].reshape(len(ids), ids.shape[1] - 1)


def recall_against(found, truth):
    """Mean over rows of |found_row & truth_row| / len(truth_row): an approximate top-k's recall of the exact one."""
    found, truth = np.asarray(found), np.asarray(truth)
    hits = sum(len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True))
    return float(hits / truth.size)


def faiss_available():
    try:
        import_faiss()
    except ValueError:
        return False
    return True


def check_ann(ann):
    """`ann` if it is one of ANN_CHOICES ("faiss": and faiss is installed), else ValueError naming --ann."""
    if ann not in ANN_CHOICES:
        raise ValueError(f"--ann must be one of {', '.join(ANN_CHOICES)}, got {ann!r}")
    if ann == "faiss":
        import_faiss()
    return ann


def wants_ann(ann, count, dim):
    """Whether --ann `ann` means the approximate index for a gallery of count x dim values ("auto": from
    AUTO_ANN_ELEMENTS on, when faiss is installed)."""
    if check_ann(ann) == "faiss":
        return True
    return ann == "auto" and count * dim >= AUTO_ANN_ELEMENTS and faiss_available()


def ann_builder(ann, num_threads=None):
    """For src.retrieval.index.build_index: features -> the IvfSearch to store when wants_ann, else None."""
    check_ann(ann)

    def build(features):
        return IvfSearch.build(features, num_threads=num_threads) if wants_ann(ann, *features.shape) else None

    return build
