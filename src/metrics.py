"""Retrieval metrics: Recall@K, MAP@R and R-precision, exact, without an N x N matrix.

Every query is ranked against the whole gallery by cosine similarity (the dot product of
L2-normalised float32 features; the same order as squared Euclidean distance on the unit sphere).
Queries are processed in blocks whose similarity block (block x gallery, float32) fits in
`memory_budget_bytes`; the block is one BLAS matrix product, and within it only what the metrics
need is selected:
  - Recall@K needs only the rank of each query's best positive: the number of gallery items
    ranked ahead of it, a comparison count over the row.
  - MAP@R and R-precision need only the top R of the ranking (R = number of positives, small
    on retrieval benchmarks): a few more comparison counts find the last positive that can be in
    the top R, and the items at or above its similarity are extracted and sorted.
The counts cost about one pass over the row each (a few percent of the 2*d flops per item of
the product at d = 2048; measured in bench/bench_metrics.py).

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
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from src.log import Progress, get_logger

logger = get_logger(__name__)

DEFAULT_KS = (1, 10, 100, 1000)
DEFAULT_MEMORY_BUDGET = 1 << 30
# Rows post-processed together: about 2M similarities (8 MB); 1M-4M measured alike, 256K slower
# (more Python overhead per element), bench/bench_metrics.py at N = 20,000.
_CHUNK_ELEMENTS = 1 << 21
_NO_POSITIVE = np.iinfo(np.int64).max
_WORDS_PER_LANE_SUM = 255
# A ranking prefix longer than R + this is shortened (see _rth_group_max) before it is sorted.
_PREFIX_SLACK = 64
_GROUP_STRIDE = 64
_MAX_BLOCK_BYTES = 256 << 20
_BUFFER_ALIGN = 8 * _WORDS_PER_LANE_SUM
_MAX_LISTED = 5


def retrieval_metrics(features, labels, ks=DEFAULT_KS, memory_budget_bytes=DEFAULT_MEMORY_BUDGET,
                      logger=None, num_threads=None):
    """Leave-one-out retrieval metrics: every item queries all the others.

    Args:
        features: (N, d) real array; rows are L2-normalised here (float32).
        labels: (N,) class labels (any type `np.unique` can sort).
        ks: the K of Recall@K.
        memory_budget_bytes: bound for the similarity block and its scratch buffers (the
            normalised float32 copy of the features, N*d*4 bytes, comes on top).
        logger: where progress (done/total, rate, ETA every ~10 s) goes; None: no progress.
            Warnings go to this logger, or to the module's logger when None.
        num_threads: threads for the post-processing of each block (default: available cores).
    Returns:
        dict: "recall@K" for each K, "map@r", "r_precision", "num_queries",
        "num_queries_with_positives" (see the module docstring for the definitions).
    """
    labels = _check_labels(labels, features, "features", "labels")
    if len(labels) < 2:
        raise ValueError(f"leave-one-out retrieval needs at least 2 items, got {len(labels)}")
    gallery = normalize_rows(features, "features")
    class_ids = np.unique(labels, return_inverse=True)[1].reshape(-1)
    return _evaluate(gallery, gallery, class_ids, class_ids, leave_one_out=True, ks=ks,
                     memory_budget_bytes=memory_budget_bytes, progress_logger=logger,
                     num_threads=num_threads)


def query_gallery_metrics(query_features, query_labels, gallery_features, gallery_labels,
                          ks=DEFAULT_KS, memory_budget_bytes=DEFAULT_MEMORY_BUDGET, logger=None,
                          num_threads=None):
    """Query/gallery retrieval metrics: each query ranks the whole gallery (no self-exclusion).

    R of a query is the number of gallery items with its label. Arguments and returned keys as
    in `retrieval_metrics`.
    """
    query_labels = _check_labels(query_labels, query_features, "query_features", "query_labels")
    gallery_labels = _check_labels(gallery_labels, gallery_features, "gallery_features",
                                   "gallery_labels")
    if len(query_labels) == 0 or len(gallery_labels) == 0:
        raise ValueError(f"need at least one query and one gallery item, got {len(query_labels)} "
                         f"queries and {len(gallery_labels)} gallery items")
    queries = normalize_rows(query_features, "query_features")
    gallery = normalize_rows(gallery_features, "gallery_features")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery features differ in dimension: "
                         f"{queries.shape[1]} != {gallery.shape[1]}")
    class_ids = np.unique(np.concatenate([query_labels, gallery_labels]), return_inverse=True)[1]
    class_ids = class_ids.reshape(-1)
    return _evaluate(queries, gallery, class_ids[:len(query_labels)],
                     class_ids[len(query_labels):], leave_one_out=False, ks=ks,
                     memory_budget_bytes=memory_budget_bytes, progress_logger=logger,
                     num_threads=num_threads)


def format_metrics_table(metrics):
    """Two aligned columns, one metric per line: `name  value` (fractions with 4 decimals)."""
    width = max((len(name) for name in metrics), default=0)
    lines = []
    for name, value in metrics.items():
        text = f"{value:d}" if isinstance(value, (int, np.integer)) else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {text:>8}")
    return "\n".join(lines)


def normalize_rows(features, name="features"):
    """Rows scaled to unit L2 norm, as a new float32 array.

    Computed in float64, each row first scaled by a power of two near its largest magnitude
    (exact), so neither huge nor tiny values overflow; the same row always gives the same bytes.
    Raises ValueError naming the rows that hold NaN/Inf or are all zero.
    """
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (items, dim) array, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {x.dtype}")
    n, dim = x.shape
    if dim == 0:
        raise ValueError(f"{name} has zero feature dimension (shape {x.shape})")
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
              memory_budget_bytes, progress_logger, num_threads):
    """The shared core: rank of the best positive, AP@R and R-precision for every query."""
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
    chunk_rows = max(1, _CHUNK_ELEMENTS // num_gallery)
    scratch = num_threads * chunk_rows * (num_gallery + _BUFFER_ALIGN)  # a bool buffer per thread
    # Blocks of at most _MAX_BLOCK_BYTES: the first touch of a fresh GB-sized buffer costs more in
    # page faults than a larger product gains (measured: 1.3 s extra at N = 20,000, d = 512).
    row_bytes = 4 * num_gallery
    block_rows = max(1, min(num_queries, (memory_budget_bytes - scratch) // row_bytes,
                            _MAX_BLOCK_BYTES // row_bytes))
    chunk_rows = min(chunk_rows, block_rows)
    similarity = np.empty((block_rows, num_gallery), dtype=np.float32)

    best_rank = np.empty(num_queries, dtype=np.int64)
    average_precision = np.zeros(num_queries, dtype=np.float64)
    r_precision = np.zeros(num_queries, dtype=np.float64)
    ctx = _RowContext(order, class_start, class_size, gallery_class, query_class, num_pos,
                      max_k, chunk_rows, num_gallery)
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
                jobs.append(pool.submit(ctx.score_rows, block[lo - start:hi - start], lo,
                                        best_rank[lo:hi], average_precision[lo:hi],
                                        r_precision[lo:hi]))
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
    return metrics


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


class _RowContext:
    """What scoring a chunk of similarity rows needs; `score_rows` runs in worker threads."""

    def __init__(self, order, class_start, class_size, gallery_class, query_class, num_pos,
                 max_k, chunk_rows, num_gallery):
        self.order = order
        self.class_start = class_start
        self.class_size = class_size
        self.gallery_class = gallery_class
        self.query_class = query_class
        self.num_pos = num_pos
        self.max_k = max_k
        self.chunk_rows = chunk_rows
        self.num_gallery = num_gallery
        self.local = threading.local()

    def _buffer(self, rows):
        """Per-thread (rows, width) bool scratch; width is padded (padding stays False) to whole
        groups of 255 uint64 words, so rows can be scanned and counted as words."""
        buf = getattr(self.local, "buf", None)
        if buf is None:
            width = -(-self.num_gallery // _BUFFER_ALIGN) * _BUFFER_ALIGN
            buf = self.local.buf = np.zeros((self.chunk_rows, width), dtype=bool)
        return buf[:rows]

    def _positives(self, sim, cls):
        """Similarities and gallery columns of each row's class members, best first.

        Sorted descending with ties by gallery index; padded with -inf (the masked self is -inf
        too, so it sorts behind the real positives).
        """
        size = self.class_size[cls]
        width = int(size.max(initial=0))
        offset = np.arange(width)
        valid = offset < size[:, None]
        members = self.order[np.where(valid, self.class_start[cls][:, None] + offset, 0)]
        pos_sim = np.take_along_axis(sim, members, axis=1)
        pos_sim[~valid] = -np.inf
        by_rank = np.argsort(-pos_sim, axis=1, kind="stable")
        return (np.take_along_axis(pos_sim, by_rank, axis=1),
                np.take_along_axis(members, by_rank, axis=1))

    def score_rows(self, sim, first_query, best_rank, average_precision, r_precision):
        """Fill the outputs for queries first_query.. from their similarity rows `sim`.

        `sim` has the query itself already at -inf (leave-one-out), so it is never counted.
        """
        rows, width = sim.shape
        cls = self.query_class[first_query:first_query + rows]
        num_pos = self.num_pos[first_query:first_query + rows]
        pos_sim, pos_col = self._positives(sim, cls)
        has_pos = num_pos > 0
        best = np.full(rows, np.inf, dtype=np.float32)
        if has_pos.any():
            best[has_pos] = pos_sim[has_pos, 0]
        buf = self._buffer(rows)
        marks = buf[:, :width]
        # Items strictly more similar than the best positive: all negatives, all ranked ahead.
        np.greater(sim, best[:, None], out=marks)
        greater = _row_counts(buf)
        best_rank[:] = np.where(has_pos, greater, _NO_POSITIVE)
        average_precision[:] = 0.0
        r_precision[:] = 0.0
        # top: the best positive may be in the top R (MAP@R, R-precision and its exact rank
        # come from a prefix of the ranking); tie: only its exact rank matters, for Recall@K.
        top = has_pos & (greater < num_pos)
        tie = has_pos & ~top & (greater < self.max_k)
        if not (top.any() or tie.any()):
            return

        # Positive k has at least `greater` + k items ahead of it, so only k < R - greater can be
        # in the top R. Everything at or above the similarity of the last such positive is an
        # exact prefix of the ranking that holds every positive in the top R (for tie rows:
        # everything at or above the best positive). Usually that prefix is short.
        last = num_pos - 1 - greater
        threshold = np.full(rows, np.inf, dtype=np.float32)
        threshold[top] = pos_sim[top, last[top]]
        threshold[tie] = best[tie]
        np.greater_equal(sim, threshold[:, None], out=marks)
        at_least = _row_counts(buf)
        tied_pos = np.count_nonzero(pos_sim == best[:, None], axis=1)
        for i in np.flatnonzero(tie & (at_least - greater > tied_pos)):
            # Negatives tied with the best positive rank ahead of it if their index is lower.
            best_rank[i] = greater[i] + _ties_ahead(sim[i], best[i], pos_col[i, 0])
        short = top & (at_least <= num_pos + _PREFIX_SLACK)
        if short.any():
            sel = np.flatnonzero(short)
            best_rank[sel], average_precision[sel], r_precision[sel] = self._score_prefixes(
                sim, buf, sel, at_least[sel], cls[sel], num_pos[sel])
        deep = np.flatnonzero(top & ~short)
        if len(deep):
            # A positive deep in the ranking made the prefix long. The R-th largest of a row's
            # column-group maxima is at most its R-th largest similarity (they are R distinct items), so
            # everything at or above it is a ranking prefix holding the whole top R, and a short
            # one: the top R plus the few items that share a block with another of them.
            sub, sub_buf = sim[deep], buf[:len(deep)]
            threshold = np.maximum(threshold[deep], _rth_group_max(sub, num_pos[deep]))
            np.greater_equal(sub, threshold[:, None], out=sub_buf[:, :width])
            best_rank[deep], average_precision[deep], r_precision[deep] = self._score_prefixes(
                sub, sub_buf, np.arange(len(deep)), _row_counts(sub_buf), cls[deep],
                num_pos[deep])

    def _score_prefixes(self, sim, buf, sel, counts, cls, num_pos):
        """(rank of best positive, AP@R, R-precision) of rows `sim[sel]`, whose ranking prefix
        (`counts` items each, holding every positive in the top R) is marked in `buf`.

        `cls` and `num_pos` are given for the selected rows.
        """
        # Find the marked items a word (8 columns) at a time, then expand the few hit words.
        # (Rows outside `sel` may hold marks too; their hits are dropped.)
        word_row, word_col = np.nonzero(buf.view(np.uint64) != 0)  # bool nonzero is the fast one
        position_in_sel = np.full(len(buf), -1)
        position_in_sel[sel] = np.arange(len(sel))
        wanted = position_in_sel[word_row] >= 0
        word_row, word_col = word_row[wanted], word_col[wanted]
        col = (word_col[:, None] * 8 + np.arange(8)).reshape(-1)
        keep = buf[np.repeat(word_row, 8), col]
        row = np.repeat(position_in_sel[word_row], 8)[keep]  # index into sel
        col = col[keep]
        # Ranking order within each row: similarity descending, then gallery index. One stable
        # sort of (row, order-preserving integer of -similarity); columns are already ascending.
        key = (row.astype(np.uint64) << np.uint64(32)) | _descending_key(sim[sel[row], col])
        order = np.argsort(key, kind="stable")
        row, col = row[order], col[order]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        position = np.arange(len(row)) - np.repeat(starts, counts)
        relevant = self.gallery_class[col] == cls[row]
        hit = relevant & (position < num_pos[row])
        hits_so_far = np.cumsum(hit)
        hits_so_far -= np.repeat(hits_so_far[starts] - hit[starts], counts)
        precision = np.where(hit, hits_so_far / (position + 1), 0.0)
        average_precision = np.bincount(row, weights=precision, minlength=len(sel)) / num_pos
        r_precision = np.bincount(row, weights=hit, minlength=len(sel)) / num_pos
        # Each prefix holds its best positive; its first relevant item is that one.
        first_relevant = np.flatnonzero(relevant)
        _, first = np.unique(row[first_relevant], return_index=True)
        return position[first_relevant[first]], average_precision, r_precision


def _rth_group_max(sim, r):
    """Per row, the r-th largest of the maxima of `sim`'s column groups (-inf where a row has fewer
    than r groups). Group j is every _GROUP_STRIDE-th column from j: an elementwise maximum of
    contiguous slices, far faster than maxima of contiguous blocks; the columns left over are
    groups of one."""
    rows, width = sim.shape
    stride = width // _GROUP_STRIDE
    maxima = sim[:, :stride * _GROUP_STRIDE].reshape(rows, _GROUP_STRIDE, stride).max(axis=1)
    maxima = np.concatenate([maxima, sim[:, stride * _GROUP_STRIDE:]], axis=1)
    maxima.sort(axis=1)
    groups = maxima.shape[1]
    out = np.full(rows, -np.inf, dtype=np.float32)
    fits = r <= groups
    out[fits] = maxima[np.flatnonzero(fits), groups - r[fits]]
    return out


def _descending_key(values):
    """uint64 keys of float32 values whose ascending order is the values' descending order.

    The float bits are mapped to an unsigned integer of the same order (negative floats: all
    bits flipped; others: sign bit set); -0.0 is made +0.0 first so the two tie.
    """
    bits = (values.astype(np.float32) + np.float32(0.0)).view(np.uint32)
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return (~ascending).astype(np.uint64)


def _row_counts(buf):
    """Number of True entries in each row of a `_RowContext._buffer` (bool, padded).

    Bools are 0/1 bytes: summing 255 uint64 words adds 8 byte lanes that each stay <= 255 (no
    carry between lanes), then the lanes are added. Several times faster than count_nonzero
    per row or along an axis.
    """
    words = buf.view(np.uint64).reshape(len(buf), -1, _WORDS_PER_LANE_SUM)
    lanes = words.sum(axis=2, dtype=np.uint64)
    return lanes.view(np.uint8).reshape(len(buf), -1).sum(axis=1, dtype=np.int64)


def _ties_ahead(row, value, col):
    """Entries of `row` exactly equal to `value` at an index below `col`."""
    return int(np.count_nonzero(np.flatnonzero(row == value) < col))
