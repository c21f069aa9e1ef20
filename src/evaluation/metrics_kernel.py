"""The per-row scoring of src/evaluation/metrics.py, compiled with numba: one or two passes over each similarity row.

For each query row: one vectorised pass counts the items more similar than its best positive
(its rank, ties broken by gallery index, lower first, as a stable sort would). Only if that
positive is in the top R (R = number of positives) does a second pass count, for each positive
that can still be in the top R, the items ranked ahead of it; AP@R and R-precision follow from
those ranks. Compiled once per machine (numba's cache, next to this file); it runs without the
GIL, so the caller's threads score chunks of rows in parallel.
"""
import numba
import numpy as np

NO_POSITIVE = np.iinfo(np.int64).max


@numba.njit(nogil=True, cache=True)
def score_rows(sim, query_class, num_pos, order, class_start, class_size, gallery_class, max_k,
               best_rank, average_precision, r_precision):  # pragma: no cover (compiled)
    """Fill best_rank / average_precision / r_precision (one entry per row of `sim`).

    sim: (rows, gallery) float32, the query itself already at -inf in leave-one-out.
    order, class_start, class_size: gallery indices grouped by class (ascending within a class).
    max_k: ranks at or beyond it need not be exact (no Recall@K asks about them).
    """
    rows, width = sim.shape
    max_size = 1
    for i in range(rows):
        max_size = max(max_size, class_size[query_class[i]])
    pos_value = np.empty(max_size, dtype=np.float32)
    pos_col = np.empty(max_size, dtype=np.int64)
    ahead = np.empty(max_size, dtype=np.int64)
    for i in range(rows):
        r = num_pos[i]
        c = query_class[i]
        row = sim[i]
        average_precision[i] = 0.0
        r_precision[i] = 0.0
        if r == 0:
            best_rank[i] = NO_POSITIVE
            continue
        # The class members by ranking order (similarity descending, index ascending); the
        # query itself (-inf) sorts last and is never among the first r.
        size = class_size[c]
        first = class_start[c]
        for m in range(size):
            j = order[first + m]
            v = row[j]
            p = m
            while p > 0 and pos_value[p - 1] < v:
                pos_value[p] = pos_value[p - 1]
                pos_col[p] = pos_col[p - 1]
                p -= 1
            pos_value[p] = v
            pos_col[p] = j
        best = pos_value[0]
        greater = 0
        for j in range(width):  # the one full pass of every row: a vectorised comparison count
            greater += row[j] > best
        if greater >= r:
            # The best positive is not in the top R: AP@R and R-precision are 0; its exact rank
            # matters only below max_k (ties ahead of it: equal similarity, lower index).
            if greater < max_k:
                tied = 0
                for j in range(pos_col[0]):
                    tied += row[j] == best
                greater += tied
            best_rank[i] = greater
            continue
        # Positive k ranks at least greater + k, so only k <= last can be in the top R. One more
        # pass counts, for each of them, the items ranked ahead; the few items at or above the
        # last one's similarity are the only ones that need work.
        last = r - 1 - greater
        floor = pos_value[last]
        for k in range(last + 1):
            ahead[k] = 0
        for j in range(width):
            v = row[j]
            if v >= floor:
                for k in range(last + 1):
                    if v > pos_value[k] or (v == pos_value[k] and j < pos_col[k]):
                        ahead[k] += 1
        best_rank[i] = ahead[0]
        hits = 0
        precision_sum = 0.0
        for k in range(last + 1):
            if ahead[k] < r:
                hits += 1
                precision_sum += (k + 1) / (ahead[k] + 1)
        average_precision[i] = precision_sum / r
        r_precision[i] = hits / r
