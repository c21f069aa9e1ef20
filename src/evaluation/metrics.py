"""Retrieval metrics: Recall@K, MAP@R and R-precision, exact, without an N x N matrix.

Every query is ranked against the whole gallery by cosine similarity (the dot product of
L2-normalised float32 features; the same order as squared Euclidean distance on the unit sphere).
Queries are processed in blocks whose similarity block (block x gallery, float32) fits in
`memory_budget_bytes`; the block is one BLAS matrix product, and within it only what the metrics
need is selected:
  - Recall@K needs only the rank of each query's best positive: the number of gallery items
    ranked ahead of it, a comparison count over the row.
  - MAP@R and R-precision need only the top R of the ranking (R = number of positives, small
    on retrieval benchmarks).
Both come from one compiled pass over each row (src/evaluation/metrics_kernel.py), rows scored in parallel
threads: about one comparison per item, against the 2*d flops per item of the product (measured
in bench/bench_metrics.py).

Definitions (`retrieval_metrics` is leave-one-out, `query_gallery_metrics` has no self-exclusion):
  - positives of a query: the other gallery items with its label; R = how many there are.
  - ranking: gallery items (the query itself excluded in leave-one-out) by descending
    similarity; exact ties are broken by gallery index, lower first, as a stable sort would.
    That is, 0-based rank of item j = #{g: s_g > s_j} + #{g < j: s_g == s_j}.
  - "recall@K": fraction of ALL queries with at least one positive among their first K items.
    A query without positives (a one-image class) counts as a miss. K larger than the gallery
    (N - 1 items in leave-one-out) is clipped to the gallery size with a warning; the key keeps
    the K that was asked for.
  - "map@r": mean over queries with R >= 1 of (1/R) * sum_{i<=R, item i positive} precision@i.
  - "r_precision": mean over queries with R >= 1 of (positives among the first R) / R.
    Both are NaN when no query has a positive; queries without positives are left out of both.
  - "num_queries": number of queries; "num_queries_with_positives": queries with R >= 1.
Exact duplicate gallery vectors get exactly equal similarities (BLAS may round a product
differently by its position in the matrix), so their tie is decided by index as well.
"""
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from src.runtime.log import Progress, get_logger

logger = get_logger()

DEFAULT_KS = (1, 10, 100, 1000)
DEFAULT_MEMORY_BUDGET = 1 << 30
# Rows scored together by one thread: about 2M similarities (8 MB).
_CHUNK_ELEMENTS = 1 << 21
# Blocks of at most this: the first touch of a fresh GB-sized buffer costs more in page faults than
# larger products gain (measured: 1.3 s extra at N = 20,000, d = 512).
_MAX_BLOCK_BYTES = 256 << 20
_MAX_LISTED = 5


def retrieval_metrics(features, labels, ks=DEFAULT_KS, memory_budget_bytes=DEFAULT_MEMORY_BUDGET,
                      logger=None, num_threads=None, per_query=False, normalize=True):
    """Leave-one-out retrieval metrics: every item queries all the others.

    Args:
        features: (N, d) real array; rows are L2-normalised here (l2_normalize_rows, float32) unless
            normalize=False: then they already are (l2_normalize_rows's output) and are ranked as given.
        labels: (N,) class labels (any type `np.unique` can sort).
        ks: the K of Recall@K.
        memory_budget_bytes: bound for the similarity block (the
            normalised float32 copy of the features, N*d*4 bytes, comes on top).
        logger: where progress (done/total, rate, ETA every ~10 s) goes; None: no progress.
            Warnings go to this logger, or to the module's logger when None.
        num_threads: threads for the post-processing of each block (default: available cores).
        per_query: also return each query's own values (what the summary metrics average; the bootstrap
            intervals of src/evaluation/bootstrap.py resample them).
    Returns:
        dict: "recall@K" for each K, "map@r", "r_precision", "num_queries",
        "num_queries_with_positives" (see the module docstring for the definitions).
        With per_query: (that dict, {"recall@K": float64 0/1 per query, "map@r": AP@R per query, NaN for a
        query without positives}).
    """
    labels = _check_labels(labels, features, "features", "labels")
    if len(labels) < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items, got {len(labels)}")
    gallery = unit_rows(features, "features", normalize)
    class_ids = np.unique(labels, return_inverse=True)[1].reshape(-1)
    return _evaluate(gallery, gallery, class_ids, class_ids, leave_one_out=True, ks=ks,
                     memory_budget_bytes=memory_budget_bytes, progress_logger=logger,
                     num_threads=num_threads, per_query=per_query)


def query_gallery_metrics(query_features, query_labels, gallery_features, gallery_labels,
                          ks=DEFAULT_KS, memory_budget_bytes=DEFAULT_MEMORY_BUDGET, logger=None,
                          num_threads=None, per_query=False, normalize=True):
    """Query/gallery retrieval metrics: each query ranks the whole gallery (no self-exclusion).

    R of a query is the number of gallery items with its label. Arguments (`normalize` for both
    feature arrays) and returned keys as in `retrieval_metrics`.
    """
    query_labels = _check_labels(query_labels, query_features, "query_features", "query_labels")
    gallery_labels = _check_labels(gallery_labels, gallery_features, "gallery_features",
                                   "gallery_labels")
    if len(query_labels) == 0 or len(gallery_labels) == 0:
        raise ValueError(f"need at least one query and one gallery item, got {len(query_labels)} "
                         f"queries and {len(gallery_labels)} gallery items")
    queries = unit_rows(query_features, "query_features", normalize)
    gallery = unit_rows(gallery_features, "gallery_features", normalize)
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery features differ in dimension: "
                         f"{queries.shape[1]} != {gallery.shape[1]}")
    class_ids = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)[1]
    class_ids = class_ids.reshape(-1)
    return _evaluate(queries, gallery, class_ids[:len(query_labels)],
                     class_ids[len(query_labels):], leave_one_out=False, ks=ks,
                     memory_budget_bytes=memory_budget_bytes, progress_logger=logger,
                     num_threads=num_threads, per_query=per_query)


class NoPositivesError(ValueError):
    """No query of an evaluation has a positive: every Recall@K would be 0 and MAP@R undefined."""


def check_positives(labels, what, log=None):
    """Before a leave-one-out evaluation: how many of `labels`' items are the only one of their class.

    Such an item has no positive as a query (a miss in Recall@K, left out of MAP@R). If that is every
    item, raises NoPositivesError naming `what` (the list or folder the labels come from); if it is
    some, logs a warning with the count. Returns the count.
    """
    labels = np.asarray(labels).reshape(-1)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    alone = int(np.count_nonzero(counts[inverse.reshape(-1)] == 1))
    return _report_without_positives(
        alone, len(labels), log,
        f"{what}: each of its {len(labels)} images is the only one of its class, so no query has a positive: "
        f"Recall@K would be 0 and MAP@R undefined; evaluate on a list with at least 2 images of each class (SOP's "
        f"test.txt / test_half.txt)",
        f"{what}: {alone} of {len(labels)} images are the only one of their class: as queries they have no "
        f"positive, count as misses in Recall@K and are left out of MAP@R")


def check_query_positives(query_labels, gallery_labels, what, log=None):
    """Before a query/gallery evaluation: how many queries have no gallery item of their class. All of them ->
    NoPositivesError naming `what`; some -> a warning with the count. Returns the count."""
    query_labels = np.asarray(query_labels).reshape(-1)
    alone = int(np.count_nonzero(~np.isin(query_labels, np.asarray(gallery_labels).reshape(-1))))
    return _report_without_positives(
        alone, len(query_labels), log,
        f"{what}: none of its {len(query_labels)} queries has a gallery image of its class: Recall@K would be 0 "
        f"and MAP@R undefined (are the lists of the same dataset?)",
        f"{what}: {alone} of {len(query_labels)} queries have no gallery image of their class: they count as "
        f"misses in Recall@K and are left out of MAP@R")


def _report_without_positives(alone, total, log, error, warning):
    """`alone` of `total` queries have no positive: all -> NoPositivesError(error), some -> warning. Returns it."""
    if total and alone == total:
        raise NoPositivesError(error)
    if alone:
        (log or logger).warning("%s", warning)
    return alone


def format_metrics_table(metrics):
    """Two aligned columns, one metric per line: `name  value` (fractions with 4 decimals)."""
    width = max((len(name) for name in metrics), default=0)
    lines = []
    for name, value in metrics.items():
        text = f"{value:d}" if isinstance(value, (int, np.integer)) else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {text:>8}")
    return "\n".join(lines)


def l2_normalize_rows(features, name="features"):
    """Rows scaled to unit L2 norm, as a new float32 array: the L2 normalisation of numpy features
    (src.models.resnet.l2_normalize is the network's, on MindSpore tensors).

    Computed in float64, each row first scaled by a power of two near its largest magnitude
    (exact), so neither huge nor tiny values overflow; the same row always gives the same bytes.
    Raises ValueError naming `name` and the rows that hold NaN/Inf or are all zero.
    """
    x = _check_rows(features, name)
    n, dim = x.shape
    out = np.empty((n, dim), dtype=np.float32)
    rows = max(1, _CHUNK_ELEMENTS // dim)  # cache-sized float64 chunks
    nonfinite, zero = [], []
    for start in range(0, n, rows):
        block = x[start:start + rows].astype(np.float64)
        magnitude = np.maximum(block.max(axis=1), -block.min(axis=1))  # NaN and Inf propagate
        finite = np.isfinite(magnitude)
        nonfinite.append(start + np.flatnonzero(~finite))
        zero.append(start + np.flatnonzero(magnitude == 0))
        usable = finite & (magnitude > 0)
        exponent = np.frexp(np.where(usable, magnitude, 1.0))[1]
        block *= np.ldexp(1.0, -exponent)[:, None]
        norm = np.sqrt(np.add.reduce(np.square(block), axis=1))
        norm[~usable] = 1.0
        block /= norm[:, None]
        chunk = out[start:start + rows]
        chunk[...] = block
        chunk += np.float32(0.0)  # -0.0 -> +0.0: equal vectors are equal bytes (_first_equal_row)
    problems = []
    for what, found in (("NaN or Inf values", np.concatenate(nonfinite)),
                        ("zero norm", np.concatenate(zero))):
        if len(found):
            problems.append(f"{len(found)} row(s) with {what} "
                            f"(first indices: {found[:_MAX_LISTED].tolist()})")
    if problems:
        raise ValueError(f"{name} cannot be L2-normalised: " + "; ".join(problems))
    return out


def _check_rows(features, name):
    """`features` as an array, checked to be a 2-D real (items, dim) array with dim >= 1."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dim) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero feature dimension (shape {x.shape})")
    return x


def unit_rows(features, name="features", normalize=True):
    """The float32 unit rows to rank by: l2_normalize_rows(features), or with normalize=False the features as
    given (already its output), only checked to be a 2-D real array."""
    if normalize:
        return l2_normalize_rows(features, name)
    return np.ascontiguousarray(_check_rows(features, name), dtype=np.float32)


def _check_labels(labels, features, features_name, labels_name):
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{labels_name} must be 1-D, got shape {labels.shape}")
    num_rows = np.shape(features)[0] if np.ndim(features) >= 1 else None
    if num_rows != len(labels):
        raise ValueError(f"{features_name} has {num_rows} rows but {labels_name} has "
                         f"{len(labels)} entries; expected one label per row")
    return labels


def _clip_ks(ks, gallery_size, log):
    ks = sorted({int(k) for k in np.atleast_1d(ks)})
    if ks and ks[0] < 1:
        raise ValueError(f"every K of Recall@K must be >= 1, got {ks}")
    clipped = {k: min(k, gallery_size) for k in ks}
    too_large = [k for k in ks if k > gallery_size]
    if too_large:
        log.warning("Recall@K for K=%s exceeds the %d rankable gallery items; computed with "
                    "K=%d (the key keeps the K asked for)", too_large, gallery_size, gallery_size)
    return clipped


def _evaluate(queries, gallery, query_class, gallery_class, leave_one_out, ks,
              memory_budget_bytes, progress_logger, num_threads, per_query=False):
    """The shared core: rank of the best positive, AP@R and R-precision for every query."""
    from src.evaluation.metrics_kernel import score_rows  # numba: compiled once per machine, then loaded from its cache

    num_queries, num_gallery = len(queries), len(gallery)
    warn_log = progress_logger or logger
    ks = _clip_ks(ks, num_gallery - 1 if leave_one_out else num_gallery, warn_log)
    max_k = max(ks.values(), default=0)

    # Class structure: gallery indices sorted by class, so each class is one contiguous range
    # (indices ascending within it, for the index tie rule).
    order = np.argsort(gallery_class, kind="stable")
    num_classes = int(max(query_class.max(initial=-1), gallery_class.max(initial=-1))) + 1
    class_size = np.bincount(gallery_class, minlength=num_classes)
    class_start = np.concatenate([[0], np.cumsum(class_size)[:-1]])
    num_pos = class_size[query_class] - (1 if leave_one_out else 0)

    # BLAS rounds a product differently depending on where the column falls in its kernel
    # tiles, so exact duplicates in the gallery could get similarities 1 ulp apart; copying the
    # first copy's column onto the others keeps their tie exact (ranked by index, like a sort of
    # elementwise distances would).
    first_copy = _first_equal_row(gallery)
    dup_cols = np.flatnonzero(first_copy != np.arange(num_gallery))
    dup_source = first_copy[dup_cols]

    if num_threads is None:
        num_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    num_threads = max(1, int(num_threads))

    row_bytes = 4 * num_gallery
    block_rows = max(1, min(num_queries, memory_budget_bytes // row_bytes, _MAX_BLOCK_BYTES // row_bytes))
    chunk_rows = max(1, min(block_rows, _CHUNK_ELEMENTS // num_gallery))
    similarity = np.empty((block_rows, num_gallery), dtype=np.float32)

    best_rank = np.empty(num_queries, dtype=np.int64)
    average_precision = np.zeros(num_queries, dtype=np.float64)
    r_precision = np.zeros(num_queries, dtype=np.float64)
    # One compiled signature: int64 index arrays (already so on 64-bit platforms).
    query_class, gallery_class, num_pos, order, class_start, class_size = (
        np.ascontiguousarray(a, dtype=np.int64)
        for a in (query_class, gallery_class, num_pos, order, class_start, class_size))
    progress = (Progress(num_queries, "retrieval metrics", progress_logger, unit="queries")
                if progress_logger is not None else None)
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        for start in range(0, num_queries, block_rows):
            stop = min(start + block_rows, num_queries)
            block = similarity[:stop - start]
            np.matmul(queries[start:stop], gallery.T, out=block)
            if len(dup_cols):
                block[:, dup_cols] = block[:, dup_source]
            if leave_one_out:
                block[np.arange(stop - start), np.arange(start, stop)] = -np.inf
            jobs = []
            for lo in range(start, stop, chunk_rows):
                hi = min(lo + chunk_rows, stop)
                jobs.append(pool.submit(score_rows, block[lo - start:hi - start], query_class[lo:hi],
                                        num_pos[lo:hi], order, class_start, class_size, gallery_class, max_k,
                                        best_rank[lo:hi], average_precision[lo:hi], r_precision[lo:hi]))
            for job in jobs:
                job.result()
            if progress is not None:
                progress.update(stop - start)

    has_pos = num_pos > 0
    metrics = {f"recall@{k}": float(np.count_nonzero(best_rank < clipped) / num_queries)
               for k, clipped in ks.items()}
    num_with_pos = int(np.count_nonzero(has_pos))
    metrics["map@r"] = float(average_precision[has_pos].mean()) if num_with_pos else math.nan
    metrics["r_precision"] = float(r_precision[has_pos].mean()) if num_with_pos else math.nan
    metrics["num_queries"] = int(num_queries)
    metrics["num_queries_with_positives"] = num_with_pos
    if not per_query:
        return metrics
    scores = {f"recall@{k}": (best_rank < clipped).astype(np.float64) for k, clipped in ks.items()}
    scores["map@r"] = np.where(has_pos, average_precision, np.nan)
    return metrics, scores


def _first_equal_row(x):
    """For each row of a 2-D array, the index of the first row with exactly the same bytes."""
    n, dim = x.shape
    first = np.arange(n)
    # Group by a sample of columns first (cheap), then compare whole rows within shared groups.
    sample = np.unique(np.linspace(0, dim - 1, min(dim, 16)).astype(np.int64))
    key = _as_void(x[:, sample])
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse.reshape(-1)] > 1)
    if len(shared):
        _, index, inverse = np.unique(_as_void(x[shared]), return_index=True, return_inverse=True)
        first[shared] = shared[index[inverse.reshape(-1)]]
    return first


def _as_void(x):
    """Each row of a 2-D array as one opaque bytes value (for np.unique over rows)."""
    x = np.ascontiguousarray(x)
    return x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).reshape(-1)
