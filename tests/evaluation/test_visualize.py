"""The retrieval picture: neighbours, frame colours, layout, file output."""
import os

import cv2
import numpy as np
import pytest

from src.evaluation.metrics import l2_normalize_rows
from src.evaluation.visualize import (
    OTHER_CLASS,
    QUERY,
    SAME_CLASS,
    GridLayout,
    choose_queries,
    draw_retrievals,
    nearest_neighbours,
    save_image,
)

N = 20
# Points on the unit circle at unevenly spaced angles: no two neighbours of a query are at the same
# distance, so the true order is known without ties.
ANGLES = 0.1 * np.arange(N) + 0.003 * np.arange(N) ** 2
FEATURES = np.stack([np.cos(ANGLES), np.sin(ANGLES)], axis=1) * np.linspace(1, 3, N)[:, None]  # norms vary
LABELS = np.arange(N) // 3


def true_top_k(query, k):
    """Nearest by angle, the query itself left out: the order the features were built to have."""
    others = [i for i in range(N) if i != query]
    return sorted(others, key=lambda i: abs(ANGLES[i] - ANGLES[query]))[:k]


def solid_colour(i):
    return (10 * i + 5, 250 - 12 * i, (37 * i) % 256)


def solid_images(size=(40, 50)):
    return [np.full(size + (3,), solid_colour(i), np.uint8) for i in range(N)]


def test_nearest_neighbours_order_and_distances():
    queries = np.array([0, 7, 19])
    indices, distances = nearest_neighbours(FEATURES, queries, top_k=5)
    assert indices.shape == (3, 5) and distances.shape == (3, 5)
    for row, query in enumerate(queries):
        expected = true_top_k(query, 5)
        assert indices[row].tolist() == expected
        # squared L2 between unit vectors = 2 - 2 cos(angle between them)
        np.testing.assert_allclose(distances[row], 2 - 2 * np.cos(ANGLES[expected] - ANGLES[query]), atol=1e-5)
        assert np.all(np.diff(distances[row]) >= 0)


def test_nearest_neighbours_leaves_the_query_out_and_breaks_ties_by_index():
    features = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    indices, distances = nearest_neighbours(features, [1, 3], top_k=3)
    assert indices[0].tolist() == [0, 2, 3]  # duplicates of the query first, lower index first
    assert distances[0].tolist() == pytest.approx([0.0, 0.0, 2.0])
    assert indices[1].tolist() == [0, 1, 2]
    # k is clipped to the N - 1 other items
    assert nearest_neighbours(features, [0], top_k=10)[0].shape == (1, 3)


def test_nearest_neighbours_rejects_bad_input():
    with pytest.raises(ValueError, match="query indices"):
        nearest_neighbours(FEATURES, [N], top_k=5)
    with pytest.raises(ValueError, match="at least 2"):
        nearest_neighbours(FEATURES[:1], [0], top_k=5)


def test_choose_queries_is_seeded_distinct_and_sorted():
    a = choose_queries(100, 6, seed=0)
    assert a.tolist() == choose_queries(100, 6, seed=0).tolist()
    assert a.tolist() != choose_queries(100, 6, seed=1).tolist()
    assert len(set(a.tolist())) == 6 and a.tolist() == sorted(a.tolist())
    assert choose_queries(4, 6).tolist() == [0, 1, 2, 3]


def test_default_layout_size():
    layout = GridLayout(rows=6, top_k=5)
    # 64 px images in 3 px frames (70 px cells), 4 px spacing, 12 px after the query, 18 px caption
    assert (layout.cell, layout.width, layout.height) == (70, 4 + 6 * 74 + 12, 18 + 4 + 6 * 74)
    assert layout.cell_origin(0, 0) == (22, 4)
    assert layout.cell_origin(2, 1) == (22 + 2 * 74, 4 + 74 + 12)


def check_picture(picture, queries, tile=64):
    layout = GridLayout(rows=len(queries), top_k=5, tile=tile)
    assert picture.shape == (layout.height, layout.width, 3) and picture.dtype == np.uint8
    for row, query in enumerate(queries):
        cells = [(0, query, QUERY)] + [
            (column, index, SAME_CLASS if LABELS[index] == LABELS[query] else OTHER_CLASS)
            for column, index in enumerate(true_top_k(query, 5), start=1)]
        for column, index, frame in cells:
            y, x = layout.cell_origin(row, column)
            # frame: the corner, the middle of the left edge and of the right edge
            for py, px in ((y, x), (y + layout.cell // 2, x + 1), (y + layout.cell // 2, x + layout.cell - 1)):
                assert tuple(picture[py, px]) == frame, (row, column, py, px)
            # inside: the item's own colour (above the distance strip at the bottom)
            centre = picture[y + layout.border + tile // 3, x + layout.border + tile // 2]
            assert tuple(centre) == solid_colour(index), (row, column)
    return layout


def test_draw_retrievals_frames_and_order():
    picture = draw_retrievals(FEATURES, LABELS, solid_images(), num_queries=6, seed=3)
    queries = choose_queries(N, 6, seed=3)
    check_picture(picture, queries)
    # the construction gives both colours of frame
    colours = {LABELS[i] == LABELS[q] for q in queries for i in true_top_k(q, 5)}
    assert colours == {True, False}


def test_draw_retrievals_reads_paths_under_root(tmp_path):
    paths = []
    for i, image in enumerate(solid_images()):
        paths.append(os.path.join("imgs", f"{i}.png"))
        os.makedirs(tmp_path / "imgs", exist_ok=True)
        cv2.imwrite(str(tmp_path / paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    picture = draw_retrievals(FEATURES, LABELS, paths, root=str(tmp_path), num_queries=2, seed=0, tile=48)
    check_picture(picture, choose_queries(N, 2, seed=0), tile=48)


def test_draw_retrievals_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one entry per item"):
        draw_retrievals(FEATURES, LABELS[:-1], solid_images())


def test_save_image_round_trip(tmp_path):
    image = np.zeros((10, 12, 3), np.uint8)
    image[:, :6] = (255, 0, 0)  # red in RGB
    path = tmp_path / "sub" / "out.png"
    save_image(str(path), image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)
    assert os.listdir(path.parent) == ["out.png"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(ValueError, match="suffix"):
        save_image(str(tmp_path / "out"), image)
    with pytest.raises(ValueError, match="cannot write"):
        save_image(str(tmp_path / "out.notanimage"), image)


def test_normalized_features_give_the_same_neighbours():
    unit = l2_normalize_rows(FEATURES)
    for got, expected in zip(nearest_neighbours(unit, [0, 5], normalize=False), nearest_neighbours(FEATURES, [0, 5]),
                             strict=True):
        np.testing.assert_array_equal(got, expected)
