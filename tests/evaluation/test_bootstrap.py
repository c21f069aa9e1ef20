"""The bootstrap over classes: its replicates against a direct loop, the paired gain's edge cases, per-query scores
that average to the metrics."""
import re

import numpy as np
import pytest

from src.evaluation.bootstrap import (
    class_draws,
    main,
    metric_interval,
    paired_gain_interval,
    per_query_scores,
)
from src.evaluation.metrics import l2_normalize_rows, query_gallery_metrics, retrieval_metrics


def clustered(seed, classes=12, per_class=4, dim=8, noise=0.8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes) * 10 + 3, per_class)  # labels that are not 0..C-1
    return centres[labels // 10] + noise * rng.normal(size=(len(labels), dim)), labels


def test_per_query_scores_average_to_the_metrics():
    features, labels = clustered(0)
    labels[-1] = 999  # a one-image class: a miss for Recall@1, left out of MAP@R
    metrics = retrieval_metrics(features, labels, ks=(1,))
    scores = per_query_scores(features, labels)
    assert scores["recall@1"].mean() == pytest.approx(metrics["recall@1"], abs=1e-12)
    assert np.isnan(scores["map@r"][-1]) and np.isnan(scores["map@r"]).sum() == 1
    assert np.nanmean(scores["map@r"]) == pytest.approx(metrics["map@r"], abs=1e-12)
    queries, gallery = features[::2], features[1::2]
    qg = query_gallery_metrics(queries, labels[::2], gallery, labels[1::2], ks=(1,))
    qg_scores = per_query_scores(queries, labels[::2], gallery, labels[1::2])
    assert qg_scores["recall@1"].mean() == pytest.approx(qg["recall@1"], abs=1e-12)


def test_replicates_equal_a_direct_resampling_of_classes():
    """Each replicate's value equals the mean over the queries of the classes it drew, each class as often as
    drawn: computed here with an explicit loop over the drawn classes."""
    rng = np.random.default_rng(1)
    classes = np.repeat([5, 7, 9, 11, 13], [3, 1, 4, 2, 5])
    values = rng.random(len(classes))
    values[[2, 9]] = np.nan  # queries that do not count
    counts, index = class_draws(classes, resamples=50, seed=3)
    assert counts.shape == (50, 5) and np.all(counts.sum(1) == 5)
    names = np.unique(classes)
    direct = []
    for row in counts:
        drawn = np.concatenate([np.repeat(np.flatnonzero(classes == names[c]), int(n)) for c, n in enumerate(row)])
        direct.append(np.nanmean(values[drawn]) if np.any(~np.isnan(values[drawn])) else np.nan)
    direct = np.array(direct)
    estimate, low, high = metric_interval(values, classes, resamples=50, seed=3, level=0.9)
    assert estimate == pytest.approx(np.nanmean(values))
    kept = direct[~np.isnan(direct)]
    assert (low, high) == pytest.approx(tuple(np.percentile(kept, [5, 95])))


def test_identical_models_gain_exactly_zero_with_a_zero_width_interval():
    values = np.random.default_rng(2).random(40)
    classes = np.repeat(np.arange(10), 4)
    assert paired_gain_interval(values, values.copy(), classes) == (0.0, 0.0, 0.0)


def test_a_model_better_on_every_class_has_an_interval_above_zero():
    rng = np.random.default_rng(4)
    classes = np.repeat(np.arange(20), 3)
    before = rng.random(60)
    after = before + 0.01 + 0.02 * rng.random(60)  # better on every query, by different amounts
    gain, low, high = paired_gain_interval(before, after, classes)
    assert 0 < low <= gain <= high
    # Unpaired, the same difference is inside the noise: the pairing is what makes it a result.
    assert metric_interval(after, classes)[1] < metric_interval(before, classes)[2]


def test_a_gain_that_is_noise_has_an_interval_across_zero():
    rng = np.random.default_rng(5)
    classes = np.repeat(np.arange(30), 2)
    before = rng.integers(0, 2, 60).astype(float)
    after = rng.permutation(before)  # same mean, different queries right
    gain, low, high = paired_gain_interval(before, after, classes)
    assert gain == 0 and low < 0 < high


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="at least 2 classes"):
        metric_interval([1.0, 0.0], [3, 3])
    with pytest.raises(ValueError, match="same queries"):
        paired_gain_interval([1.0, np.nan], [1.0, 0.0], [1, 2])
    with pytest.raises(ValueError, match="level"):
        metric_interval([1.0, 0.0], [1, 2], level=95)


def test_the_command_prints_a_table_with_intervals_and_paired_gains(tmp_path, capsys):
    features, labels = clustered(6)
    worse = features + np.random.default_rng(7).normal(scale=1.5, size=features.shape)
    paths = {}
    for name, feats in (("a", features), ("b", features.copy()), ("w", worse)):
        paths[name] = str(tmp_path / f"{name}.npz")
        np.savez(paths[name], features=l2_normalize_rows(feats), labels=labels,
                 paths=np.array([f"{i}.jpg" for i in range(len(labels))]))
    main([f"first={paths['a']}", f"same={paths['b']}", f"worse={paths['w']}", "--gain", "same:first",
          "--gain", "worse:first", "--resamples", "200"])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[1:4]}
    recall, low, high = map(float, re.match(r"\s*first\s+([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", rows["first"]).groups())
    assert recall == pytest.approx(retrieval_metrics(features, labels, ks=(1,))["recall@1"], abs=1e-4)
    assert low <= recall <= high and rows["same"].split()[1:] == rows["first"].split()[1:]
    assert "same over first   +0.0000 [+0.0000, +0.0000]  +0.0000 [+0.0000, +0.0000]" in out[-2]
    gain = float(out[-1].split()[3])
    worse_recall = retrieval_metrics(worse, labels, ks=(1,))["recall@1"]
    assert gain == pytest.approx(worse_recall - recall, abs=1e-4) and gain < 0
    main([paths["a"], paths["b"], "--resamples", "50"])  # two files: the second's gain over the first
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"  {paths['b']} over {paths['a']}") and last.count("+0.0000") == 6
    with pytest.raises(SystemExit):
        main([paths["a"], paths["b"], "--gain", "b:nothing"])
