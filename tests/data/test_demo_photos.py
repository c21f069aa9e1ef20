"""The photo demo set: SOP layout, disjoint train/test products of shared photos, deterministic, views."""
import os

import cv2
import numpy as np
import pytest

pytest.importorskip("skimage")

from src.data.demo_photos import HEADER, load_photo, make_photo_dataset, product_boxes, render_view  # noqa: E402
from src.data.sop_lists import prepare_lists  # noqa: E402
from src.evaluation.baselines import raw_pixel_features  # noqa: E402

PHOTOS = ("astronaut", "camera", "coffee")


def read_ebay(path):
    with open(path) as f:
        lines = f.readlines()
    assert lines[0] == HEADER
    return [line.split() for line in lines[1:]]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    summary = make_photo_dataset(str(root), grid=2, views=3, size=32, seed=5, photos=PHOTOS, test_regions=1)
    return root, summary


def test_layout_counts_and_disjoint_products(small_set):
    root, summary = small_set
    # 3 photos x 2 x 2 regions, 1 region per photo in test, 3 views each
    assert summary == {"Ebay_train.txt": (3 * 3 * 3, 3 * 3), "Ebay_test.txt": (3 * 1 * 3, 3 * 1)}
    train = read_ebay(root / "Ebay_train.txt")
    test = read_ebay(root / "Ebay_test.txt")
    image_ids = [int(row[0]) for row in train + test]
    assert sorted(image_ids) == list(range(1, len(image_ids) + 1))
    train_classes = {row[1] for row in train}
    test_classes = {row[1] for row in test}
    assert len(train_classes) == 9 and len(test_classes) == 3 and not train_classes & test_classes
    # as in SOP, super-classes (photos) are shared: every photo has one test product
    assert sorted(row[2] for row in test) == sorted(["1", "2", "3"] * 3)
    assert {row[2] for row in train} == {"1", "2", "3"}
    for row in train + test:
        assert row[3].split("/")[0] == PHOTOS[int(row[2]) - 1] + "_final"
        image = cv2.imread(str(root / row[3]))
        assert image is not None and image.shape == (32, 32, 3), row


def test_test_regions_is_checked(tmp_path):
    with pytest.raises(ValueError, match="test_regions"):
        make_photo_dataset(str(tmp_path), grid=2, photos=("coins",), test_regions=5)


def test_sop_lists_read_it(small_set):
    root, _ = small_set
    out = root / "lists"
    prepare_lists(str(root), str(out))
    with open(out / "test.txt") as f:
        rows = [line.split() for line in f]
    assert len(rows) == 9 and all(os.path.isfile(root / path) for path, _ in rows)


def test_deterministic_from_the_seed(tmp_path):
    def build(name, seed):
        root = tmp_path / name
        make_photo_dataset(str(root), grid=2, views=2, size=24, seed=seed, photos=("coins",), test_regions=1)
        return {p: (root / "coins_final" / p).read_bytes() for p in sorted(os.listdir(root / "coins_final"))}

    assert build("a", 1) == build("b", 1)
    assert build("a", 1) != build("c", 2)


def test_product_boxes_tile_the_centre_square():
    boxes = product_boxes(300, 451, 3)
    assert len(boxes) == 9
    side = 100
    assert all(b[2] == side for b in boxes)
    xs = sorted({b[0] for b in boxes})
    ys = sorted({b[1] for b in boxes})
    assert xs == [75 + 50, 75 + 150, 75 + 250] and ys == [50, 150, 250]


def test_views_of_a_product_resemble_each_other_more_than_other_products():
    photo = load_photo("astronaut")
    assert photo.shape == (512, 512, 3) and photo.dtype == np.uint8
    boxes = product_boxes(*photo.shape[:2], 3)
    rng = np.random.default_rng(0)
    views = np.array([[render_view(photo, box, 32, rng).astype(np.float32) for _ in range(4)] for box in boxes])
    assert views.shape == (9, 4, 32, 32, 3)
    # a product's own views differ (they are views, not copies) ...
    assert np.abs(views[:, 0] - views[:, 1]).mean() > 3
    # ... but, on average, less than views of other regions of the same photo
    flat = views.reshape(9, 4, -1)
    same = np.mean([np.abs(flat[p, i] - flat[p, j]).mean() for p in range(9) for i in range(4) for j in range(i)])
    other = np.mean([np.abs(flat[p, 0] - flat[q, 0]).mean() for p in range(9) for q in range(p)])
    assert same < other


def test_mirror_shows_the_product_mirrored():
    photo = load_photo("astronaut")
    box = product_boxes(*photo.shape[:2], 3)[4]
    flat = {"rotation": 0.0, "shift": 0.0, "zoom": (1.0, 1.0)}
    plain = render_view(photo, box, 48, np.random.default_rng(3), **flat).astype(np.float32)
    mirrored = render_view(photo, box, 48, np.random.default_rng(3), mirror=True, **flat).astype(np.float32)
    # the same light and colour draws; the picture mirrored (up to the one-pixel grid offset of a flip)
    assert np.abs(mirrored - plain[:, ::-1]).mean() < 0.5 * np.abs(mirrored - plain).mean()


def test_flip_and_rotation_reach_the_views(tmp_path):
    def views(name, **viewpoint):
        root = tmp_path / name
        make_photo_dataset(str(root), grid=2, views=6, size=24, seed=4, photos=("astronaut",), test_regions=1,
                           **viewpoint)
        return np.array([cv2.imread(str(root / "astronaut_final" / f"1_{v}.JPG")) for v in range(6)], np.float32)

    default, turned = views("default"), views("turned", rotation=180.0, flip=True)
    # a product's turned and mirrored views no longer look alike pixel by pixel (mean cosine similarity of
    # the raw-pixel baseline's 8 x 8 features: 0.42 and 0.18 when written)
    similarity = []
    for images in (default, turned):
        feats = raw_pixel_features(images.astype(np.uint8), 8)
        similarity.append(float((feats @ feats.T)[np.triu_indices(len(feats), 1)].mean()))
    assert similarity[0] > 0.35 and similarity[1] < similarity[0] - 0.15, similarity
    assert np.array_equal(views("again"), default)  # defaults unchanged by the new options
