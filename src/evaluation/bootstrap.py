"""95% intervals of retrieval metrics, and of the gain of one model over another, by a bootstrap over classes.

The images of one product are not independent samples (they are views of one object and retrieve each other), so
the resampled unit is the class (a test product), not the image: each replicate draws as many classes as the test
set has, with replacement, and a class drawn c times counts each of its queries c times. The gallery stays the
whole test set (the ranking of each query is computed once, by src/evaluation/metrics.py with per_query=True);
only which queries are averaged is resampled. A metric's replicate is the weighted mean of its per-query values
over the queries that count for it (MAP@R: the queries with positives).

A *paired* interval resamples the same classes for both models in each replicate and takes the difference, so a
class that is hard for both does not widen the interval of the gain: identical models give a gain of exactly 0
with a zero-width interval. Intervals are percentile intervals of `resamples` replicates from a fixed `seed`.

    python -m src.evaluation.bootstrap softmax=A.npz finetuned=B.npz   # eval.py --save_features files:
        # each one's intervals, and finetuned's gain over softmax with its paired interval
"""
import argparse
import math

import numpy as np

from src.evaluation.metrics import query_gallery_metrics, retrieval_metrics

DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
METRICS = ("recall@1", "map@r")


def class_draws(classes, resamples=DEFAULT_RESAMPLES, seed=DEFAULT_SEED):
    """(counts (resamples, C): how often each of the C classes is drawn per replicate, class index of each query).

    `classes`: the class label of each query. Each replicate draws C classes uniformly with replacement."""
    names, index = np.unique(np.asarray(classes), return_inverse=True)
    if len(names) < 2:
        raise ValueError(f"a bootstrap over classes needs at least 2 classes, got {len(names)}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    counts = np.random.default_rng(seed).multinomial(len(names), np.full(len(names), 1.0 / len(names)),
                                                     size=int(resamples))
    return counts.astype(np.float64), index.reshape(-1)


def _replicates(values, counts, index):
    """The metric of every replicate: sum over classes of count x (sum of the class's values) / (its queries)."""
    values = np.asarray(values, np.float64)
    if values.shape != index.shape:
        raise ValueError(f"{len(values)} per-query values for {len(index)} queries")
    valid = ~np.isnan(values)
    num_classes = counts.shape[1]
    sums = np.bincount(index, weights=np.where(valid, values, 0.0), minlength=num_classes)
    sizes = np.bincount(index, weights=valid.astype(np.float64), minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (counts @ sums) / (counts @ sizes)  # NaN for a replicate that drew no query that counts


def _interval(estimate, replicates, level):
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    replicates = replicates[~np.isnan(replicates)]
    if not len(replicates):
        return estimate, math.nan, math.nan
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return estimate, float(low), float(high)


def _mean(values):
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.any(~np.isnan(values)) else math.nan


def metric_interval(values, classes, resamples=DEFAULT_RESAMPLES, level=DEFAULT_LEVEL, seed=DEFAULT_SEED):
    """(estimate, low, high) of the mean of per-query `values` (NaN: the query does not count)."""
    counts, index = class_draws(classes, resamples, seed)
    return _interval(_mean(values), _replicates(values, counts, index), level)


def paired_gain_interval(before, after, classes, resamples=DEFAULT_RESAMPLES, level=DEFAULT_LEVEL,
                         seed=DEFAULT_SEED):
    """(gain, low, high) of mean(after) - mean(before), both models' queries resampled by the same classes."""
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if before.shape != after.shape or not np.array_equal(np.isnan(before), np.isnan(after)):
        raise ValueError("the two models' per-query values must cover the same queries (same list, same order)")
    counts, index = class_draws(classes, resamples, seed)
    gains = _replicates(after, counts, index) - _replicates(before, counts, index)
    return _interval(_mean(after) - _mean(before), gains, level)


def per_query_scores(features, labels, gallery_features=None, gallery_labels=None, normalize=True):
    """The per-query Recall@1 (0/1) and AP@R of leave-one-out retrieval (or of queries against a gallery).
    normalize=False: the features are unit rows already (the evaluation's), ranked as given."""
    if gallery_features is None:
        return retrieval_metrics(features, labels, ks=(1,), per_query=True, normalize=normalize)[1]
    return query_gallery_metrics(features, labels, gallery_features, gallery_labels, ks=(1,), per_query=True,
                                 normalize=normalize)[1]


def _cell(estimate, low, high, signed=False):
    number = "{:+.4f}" if signed else "{:.4f}"
    return f"{number.format(estimate)} [{number.format(low)}, {number.format(high)}]"


def interval_lines(scores, classes, resamples=DEFAULT_RESAMPLES, level=DEFAULT_LEVEL, seed=DEFAULT_SEED):
    """One line per metric of METRICS, `recall@1_ci95  0.4877 [0.4140, 0.5596]`: its value and interval."""
    percent = int(round(level * 100))
    return [f"{name}_ci{percent}  {_cell(*metric_interval(scores[name], classes, resamples, level, seed))}"
            for name in METRICS]


def _load_scores(path):
    """(per-query scores, query labels) of an eval.py --save_features file."""
    with np.load(path, allow_pickle=False) as data:
        gallery = (data["gallery_features"], data["gallery_labels"]) if "gallery_features" in data else ()
        labels = data["labels"]
        # eval.py saves unit rows; normalising again would only move the last bits of near ties
        return per_query_scores(data["features"], labels, *gallery, normalize=False), labels


def summary_table(rows, gains, resamples=DEFAULT_RESAMPLES, level=DEFAULT_LEVEL, seed=DEFAULT_SEED):
    """Lines of a table: each (name, scores, classes) row's Recall@1 and MAP@R with intervals, then each
    (after, before) pair of row names' gain with its paired interval. All rows must be of one query list."""
    by_name = {name: scores for name, scores, _ in rows}
    classes = rows[0][2]
    width = max(len(name) for name, _, _ in rows)
    gain_names = [f"{after} over {before}" for after, before in gains]
    width = max([width] + [len(name) for name in gain_names])
    percent = f"{int(round(level * 100))}%"
    lines = [f"  {'':<{width}}  {'Recall@1 [' + percent + ' interval]':<26}  MAP@R [{percent} interval]"]
    for name, scores, _ in rows:
        cells = [_cell(*metric_interval(scores[m], classes, resamples, level, seed)) for m in METRICS]
        lines.append(f"  {name:<{width}}  {cells[0]:<26}  {cells[1]}")
    if gains:
        lines.append(f"  gain, paired (the same resampled {len(np.unique(classes))} classes for both):")
    for label, (after, before) in zip(gain_names, gains, strict=True):
        cells = [_cell(*paired_gain_interval(by_name[before][m], by_name[after][m], classes, resamples, level, seed),
                       signed=True) for m in METRICS]
        lines.append(f"  {label:<{width}}  {cells[0]:<26}  {cells[1]}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m src.evaluation.bootstrap",
        description="Recall@1 and MAP@R with 95%% intervals (bootstrap over the test classes) from eval.py "
                    "--save_features files of one list, and the gain of one over another with a paired interval.")
    parser.add_argument("features", nargs="+", metavar="[NAME=]NPZ",
                        help="eval.py (or src.evaluation.baselines) --save_features files, each optionally named")
    parser.add_argument("--gain", action="append", default=None, metavar="AFTER:BEFORE",
                        help="a gain to show, by the two files' names (repeatable; default with two files: the "
                             "second over the first)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    named = [spec.split("=", 1) if "=" in spec else (spec, spec) for spec in args.features]
    rows = []
    for name, path in named:
        scores, labels = _load_scores(path)
        if rows and not np.array_equal(labels, rows[0][2]):
            raise ValueError(f"{path} holds another query list than {named[0][1]} (labels differ)")
        rows.append((name, scores, labels))
    gains = [tuple(spec.split(":", 1)) for spec in args.gain or []]
    if args.gain is None and len(rows) == 2:
        gains = [(rows[1][0], rows[0][0])]
    names = {name for name, _, _ in rows}
    for pair in gains:
        if len(pair) != 2 or not set(pair) <= names:
            parser.error(f"--gain {':'.join(pair)}: expected AFTER:BEFORE, two of the names {', '.join(sorted(names))}")
    print("\n".join(summary_table(rows, gains, args.resamples, seed=args.seed)))


if __name__ == "__main__":
    from src.runtime.cli import run

    run(main)
