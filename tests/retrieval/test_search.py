"""Exact search equals a brute-force numpy search; the approximate index's recall is measured, against exact search."""
import sys

import numpy as np
import pytest

from src.evaluation.metrics import l2_normalize_rows
from src.retrieval import search as search_module
from src.retrieval.search import (
    AUTO_ANN_ELEMENTS,
    ExactSearch,
    IvfSearch,
    ann_builder,
    check_top_k,
    recall_against,
    wants_ann,
)


def brute_force(queries, gallery, k):
    """Top-k by a stable sort of every similarity (ties to the lower index), float64."""
    sim = l2_normalize_rows(queries).astype(np.float64) @ gallery.astype(np.float64).T
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, order, axis=1), order


def clustered(count, dim, seed=0, per_class=8, spread=0.35):
    """Unit rows around count / per_class random centres (what retrieval features look like, in small)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // per_class + 1, dim)).astype(np.float32)
    x = centres[np.arange(count) // per_class] + spread * rng.standard_normal((count, dim)).astype(np.float32)
    return l2_normalize_rows(x)


@pytest.mark.parametrize("block_bytes", [64 << 20, 4 * 7 * 3])  # one block, and blocks of a few columns
@pytest.mark.parametrize("num_queries", [1, 5, 37])
def test_exact_search_equals_brute_force(block_bytes, num_queries):
    gallery = clustered(500, 24, seed=1)
    queries = np.random.default_rng(2).standard_normal((num_queries, 24)) * 3  # not normalised: search does it
    sims, ids = ExactSearch(gallery, block_bytes=block_bytes, num_threads=2).search(queries, 10)
    want_sims, want_ids = brute_force(queries, gallery, 10)
    assert ids.dtype == np.int64 and sims.dtype == np.float32
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)


def test_exact_ties_go_to_the_lower_index_and_k_is_clipped():
    gallery = l2_normalize_rows(np.repeat(np.eye(3, dtype=np.float32), [3, 2, 1], axis=0))  # rows 0-2 equal, 3-4 equal
    sims, ids = ExactSearch(gallery, block_bytes=8).search(np.array([[1.0, 0.9, 0.0]]), 50)
    assert ids.tolist() == [[0, 1, 2, 3, 4, 5]]
    np.testing.assert_allclose(sims[0], brute_force(np.array([[1.0, 0.9, 0.0]]), gallery, 6)[0][0], atol=1e-6)


@pytest.mark.parametrize("k", [0, -1, 2.5])
def test_top_k_must_be_positive(k):
    with pytest.raises(ValueError, match="--top_k must be a positive integer"):
        check_top_k(k)


def test_queries_of_another_dimension_are_refused():
    with pytest.raises(ValueError, match="dimension 5, the gallery 4"):
        ExactSearch(np.eye(4, dtype=np.float32)).search(np.ones((1, 5)), 1)


def test_the_approximate_index_reaches_its_measured_recall():
    """The recall the index reports was measured on its own rows; an independent measurement on new queries (near
    the gallery, as query images of indexed products are) agrees and reaches the target."""
    pytest.importorskip("faiss")
    gallery = clustered(6000, 32, seed=3)
    ivf = IvfSearch.build(gallery, target_recall=0.98, num_threads=2, sample=300)
    assert ivf.nlist == 64 and 1 <= ivf.nprobe <= 64
    assert ivf.recall >= 0.98
    rng = np.random.default_rng(4)
    queries = gallery[rng.choice(len(gallery), 400, replace=False)] + 0.2 * rng.standard_normal((400, 32))
    exact_ids = ExactSearch(gallery).search(queries, 10)[1]
    approx_sims, approx_ids = ivf.search(queries, 10)
    recall = recall_against(approx_ids, exact_ids)
    assert recall >= 0.97, recall
    # what it returns is what exact search says of those items
    np.testing.assert_allclose(approx_sims, np.sum(l2_normalize_rows(queries)[:, None] * gallery[approx_ids], -1),
                               atol=1e-5)
    assert ivf.settings()["recall_at_10"] == ivf.recall


def test_the_approximate_index_survives_save_and_load(tmp_path):
    pytest.importorskip("faiss")
    gallery = clustered(2000, 16, seed=5)
    ivf = IvfSearch.build(gallery, sample=100)
    ivf.save(str(tmp_path / "ivf.faiss"))
    loaded = IvfSearch.load(str(tmp_path / "ivf.faiss"), ivf.recall)
    for a, b in zip(ivf.search(gallery[:20], 5), loaded.search(gallery[:20], 5), strict=True):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="bad.faiss is not a readable faiss index"):
        IvfSearch.load(str(tmp_path / "bad.faiss"))


def test_ann_auto_switches_at_the_measured_size_and_faiss_is_optional(monkeypatch):
    assert not wants_ann("auto", 1000, 2048) and not wants_ann("exact", 10**7, 2048)
    assert wants_ann("auto", AUTO_ANN_ELEMENTS // 512, 512) == search_module.faiss_available()
    with pytest.raises(ValueError, match="--ann must be one of auto, exact, faiss"):
        wants_ann("hnsw", 1, 1)
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed
    assert not wants_ann("auto", 10**7, 2048)
    assert ann_builder("auto")(np.zeros((10, 4), np.float32)) is None
    with pytest.raises(ValueError, match="--ann faiss needs the faiss-cpu package"):
        wants_ann("faiss", 1, 1)
