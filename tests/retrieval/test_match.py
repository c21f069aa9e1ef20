"""Threshold pairs and groups equal a brute-force pass over every pair; calibration picks the lowest threshold that
reaches the precision, checked against a scan of every candidate."""
import numpy as np
import pytest

from src.evaluation.metrics import l2_normalize_rows
from src.retrieval.match import calibrate, check_precision, check_threshold, connected_groups, similar_pairs
from src.retrieval.search import ExactSearch


def features(count=120, dim=12, seed=0, per_class=4, spread=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((count // per_class + 1, dim))
    labels = np.arange(count) // per_class
    return l2_normalize_rows(centres[labels] + spread * rng.standard_normal((count, dim))), labels


def brute_pairs(x, threshold):
    sim = x.astype(np.float64) @ x.T.astype(np.float64)
    i, j = np.nonzero(np.triu(sim >= threshold, 1))
    return set(zip(i.tolist(), j.tolist(), strict=True)), sim


def test_pairs_are_every_pair_at_least_the_threshold_once():
    x, _ = features()
    i, j, s = similar_pairs(ExactSearch(x), x, 0.8, max_neighbours=200, batch=17)
    want, sim = brute_pairs(x, 0.8)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == want and len(i) == len(want) and (i < j).all()
    np.testing.assert_allclose(s, sim[i, j], atol=1e-5)
    assert (np.diff(s) <= 0).all()  # most similar first


def test_groups_are_the_connected_components():
    groups = connected_groups(8, np.array([0, 1, 5, 3]), np.array([1, 2, 6, 4]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3, 4], [5, 6]]  # 7 is alone: no group
    assert connected_groups(3, np.array([], np.int64), np.array([], np.int64)) == []


def test_few_neighbours_warn_that_pairs_may_be_missing(caplog):
    x = l2_normalize_rows(np.ones((6, 3)) + 1e-3 * np.arange(18).reshape(6, 3))  # all near-duplicates
    i, _, _ = similar_pairs(ExactSearch(x), x, 0.5, max_neighbours=2)
    assert "may be missing (raise --max_neighbours)" in caplog.text
    assert len(connected_groups(6, i, _)) == 1


def test_calibration_picks_the_lowest_threshold_reaching_the_precision():
    x, labels = features(count=80, spread=0.9, seed=3)
    result = calibrate(x, labels, 0.9, block_rows=13)
    _, sim = brute_pairs(x, 0)
    upper = np.triu_indices(len(x), 1)
    s, same = sim[upper], (labels[:, None] == labels[None, :])[upper]
    candidates = np.sort(s[same])

    def precision_at(t):
        return same[s >= t].mean()

    reaching = [t for t in candidates if precision_at(t) >= 0.9 - 1e-12]
    assert result.threshold == pytest.approx(min(reaching), abs=1e-6)
    assert result.precision == pytest.approx(precision_at(result.threshold), abs=1e-6) and result.precision >= 0.9
    assert result.recall == pytest.approx(same[s >= result.threshold].sum() / same.sum(), abs=1e-6)
    assert result.positive_pairs == same.sum()
    assert "precision" in result.line("cal.txt") and "recall" in result.line("cal.txt")


def test_calibration_needs_positives_and_a_reachable_precision():
    x, _ = features(count=20)
    with pytest.raises(ValueError, match="cal.txt: no two of its 20 images share a label"):
        calibrate(x, np.arange(20), 0.9, "cal.txt")
    labels = np.arange(20) % 2  # labels that have nothing to do with the features
    with pytest.raises(ValueError, match="no threshold reaches precision 1.0; the highest is"):
        calibrate(x, labels, 1.0)


@pytest.mark.parametrize("value", [0, 1.5, -0.1])
def test_precision_is_in_0_1(value):
    with pytest.raises(ValueError, match=r"--precision must be in \(0, 1\]"):
        check_precision(value)


def test_threshold_is_a_cosine_similarity():
    with pytest.raises(ValueError, match=r"--threshold is a cosine similarity, in \[-1, 1\]"):
        check_threshold(1.2)
