"""Matching: the pairs of indexed images at least as similar as a threshold, their groups (connected components:
duplicates, or images of one product), and the threshold that reaches a precision on a labelled list.

Similarity is cosine similarity of L2-normalised features (src.retrieval.search). Pairs come from each image's
nearest neighbours (`max_neighbours` of them, through any searcher), so exact or approximate search finds them
alike; an image with more neighbours above the threshold than that is warned about (its group is still whole
through the others' pairs, unless they are all in the same case).
"""
import csv
import io
from dataclasses import dataclass

import numpy as np

from src.runtime.log import Progress, get_logger

logger = get_logger()

MAX_PAIRS = 20_000_000  # beyond this the threshold is surely too low to mean "same product"


def check_threshold(threshold):
    if not -1.0 <= float(threshold) <= 1.0:
        raise ValueError(f"--threshold is a cosine similarity, in [-1, 1]; got {threshold}")
    return float(threshold)


def check_precision(precision):
    if not 0.0 < float(precision) <= 1.0:
        raise ValueError(f"--precision must be in (0, 1], got {precision}")
    return float(precision)


def similar_pairs(searcher, features, threshold, max_neighbours=100, batch=1024):
    """(i (P,), j (P,), similarity (P,)) of every pair i < j with similarity >= threshold among each item's
    `max_neighbours` nearest others (by `searcher`, over the same `features`), most similar first."""
    threshold = check_threshold(threshold)
    count = len(features)
    k = min(int(max_neighbours) + 1, count)
    firsts, seconds, sims = [], [], []
    crowded = 0
    progress = Progress(count, "matching", logger, unit="images")
    for start in range(0, count, batch):
        stop = min(start + batch, count)
        sim, ids = searcher.search(features[start:stop], k, normalized=True)
        query = np.arange(start, stop)[:, None]
        keep = (sim >= threshold) & (ids != query) & (ids >= 0)
        crowded += int(np.count_nonzero(keep.sum(axis=1) >= k - 1)) if k < count else 0
        rows, cols = np.nonzero(keep)
        a, b = query[rows, 0], ids[rows, cols]
        firsts.append(np.minimum(a, b))
        seconds.append(np.maximum(a, b))
        sims.append(sim[rows, cols])
        if sum(len(s) for s in sims) > 2 * MAX_PAIRS:
            raise ValueError(f"--threshold {threshold}: more than {MAX_PAIRS} pairs are at least that similar; a "
                             f"threshold for 'same product' keeps far fewer: raise it (or calibrate it)")
        progress.update(stop - start)
    i, j, s = (np.concatenate(x) for x in (firsts, seconds, sims))
    # Each pair was seen from both ends (or once, when one end's list was full): keep it once.
    order = np.lexsort((j, i))
    i, j, s = i[order], j[order], s[order]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    i, j, s = i[first], j[first], s[first]
    order = np.lexsort((j, i, -s))
    if crowded:
        logger.warning("%d image(s) have %d or more neighbours at least %.4f similar: pairs beyond their nearest %d "
                       "may be missing (raise --max_neighbours)", crowded, k - 1, threshold, k - 1)
    return i[order], j[order], s[order]


def connected_groups(count, first, second):
    """The connected components of the pair graph with two or more members: a list of sorted index arrays, the
    largest first (then by first member)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(first), np.int8), (first, second)), shape=(count, count))
    _, component = connected_components(graph, directed=False)
    order = np.argsort(component, kind="stable")
    bounds = np.flatnonzero(np.diff(component[order])) + 1
    groups = [group for group in np.split(order, bounds) if len(group) > 1]
    groups.sort(key=lambda group: (-len(group), group[0]))
    return groups


@dataclass(frozen=True)
class Calibration:
    """The chosen threshold and what it gives on the calibration list (pairs i < j)."""

    threshold: float
    precision: float
    recall: float
    true_pairs: int       # same-label pairs at least `threshold` similar
    false_pairs: int      # other-label pairs at least `threshold` similar
    positive_pairs: int   # same-label pairs in the list

    def line(self, what):
        return (f"threshold {self.threshold:.4f}: precision {self.precision:.4f}, recall {self.recall:.4f} on {what} "
                f"({self.true_pairs} of its {self.positive_pairs} same-label pairs found, {self.false_pairs} other "
                f"pairs above it)")


def calibrate(features, labels, precision, what="the calibration list", block_rows=512):
    """The lowest threshold (a same-label pair's similarity) at which the pairs at least that similar have
    precision >= `precision`, over every pair of the labelled `features` (exact, blocked).

    ValueError naming `what` if no two items share a label, or no threshold reaches the precision.
    """
    precision = check_precision(precision)
    x = np.ascontiguousarray(features, np.float32)
    labels = np.asarray(labels).reshape(-1)
    _, classes = np.unique(labels, return_inverse=True)
    classes = classes.reshape(-1)
    # The similarities of the same-label pairs, per class; they are the candidate thresholds.
    positive = []
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        if len(members) > 1:
            sim = x[members] @ x[members].T
            positive.append(sim[np.triu_indices(len(members), 1)])
    if not positive:
        raise ValueError(f"{what}: no two of its {len(labels)} images share a label, so it has no same-label pair to "
                         f"calibrate on; use a list with several images of each product (SOP's train.txt)")
    positive = np.sort(np.concatenate(positive))
    # Other-label pairs, counted by the candidate thresholds they reach: pairs[r] reach the r lowest candidates.
    reach = np.zeros(len(positive) + 1, np.int64)
    for start in range(0, len(x), block_rows):
        stop = min(start + block_rows, len(x))
        sim = x[start:stop] @ x[start:].T
        upper = np.arange(start, len(x))[None, :] > np.arange(start, stop)[:, None]
        other = upper & (classes[start:stop, None] != classes[None, start:])
        reach += np.bincount(np.searchsorted(positive, sim[other], side="right"), minlength=len(positive) + 1)
    false_at = np.cumsum(reach[::-1])[::-1][1:]  # other-label pairs >= positive[i]
    true_at = len(positive) - np.searchsorted(positive, positive, side="left")
    precisions = true_at / (true_at + false_at)
    reaching = np.flatnonzero(precisions >= precision)
    if not len(reaching):
        best = int(np.argmax(precisions))
        raise ValueError(f"{what}: no threshold reaches precision {precision}; the highest is {precisions[best]:.4f} "
                         f"(at threshold {positive[best]:.4f}): ask for a lower --precision")
    i = int(reaching[0])
    return Calibration(float(positive[i]), float(precisions[i]), float(true_at[i] / len(positive)), int(true_at[i]),
                       int(false_at[i]), len(positive))


def pairs_csv(index, first, second, similarities, groups):
    """The pairs as CSV text, one row a pair with its group (numbered as `groups` lists them), both images' ids,
    paths and labels (empty when unknown) and their similarity."""
    group_of = {int(i): number for number, group in enumerate(groups, start=1) for i in group}
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["group", "id_a", "path_a", "label_a", "id_b", "path_b", "label_b", "similarity"])
    for a, b, similarity in zip(first, second, similarities, strict=True):
        writer.writerow([group_of[int(a)], a, index.paths[a], _label(index, a), b, index.paths[b], _label(index, b),
                         f"{similarity:.6f}"])
    return text.getvalue()


def _label(index, i):
    label = index.label(i)
    return "" if label is None else label


def calibrate_on_index(index, images, precision, backend, threads, ckpt_path=None, device_target="CPU"):
    """The Calibration of `images` (a labelled ImageList) embedded as the index's images were (its manifest's
    checkpoint, or `ckpt_path` where it moved, on `backend`); warns when some of them are in the index too."""
    from src.retrieval.embed import checkpoint_for, open_embedder, query_settings
    from src.retrieval.index import hash_files

    known = set(index.hashes)
    shared = sum(digest in known for digest in hash_files([images.full_path(i) for i in range(len(images))]))
    if shared:
        logger.warning("%s: %d of its %d images are in the index too; a threshold calibrated on the images it is "
                       "applied to looks better than it is", images.list_file, shared, len(images))
    settings = query_settings(index.manifest, backend)
    embedder = open_embedder(checkpoint_for(index.manifest, ckpt_path), settings, threads, device_target)
    return calibrate(embedder.embed_list(images), images.ids, precision, images.list_file)
