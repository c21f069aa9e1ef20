"""Retrieval metrics against independent references: brute force, the seed's algorithm, sklearn."""
import logging
import math

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from src.evaluation import metrics
from src.evaluation.metrics import format_metrics_table, query_gallery_metrics, retrieval_metrics

KS = (1, 2, 5, 10, 1000)


def unit_rows(x):
    return x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)


def rankings(query, query_labels, gallery, gallery_labels, leave_one_out):
    """Per query: (similarities in ranking order, relevance in ranking order), float64, by a full
    stable sort (descending similarity, ties by lower gallery index).

    Similarities are elementwise products summed per row (not a matrix product, whose rounding
    depends on the position in the matrix), so equal vectors give exactly equal similarities.
    """
    q, g = unit_rows(query), unit_rows(gallery)
    for i, q_row in enumerate(q):
        sim = (g * q_row).sum(axis=1)
        index = np.arange(len(g))
        if leave_one_out:
            index = index[index != i]
        ranked = index[np.lexsort((index, -sim[index]))]
        yield sim[ranked], gallery_labels[ranked] == query_labels[i]


def brute_force(query, query_labels, gallery, gallery_labels, ks, leave_one_out):
    """The metrics from full rankings."""
    hits = {k: 0 for k in ks}
    aps, rps = [], []
    for _, relevant in rankings(query, query_labels, gallery, gallery_labels, leave_one_out):
        for k in ks:
            hits[k] += bool(relevant[:k].any())
        r = int(relevant.sum())
        if r:
            top = relevant[:r]
            precision = np.cumsum(top) / np.arange(1, r + 1)
            aps.append(float(np.sum(precision[top])) / r)
            rps.append(top.sum() / r)
    out = {f"recall@{k}": hits[k] / len(query) for k in ks}
    out["map@r"] = float(np.mean(aps)) if aps else math.nan
    out["r_precision"] = float(np.mean(rps)) if rps else math.nan
    out["num_queries"] = len(query)
    out["num_queries_with_positives"] = len(aps)
    return out


def has_near_ties(query, query_labels, gallery, gallery_labels, ks, leave_one_out, eps=1e-5):
    """Whether float32 rounding (~1e-6) could change a metric: a positive and a negative next to
    each other in some ranking, within the positions that matter, with similarities closer than
    `eps` but not equal (exact ties, as of duplicates, are decided by index everywhere)."""
    for sim, relevant in rankings(query, query_labels, gallery, gallery_labels, leave_one_out):
        end = min(len(sim), max([int(relevant.sum())] + [k for k in ks if k < len(sim)]) + 1)
        gap = sim[:end - 1] - sim[1:end]
        if np.any((gap > 0) & (gap < eps) & (relevant[:end - 1] != relevant[1:end])):
            return True
    return False


def without_near_ties(make, ks, leave_one_out=True):
    """make(rng) -> (features, labels) for the first seed whose data has no near ties."""
    for seed in range(100, 130):
        x, labels = make(np.random.default_rng(seed))
        if not has_near_ties(x, labels, x, labels, ks, leave_one_out):
            return x, labels
    raise AssertionError("no data set without near ties in 30 seeds")


def seed_recall_at_1(features, labels):
    """The seed's algorithm: normalise, full squared-distance row, self at +inf, argsort, first."""
    f = features.astype(np.float32)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    hits = 0
    for i in range(len(f)):
        dist = np.sum((f - f[i]) ** 2, axis=1)
        dist[i] = np.inf
        nearest = np.argsort(dist, kind="stable")[0]
        hits += labels[nearest] == labels[i]
    return hits / len(f)


def lattice_features(rng, n, dim):
    """Rows with four entries of +-1: unit rows are exact (+-0.5), every dot product is exact
    (a multiple of 0.25), so exact ties abound and every method sees the same values."""
    x = np.zeros((n, dim), dtype=np.float32)
    for row in x:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return x


def clustered(rng, n, dim, num_classes, noise=1.0):
    labels = rng.integers(0, num_classes, n)
    centers = rng.standard_normal((num_classes, dim))
    return (centers[labels] + noise * rng.standard_normal((n, dim))).astype(np.float32), labels


def assert_same(got, expected):
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), key


@pytest.fixture
def small_chunks(monkeypatch):
    # Several post-processing chunks per block even for tiny galleries.
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 200)


@pytest.mark.parametrize("dim", [6, 12])
@pytest.mark.parametrize("budget", [1, 40_000, 1 << 30])
def test_leave_one_out_matches_brute_force_with_ties(dim, budget, small_chunks):
    rng = np.random.default_rng(dim)
    n = 240
    x = lattice_features(rng, n, dim)
    x[100:120] = x[:20]  # explicit duplicates on top of the lattice's own
    labels = rng.integers(0, 70, n)  # sizes vary, some classes have one image
    labels[-3:] = [1000, 1001, 1002]
    got = retrieval_metrics(x, labels, ks=KS, memory_budget_bytes=budget)
    assert_same(got, brute_force(x, labels, x, labels, KS, leave_one_out=True))


@pytest.mark.parametrize("budget", [1, 40_000, 1 << 30])
def test_leave_one_out_matches_brute_force_continuous(budget, small_chunks):
    def make(rng):
        x, labels = clustered(rng, 300, 16, 60, noise=1.5)
        x[200:210] = x[:10]
        return x, labels

    x, labels = without_near_ties(make, KS)
    got = retrieval_metrics(x, labels, ks=KS, memory_budget_bytes=budget, num_threads=2)
    assert_same(got, brute_force(x, labels, x, labels, KS, leave_one_out=True))


def test_deep_positives_match_brute_force():
    # Noise 1.3: positives lie deep in the ranking.
    x, labels = without_near_ties(lambda rng: clustered(rng, 300, 16, 40, noise=1.3), KS)
    got = retrieval_metrics(x, labels, ks=KS, memory_budget_bytes=60_000)
    assert_same(got, brute_force(x, labels, x, labels, KS, leave_one_out=True))


@pytest.mark.parametrize("num_classes", [3, 12])
def test_many_positives_with_exact_ties_match_brute_force(num_classes):
    # R ~ 100 or 25 per query on lattice features (exact dot products, ties everywhere): each
    # query's top-R list fills, reorders and meets ties with its R-th entry often.
    rng = np.random.default_rng(num_classes)
    x = lattice_features(rng, 300, 10)
    labels = rng.integers(0, num_classes, 300)
    got = retrieval_metrics(x, labels, ks=KS, memory_budget_bytes=60_000)
    assert_same(got, brute_force(x, labels, x, labels, KS, leave_one_out=True))


@pytest.mark.parametrize("budget", [1, 30_000, 1 << 30])
def test_query_gallery_matches_brute_force(budget, small_chunks):
    rng = np.random.default_rng(2)
    gallery = lattice_features(rng, 200, 8)
    gallery_labels = rng.integers(0, 50, 200)
    query = np.concatenate([lattice_features(rng, 80, 8), gallery[:20]])  # query == gallery item
    query_labels = np.concatenate([rng.integers(0, 55, 80), gallery_labels[:20]])  # 50..54: R=0
    ks = (1, 3, 10, 200, 500)
    got = query_gallery_metrics(query, query_labels, gallery, gallery_labels, ks=ks,
                                memory_budget_bytes=budget)
    assert_same(got, brute_force(query, query_labels, gallery, gallery_labels, ks, False))


def test_labels_may_be_strings():
    rng = np.random.default_rng(3)
    x, labels = clustered(rng, 120, 8, 30)
    as_text = np.array([f"class_{v}" for v in labels])
    assert_same(retrieval_metrics(x, as_text), retrieval_metrics(x, labels))


@pytest.mark.parametrize("data", ["lattice", "duplicates"])
def test_recall_at_1_equals_seed_algorithm(data):
    def make(rng):
        if data == "lattice":
            x = lattice_features(rng, 200, 7)
        else:
            x = rng.standard_normal((200, 32)).astype(np.float32)
            x[150:] = x[rng.choice(150, 50)]  # exact duplicate vectors: exact distance ties
        return x, rng.integers(0, 40, 200)

    x, labels = without_near_ties(make, (1,))
    got = retrieval_metrics(x, labels, ks=(1,), memory_budget_bytes=20_000)
    assert got["recall@1"] == seed_recall_at_1(x, labels)


def test_recall_matches_sklearn_nearest_neighbors():
    ks = (1, 4, 16)
    rng = np.random.default_rng(5)
    x, labels = without_near_ties(lambda rng: clustered(rng, 400, 24, 80, noise=1.2), ks)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    nn = NearestNeighbors(n_neighbors=max(ks) + 1, algorithm="brute").fit(unit)
    neighbors = nn.kneighbors(unit, return_distance=False)
    # Continuous data: no ties, the query itself is its own nearest neighbour.
    assert (neighbors[:, 0] == np.arange(len(x))).all()
    neighbors = neighbors[:, 1:]
    got = retrieval_metrics(x, labels, ks=ks, memory_budget_bytes=50_000)
    for k in ks:
        expected = np.mean((labels[neighbors[:, :k]] == labels[:, None]).any(axis=1))
        assert got[f"recall@{k}"] == pytest.approx(expected, abs=1e-12)

    queries, query_labels = x[:100] + 0.3 * rng.standard_normal((100, 24)), labels[:100]
    gallery, gallery_labels = x[100:], labels[100:]
    assert not has_near_ties(queries, query_labels, gallery, gallery_labels, ks, False)
    g_unit = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q_unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    neighbors = NearestNeighbors(n_neighbors=max(ks), algorithm="brute").fit(g_unit).kneighbors(
        q_unit, return_distance=False)
    got = query_gallery_metrics(queries, query_labels, gallery, gallery_labels, ks=ks)
    for k in ks:
        expected = np.mean((gallery_labels[neighbors[:, :k]] == query_labels[:, None]).any(axis=1))
        assert got[f"recall@{k}"] == pytest.approx(expected, abs=1e-12)


def ranked_gallery(relevance):
    """A query at angle 0 and gallery items at growing angles: the ranking is the list order."""
    angles = 0.1 * np.arange(len(relevance))
    gallery = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.array([[1.0, 0.0]]), np.array([0]), gallery, np.where(relevance, 0, 1)


@pytest.mark.parametrize("relevance, map_r, r_precision, best_rank", [
    # R=2, positives at ranks 1 and 3: only the top R=2 count -> (1/1 + 0)/2 = 0.5
    ([1, 0, 1, 0], 0.5, 1 / 2, 1),
    # R=3, positives at ranks 1, 3, 4: (1/1 + 2/3)/3 = 0.5556
    ([1, 0, 1, 1, 0], (1 + 2 / 3) / 3, 2 / 3, 1),
    # R=3, positives at ranks 2, 3, 5: (1/2 + 2/3)/3 = 0.3889
    ([0, 1, 1, 0, 1], (1 / 2 + 2 / 3) / 3, 2 / 3, 2),
    # R=3, positives at ranks 1, 2, 3: (1 + 1 + 1)/3 = 1
    ([1, 1, 1, 0, 0], 1.0, 1.0, 1),
    # R=1, positive at rank 2: nothing relevant in the top 1 -> 0
    ([0, 1, 0], 0.0, 0.0, 2),
    # R=2, positives at ranks 4 and 5: 0
    ([0, 0, 0, 1, 1], 0.0, 0.0, 4),
])
def test_map_at_r_hand_worked(relevance, map_r, r_precision, best_rank):
    got = query_gallery_metrics(*ranked_gallery(relevance), ks=(1, 2, 3, 4))
    assert got["map@r"] == pytest.approx(map_r, abs=1e-12)
    assert got["r_precision"] == pytest.approx(r_precision, abs=1e-12)
    for k in (1, 2, 3, 4):
        assert got[f"recall@{k}"] == (1.0 if best_rank <= k else 0.0)


def test_leave_one_out_hand_worked():
    # Points on a circle at angles 0, 0.1, 0.25, 0.45 (radians) with labels a, a, b, a.
    # Query 0: ranking 1(a) 2(b) 3(a), R=2 -> AP@R = (1/1)/2 = 0.5, R-precision = 1/2
    # Query 1: ranking 0(a) 2(b) 3(a), R=2 -> 0.5, 1/2
    # Query 2 (b): no positives -> left out of MAP@R, a miss for recall
    # Query 3: ranking 2(b) 1(a) 0(a), R=2 -> (0 + 1/2)/2 = 0.25, 1/2
    angles = np.array([0.0, 0.1, 0.25, 0.45])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    got = retrieval_metrics(x, np.array([0, 0, 1, 0]), ks=(1, 2))
    assert got["num_queries_with_positives"] == 3
    assert got["recall@1"] == pytest.approx(2 / 4)
    assert got["recall@2"] == pytest.approx(3 / 4)
    assert got["map@r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert got["r_precision"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)


def test_tie_rule_is_gallery_index_order():
    # Gallery items 0..3 all identical: every similarity ties, so the ranking is index order.
    gallery = np.ones((4, 3))
    labels = np.array([7, 7, 3, 7])
    query = np.ones((1, 3))
    # Query label 3: its only positive is item 2, ranked after items 0 and 1 -> rank 3.
    got = query_gallery_metrics(query, [3], gallery, labels, ks=(1, 2, 3))
    assert [got[f"recall@{k}"] for k in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert got["map@r"] == 0.0
    # Query label 7: ranking 0(+) 1(+) 2(-) 3(+), R=3 -> (1 + 1)/3
    got = query_gallery_metrics(query, [7], gallery, labels, ks=(1,))
    assert got["map@r"] == pytest.approx(2 / 3)
    assert got["r_precision"] == pytest.approx(2 / 3)


def test_k_beyond_gallery_is_clipped_with_warning(caplog):
    rng = np.random.default_rng(6)
    x, labels = clustered(rng, 30, 4, 10)
    labels[0] = 99  # one query without positives
    with caplog.at_level(logging.WARNING):
        got = retrieval_metrics(x, labels, ks=(1, 29, 30, 5000))
    assert "K=[30, 5000]" in caplog.text and "K=29" in caplog.text
    with_pos = got["num_queries_with_positives"] / got["num_queries"]
    assert got["recall@29"] == got["recall@30"] == got["recall@5000"] == pytest.approx(with_pos)
    assert list(got) == ["recall@1", "recall@29", "recall@30", "recall@5000", "map@r",
                         "r_precision", "num_queries", "num_queries_with_positives"]


def test_no_positives_anywhere_gives_nan_map():
    x = np.eye(3)
    got = retrieval_metrics(x, [0, 1, 2], ks=(1, 2))
    assert got["recall@1"] == 0.0 and got["recall@2"] == 0.0
    assert math.isnan(got["map@r"]) and math.isnan(got["r_precision"])
    assert got["num_queries_with_positives"] == 0


def test_progress_goes_to_the_given_logger(caplog):
    rng = np.random.default_rng(7)
    x, labels = clustered(rng, 50, 4, 10)
    log = logging.getLogger("test_metrics_progress")
    with caplog.at_level(logging.INFO, logger="test_metrics_progress"):
        retrieval_metrics(x, labels, ks=(1,), logger=log)
    assert "retrieval metrics: 50/50 (100.0%)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        retrieval_metrics(x, labels, ks=(1,))
    assert "retrieval metrics" not in caplog.text


@pytest.mark.parametrize("features, labels, match", [
    (np.ones((3, 2)), [0, 1], "3 rows but labels has 2"),
    (np.ones(3), [0, 1, 2], "2-D"),
    (np.ones((0, 4)), [], "at least 2 items"),
    (np.ones((1, 4)), [0], "at least 2 items"),
    (np.ones((3, 0)), [0, 1, 2], "zero feature dimension"),
    (np.ones((3, 2)), np.zeros((3, 1)), "labels must be 1-D"),
    (np.array([["a", "b"], ["c", "d"]]), [0, 1], "real numbers"),
])
def test_bad_input_shapes(features, labels, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(features, labels)


def test_bad_feature_values_are_named():
    x = np.ones((10, 3))
    x[[2, 5]] = 0.0
    x[7, 1] = np.nan
    x[8, 0] = np.inf
    with pytest.raises(ValueError) as err:
        retrieval_metrics(x, np.arange(10) % 3)
    text = str(err.value)
    assert "2 row(s) with NaN or Inf values (first indices: [7, 8])" in text
    assert "2 row(s) with zero norm (first indices: [2, 5])" in text


def test_bad_ks_and_query_gallery_shapes():
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match=">= 1"):
        retrieval_metrics(x, [0, 0, 1, 1], ks=(0, 1))
    with pytest.raises(ValueError, match="dimension"):
        query_gallery_metrics(np.ones((2, 3)), [0, 1], x, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="at least one query"):
        query_gallery_metrics(np.ones((0, 2)), [], x, [0, 0, 1, 1])
    with pytest.raises(ValueError, match="gallery_features has 4 rows"):
        query_gallery_metrics(x, [0, 0, 1, 1], x, [0, 1])


def test_extreme_magnitudes_normalise():
    x = np.array([[1e-40, 0.0], [3e38, 3e38], [1.0, 1e-3], [-1.0, 0.0]], dtype=np.float64)
    unit = metrics.l2_normalize_rows(x)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)


def test_exact_duplicates_are_found_beyond_the_sampled_columns():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((12, 64)).astype(np.float32)
    x[5] = x[2]
    x[9] = x[2]
    x[7] = x[1]
    x[7, 3] += 1.0  # equal to row 1 in the sampled columns (0, 4, 8, ...) only
    x[11] = x[4]
    first = metrics._first_equal_row(x)
    assert first.tolist() == [0, 1, 2, 3, 4, 2, 6, 7, 8, 2, 10, 4]


def test_duplicate_gallery_vectors_tie_exactly():
    # 200 copies of one vector among random ones: only the tie rule may order them.
    def make(rng):
        x = rng.standard_normal((400, 48)).astype(np.float32)
        x[200:] = x[0]
        return x, rng.integers(0, 30, 400)

    x, labels = without_near_ties(make, (1, 3, 50))
    got = retrieval_metrics(x, labels, ks=(1, 3, 50), memory_budget_bytes=30_000)
    assert_same(got, brute_force(x, labels, x, labels, (1, 3, 50), leave_one_out=True))


def test_single_k_may_be_a_number():
    rng = np.random.default_rng(10)
    x, labels = clustered(rng, 40, 4, 8)
    assert retrieval_metrics(x, labels, ks=3)["recall@3"] == retrieval_metrics(x, labels, ks=(3,))["recall@3"]


def test_format_metrics_table():
    text = format_metrics_table({"recall@1": 0.81234, "map@r": 0.5, "num_queries": 12})
    assert text.splitlines() == ["recall@1       0.8123", "map@r          0.5000",
                                 "num_queries        12"]


def test_normalized_features_are_ranked_as_given():
    rng = np.random.default_rng(11)
    x, labels = clustered(rng, 60, 6, 16)
    x = 10 * x + 1
    unit = metrics.l2_normalize_rows(x)
    assert retrieval_metrics(unit, labels, normalize=False) == retrieval_metrics(x, labels)
    assert query_gallery_metrics(unit[:20], labels[:20], unit, labels, normalize=False) == \
        query_gallery_metrics(x[:20], labels[:20], x, labels)
    with pytest.raises(ValueError, match="features must be a 2-D"):
        retrieval_metrics(unit[:, :, None], labels, normalize=False)
