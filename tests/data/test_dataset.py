import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from src.data.dataset import create_dataset
from src.data.decoding import load_image
from src.data.image_list import read_image_list
from src.data.transforms import eval_transform, random_resized_crop_box, train_transform

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def write_list(path, text):
    path.write_text(text)
    return str(path)


def write_jpeg(path, height=40, width=60, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    image = np.clip(ramp + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return image


# ---------------------------------------------------------------------------------------------
# List reader

def test_reader_maps_class_ids_to_contiguous_labels(tmp_path):
    text = "image_id class_id\na/1.jpg 7\n\nb/2.jpg 100\n  c/3.jpg\t7 \nd.jpg -3\n"
    name = write_list(tmp_path / "l.txt", text)
    images = read_image_list(name, root="/data")
    assert images.paths == ("a/1.jpg", "b/2.jpg", "c/3.jpg", "d.jpg")
    assert images.labels.tolist() == [1, 2, 1, 0]
    assert images.labels.dtype == np.int32
    assert images.class_ids.tolist() == [-3, 7, 100]
    assert images.num_classes == 3
    assert images.full_path(1) == "/data/b/2.jpg"
    assert images.where(2) == f"{name}:5"


def test_reader_defaults_root_to_the_list_folder(tmp_path):
    images = read_image_list(write_list(tmp_path / "l.txt", "x.jpg 1\n"))
    assert images.full_path(0) == str(tmp_path / "x.jpg")


@pytest.mark.parametrize("text,line,what", [
    ("a.jpg 1\nb.jpg 2 3\n", 2, "expected 'path label', got 3 fields"),
    ("a.jpg 1\nb.jpg\n", 2, "got 1 fields"),
    ("a.jpg 1\n\nb.jpg x1\n", 3, "label 'x1' is not an integer"),
    ("a.jpg 1.5\n", 1, "label '1.5' is not an integer"),
    ("image_id class_id\nimage_id 3 4\n", 2, "got 3 fields"),
])
def test_reader_rejects_malformed_lines_naming_file_and_line(tmp_path, text, line, what):
    name = write_list(tmp_path / "bad.txt", text)
    with pytest.raises(ValueError, match=f"{name}:{line}: .*") as error:
        read_image_list(name)
    assert what in str(error.value)


@pytest.mark.parametrize("text", ["", "\n\n", "image_id class_id super_class_id path\n"])
def test_reader_rejects_an_empty_list(tmp_path, text):
    name = write_list(tmp_path / "empty.txt", text)
    with pytest.raises(ValueError, match="holds no images"):
        read_image_list(name)


# ---------------------------------------------------------------------------------------------
# Image loading

def test_load_jpeg_converts_bgr_to_rgb(tmp_path):
    path = str(tmp_path / "red.png")
    Image.new("RGB", (5, 4), (200, 30, 10)).save(path)
    image = load_image(path)
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    assert image[0, 0].tolist() == [200, 30, 10]


def test_missing_image_names_path_and_list_line(tmp_path):
    path = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match=f"{path} \\(listed at l.txt:4\\)"):
        load_image(path, "l.txt:4")


def test_truncated_jpeg_names_path_and_list_line(tmp_path):
    path = tmp_path / "cut.jpg"
    write_jpeg(path)
    path.write_bytes(path.read_bytes()[:120])
    with pytest.raises(ValueError, match=f"cannot decode image: {path} \\(listed at l.txt:2\\)"):
        load_image(str(path), "l.txt:2")


def test_grayscale_becomes_three_channels(tmp_path):
    path = str(tmp_path / "gray.png")
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    cv2.imwrite(path, gray)
    image = load_image(path)
    assert image.shape == (3, 4, 3)
    assert np.array_equal(image, np.repeat(gray[:, :, None], 3, axis=2))


def test_png_alpha_is_dropped(tmp_path):
    path = str(tmp_path / "rgba.png")
    rgba = np.random.default_rng(0).integers(0, 256, (6, 5, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(path)
    image = load_image(path)
    assert np.array_equal(image, rgba[:, :, :3])


def test_palette_png_becomes_rgb(tmp_path):
    path = str(tmp_path / "palette.png")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[:2] = (255, 0, 0)
    rgb[2:] = (0, 0, 255)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=2).save(path)
    assert Image.open(path).mode == "P"
    assert np.array_equal(load_image(path), rgb)


def test_16_bit_png_is_scaled_to_8_bits(tmp_path):
    path = str(tmp_path / "deep.png")
    rgb8 = np.array([[[0, 128, 255], [1, 254, 77]]], np.uint8)
    cv2.imwrite(path, rgb8[:, :, ::-1].astype(np.uint16) * 257)
    image = load_image(path)
    assert image.dtype == np.uint8
    assert np.array_equal(image, rgb8)


# ---------------------------------------------------------------------------------------------
# Transforms

def reference_normalize(rgb):
    out = np.empty((3,) + rgb.shape[:2], np.float64)
    for c in range(3):
        out[c] = (rgb[:, :, c].astype(np.float64) - MEAN[c]) / STD[c]
    return out


def test_eval_crop_matches_an_opencv_reference(tmp_path):
    path = tmp_path / "e.jpg"
    write_jpeg(path, height=40, width=60, seed=3)
    bgr = cv2.imread(str(path))
    # Short side 40 -> 32: 60 x 40 becomes 48 x 32, then the centre 32 columns (8..39).
    resized = cv2.resize(bgr, (48, 32), interpolation=cv2.INTER_CUBIC)
    expected = reference_normalize(resized[:, 8:40, ::-1])
    out = eval_transform(load_image(str(path)), 32)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


def test_eval_squash_matches_an_opencv_reference(tmp_path):
    path = tmp_path / "e.jpg"
    write_jpeg(path, height=50, width=30, seed=4)
    rgb = np.ascontiguousarray(cv2.imread(str(path))[:, :, ::-1])
    expected = reference_normalize(cv2.resize(rgb, (32, 32), interpolation=cv2.INTER_CUBIC))
    np.testing.assert_allclose(eval_transform(load_image(str(path)), 32, "squash"), expected, atol=1e-5)


def test_eval_rejects_unknown_resize_mode():
    with pytest.raises(ValueError, match="eval_resize"):
        eval_transform(np.zeros((8, 8, 3), np.uint8), 4, "stretch")


def test_random_resized_crop_box_stays_inside_and_within_scale_and_ratio():
    rng = np.random.default_rng(0)
    for height, width in [(40, 60), (500, 375), (10, 200)]:
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(height, width, rng)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width and h > 0 and w > 0
            if (height, width) != (10, 200):  # 10 x 200 falls back to a centre crop at times
                assert 0.07 <= h * w / (height * width) <= 1.0
                assert 3 / 4 - 0.1 <= w / h <= 4 / 3 + 0.1


def test_train_transform_is_reproducible_and_flips():
    image = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    a = train_transform(image, 32, np.random.default_rng(5))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, train_transform(image, 32, np.random.default_rng(5)))
    flips = {bool(np.random.default_rng(s).random() < 0.5) for s in range(20)}
    assert flips == {True, False}
    # Same crop draw without the flip: equal to the flipped output mirrored, or to it unchanged.
    for seed in range(6):
        flipped = train_transform(image, 32, np.random.default_rng(seed), hflip=True)
        plain = train_transform(image, 32, np.random.default_rng(seed), hflip=False)
        assert np.array_equal(flipped, plain) or np.array_equal(flipped, plain[:, :, ::-1])


def test_crop_scale_min_bounds_the_crop_area():
    image = np.random.default_rng(2).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    # scale (1, 1) on a square image: the whole image every time, whatever the draw
    whole = reference_normalize(cv2.resize(image, (32, 32), interpolation=cv2.INTER_CUBIC))
    for seed in range(5):
        out = train_transform(image, 32, np.random.default_rng(seed), hflip=False, crop_scale_min=1.0)
        np.testing.assert_allclose(out, whole, atol=1e-5)
    areas = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        top, left, h, w = random_resized_crop_box(48, 48, rng, scale=(0.25, 1.0))
        areas.append(h * w / 48 ** 2)
    assert min(areas) >= 0.23 and max(areas) <= 1.0 and min(areas) < 0.35  # the bound is reached, not passed


def test_crop_scale_min_is_checked(tmp_path):
    write_jpeg(tmp_path / "a.jpg")
    listed = write_list(tmp_path / "l.txt", "a.jpg 0\na.jpg 1\n")
    with pytest.raises(ValueError, match="crop_scale_min must be in"):
        create_dataset(str(tmp_path), listed, 2, 16, "shuffle", crop_scale_min=0.0)


# ---------------------------------------------------------------------------------------------
# Pipeline end to end (solid-colour PNGs: the colour encodes class and image, and survives every
# crop, flip and resize exactly, so labels can be checked against pixels)

CLASS_SIZES = [4, 4, 3, 3, 2, 2, 1, 5]  # 24 images, class 6 has a single image
SIZE = 32


def colour(class_index, image_index):
    return (10 + 20 * class_index, 5 + 10 * image_index, 128)


@pytest.fixture(scope="module")
def solid_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("solid")
    lines = []
    for image_index, class_index in enumerate(np.repeat(np.arange(len(CLASS_SIZES)), CLASS_SIZES)):
        name = f"c{class_index}/{image_index}.png"
        os.makedirs(root / f"c{class_index}", exist_ok=True)
        Image.new("RGB", (48 + image_index % 3, 40), colour(class_index, image_index)).save(root / name)
        lines.append(f"{name} {100 + 3 * class_index}")  # non-contiguous class ids
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return str(root)


def decode_pixels(images):
    """(class, image) index of each solid-colour NCHW image."""
    rgb = images[:, :, 0, 0] * STD + MEAN
    return np.round((rgb[:, 0] - 10) / 20).astype(int), np.round((rgb[:, 1] - 5) / 10).astype(int)


def run_epochs(dataset, epochs=1):
    iterator = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    return [[(image, label) for image, label in iterator] for _ in range(epochs)]


def check_batches(batches, batch_size):
    for image, label in batches:
        assert image.shape == (batch_size, 3, SIZE, SIZE) and image.dtype == np.float32
        assert label.shape == (batch_size,) and label.dtype == np.int32
        assert np.all(image == image[:, :, :1, :1])  # solid colour survived the augmentation
        assert np.array_equal(decode_pixels(image)[0], label)


def make(solid_dataset, layout, batch_size, **kwargs):
    kwargs.setdefault("num_parallel_workers", 2)
    return create_dataset(solid_dataset, "list.txt", batch_size, SIZE, layout, **kwargs)


def test_eval_layout_reads_the_whole_list_in_order(solid_dataset):
    dataset = make(solid_dataset, "eval", 5, num_parallel_workers=1)
    assert dataset.get_dataset_size() == 5
    (batches,) = run_epochs(dataset)
    assert [len(label) for _, label in batches] == [5, 5, 5, 5, 4]
    images = np.concatenate([image for image, _ in batches])
    labels = np.concatenate([label for _, label in batches])
    classes, indices = decode_pixels(images)
    assert indices.tolist() == list(range(24))
    assert labels.tolist() == classes.tolist()
    check_batches(batches[:-1], 5)


def test_shuffled_batches_see_every_image_once(solid_dataset):
    epochs = run_epochs(make(solid_dataset, "shuffle", 8, seed=1), epochs=2)
    for batches in epochs:
        check_batches(batches, 8)
        indices = np.concatenate([decode_pixels(image)[1] for image, _ in batches])
        assert sorted(indices.tolist()) == list(range(24))
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])


def test_triplets_batches_hold_whole_triplets(solid_dataset):
    dataset = make(solid_dataset, "triplets", 6)
    assert dataset.get_dataset_size() == 4  # 24 images -> 8 triplets -> 4 batches of 2
    (batches,) = run_epochs(dataset)
    check_batches(batches, 6)
    for image, label in batches:
        a, p, n = label.reshape(-1, 3).T
        assert np.all(a == p) and np.all(a != n) and not np.any(a == 6)
        index = decode_pixels(image)[1].reshape(-1, 3)
        assert np.all(index[:, 0] != index[:, 1])


@pytest.mark.parametrize("layout", ["pk", "pairs"])
def test_pk_and_pairs_batches_hold_p_classes_of_k(solid_dataset, layout):
    dataset = make(solid_dataset, layout, 8, samples_each_class=2)
    assert dataset.get_dataset_size() == 3
    (batches,) = run_epochs(dataset)
    check_batches(batches, 8)
    for _, label in batches:
        pairs = label.reshape(4, 2)
        assert np.all(pairs[:, 0] == pairs[:, 1]) and len(set(pairs[:, 0].tolist())) == 4
        assert 6 not in pairs


def test_same_seed_gives_identical_batches_and_resume_continues(solid_dataset):
    def flat(epoch):
        return [np.concatenate([image.ravel(), label]) for image, label in epoch]

    def same(a, b):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    first, second = map(flat, run_epochs(make(solid_dataset, "triplets", 6, seed=4), epochs=2))
    again = flat(run_epochs(make(solid_dataset, "triplets", 6, seed=4, num_parallel_workers=1))[0])
    resumed = flat(run_epochs(make(solid_dataset, "triplets", 6, seed=4, start_epoch=1))[0])
    assert same(first, again)  # also with another worker count
    assert same(second, resumed)
    assert not same(first, second)


def test_distributed_ranks_run_the_same_number_of_steps(solid_dataset):
    sizes = [make(solid_dataset, "pk", 4, rank=r, group_size=3).get_dataset_size() for r in range(3)]
    assert sizes == [2, 2, 2]


@pytest.mark.parametrize("layout,batch_size,kwargs,message", [
    ("triplets", 8, {}, "batch_size must be a multiple of 3, got batch_size=8"),
    ("pk", 9, {"samples_each_class": 2}, "batch_size must be a multiple of samples_each_class=2"),
    ("pk", 16, {}, "P=8 exceeds the 7 classes"),
    ("pairs", 9, {"samples_each_class": 3}, r"pairs batches are \(anchor, positive\) pairs: samples_each_class must "
                                            r"be 2, got 3"),
    ("shuffle", 30, {}, "give no full batch of batch_size=30"),
    ("train", 6, {}, "layout must be one of"),
    ("triplet", 6, {}, "layout must be one of"),  # a loss name: the registry maps it to its layout
    ("eval", 6, {"eval_resize": "fit"}, "eval_resize must be one of"),
])
def test_create_dataset_rejects_bad_arguments(solid_dataset, layout, batch_size, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(solid_dataset, layout, batch_size, **kwargs)


@pytest.fixture
def dataset_with_bad_files(tmp_path):
    lines = []
    for i in range(6):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
        lines.append(f"{i}.jpg {i % 2}")
    (tmp_path / "3.jpg").write_bytes((tmp_path / "3.jpg").read_bytes()[:100])
    lines.append("missing.jpg 1")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return str(tmp_path)


def test_bad_image_fails_the_pipeline_by_default_naming_the_file(dataset_with_bad_files):
    root = Path(dataset_with_bad_files)
    lines = (root / "list.txt").read_text().splitlines()
    (root / "present.txt").write_text("\n".join(lines[:-1]) + "\n")  # without the missing file
    dataset = create_dataset(dataset_with_bad_files, "present.txt", 7, SIZE, "eval", num_parallel_workers=2)
    with pytest.raises(Exception, match="cannot decode image: .*3.jpg \\(listed at .*present.txt:4\\)"):
        run_epochs(dataset)


@pytest.mark.parametrize("layout", ["eval", "shuffle"])
def test_a_missing_file_stops_the_dataset_before_any_batch(dataset_with_bad_files, layout):
    """Named with its list line, and the count of the others missing: before a training run compiles, not when an
    epoch reaches the file."""
    with pytest.raises(FileNotFoundError, match=r"^image not found: .*missing\.jpg \(listed at .*list\.txt:7\)$"):
        create_dataset(dataset_with_bad_files, "list.txt", 7, SIZE, layout, num_parallel_workers=2)
    root = Path(dataset_with_bad_files)
    (root / "0.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"0\.jpg \(listed at .*list\.txt:1\); 1 more of its 7 images "
                                                r"are missing too$"):
        create_dataset(dataset_with_bad_files, "list.txt", 7, SIZE, layout, num_parallel_workers=2)


def test_skip_bad_drops_and_logs_bad_files(dataset_with_bad_files, caplog):
    with caplog.at_level("WARNING"):
        dataset = create_dataset(dataset_with_bad_files, "list.txt", 7, SIZE, "eval", skip_bad=True,
                                 num_parallel_workers=1)
    assert "dropped 2 of 7 images" in caplog.text
    assert "3.jpg" in caplog.text and "missing.jpg" in caplog.text
    (batches,) = run_epochs(dataset)
    assert [label.tolist() for _, label in batches] == [[0, 1, 0, 0, 1]]


def test_augmentation_depends_on_seed_and_epoch_not_on_workers(tmp_path):
    for i in range(6):
        write_jpeg(tmp_path / f"{i}.jpg", seed=i)
    (tmp_path / "list.txt").write_text("".join(f"{i}.jpg {i % 3}\n" for i in range(6)))

    def images(seed, workers, start_epoch=0):
        dataset = create_dataset(str(tmp_path), "list.txt", 6, SIZE, "shuffle", seed=seed,
                                 start_epoch=start_epoch, num_parallel_workers=workers)
        return run_epochs(dataset, epochs=1)[0][0][0]

    reference = images(seed=2, workers=2)
    assert np.array_equal(reference, images(seed=2, workers=1))
    assert not np.array_equal(reference, images(seed=3, workers=2))
    assert not np.array_equal(reference, images(seed=2, workers=2, start_epoch=1))
