"""The running top-k of src/retrieval/search.py's exact search, compiled with numba.

One pass over each similarity row: a value above the row's current k-th best is inserted in order (after equal
values, so exact ties keep the lower gallery index, as a stable sort would); anything else costs one comparison.
Compiled once per machine (numba's cache, next to this file); it runs without the GIL, so the caller's threads
merge slices of rows in parallel.
"""
import numba


@numba.njit(nogil=True, cache=True)
def merge_top_k(sim, offset, best_sim, best_id):  # pragma: no cover (compiled)
    """Merge the rows of `sim` (rows, width; gallery columns offset..offset+width-1) into best_sim / best_id
    (rows, k), kept sorted by similarity descending; empty slots hold -inf / -1."""
    rows, width = sim.shape
    k = best_sim.shape[1]
    for i in range(rows):
        row = sim[i]
        values = best_sim[i]
        ids = best_id[i]
        worst = values[k - 1]
        for j in range(width):
            v = row[j]
            if v > worst or (ids[k - 1] < 0 and v == worst):
                p = k - 1
                while p > 0 and values[p - 1] < v:
                    values[p] = values[p - 1]
                    ids[p] = ids[p - 1]
                    p -= 1
                values[p] = v
                ids[p] = offset + j
                worst = values[k - 1]
