"""The raw-pixel baseline: features as defined (resize, gray, mean-centring, L2) and kNN retrieval by brute force."""
import os

import cv2
import numpy as np
import pytest

from src.evaluation.baselines import load_list_images, main, raw_pixel_baselines, raw_pixel_features


def random_images(n, seed=0, side=20):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side + 3, 3), dtype=np.uint8) for _ in range(n)]


def test_features_are_resized_centred_and_normalised():
    images = random_images(3)
    feats = raw_pixel_features(images, side=8)
    assert feats.shape == (3, 8 * 8 * 3) and feats.dtype == np.float32
    small = cv2.resize(images[1], (8, 8), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    centred = small - small.mean()
    np.testing.assert_allclose(feats[1], centred / np.linalg.norm(centred), rtol=1e-5, atol=5e-6)
    gray = raw_pixel_features(images, side=4, gray=True)
    small = cv2.resize(images[2], (4, 4), interpolation=cv2.INTER_AREA).astype(np.float64) @ [0.299, 0.587, 0.114]
    centred = small.ravel() - small.mean()
    np.testing.assert_allclose(gray[2], centred / np.linalg.norm(centred), rtol=1e-5, atol=5e-6)


def test_a_flat_image_gets_the_constant_direction_not_an_error():
    """A view of a flat region has nothing left once centred (a demo data draw has one): it is similar to no
    other image, instead of stopping the baseline with a zero-norm error."""
    images = random_images(4, seed=3) + [np.full((20, 23, 3), 117, np.uint8)]
    feats = raw_pixel_features(images, side=8)
    np.testing.assert_allclose(feats[-1], np.full(8 * 8 * 3, 1 / np.sqrt(8 * 8 * 3)), rtol=1e-6)
    np.testing.assert_allclose(feats[:-1] @ feats[-1], 0, atol=1e-6)
    results = raw_pixel_baselines(images, [1, 1, 2, 2, 3], sides=(8,))
    assert results[0][1]["num_queries"] == 5


def test_brightness_and_contrast_changes_do_not_move_a_feature():
    image = random_images(1)[0].astype(np.float64)
    changed = np.clip(0.5 * image + 40, 0, 255).astype(np.uint8)  # stays inside 0..255: an exact affine change
    a, b = raw_pixel_features([image.astype(np.uint8), changed], side=8)
    assert float(a @ b) > 0.999


def brute_force_recall_at_1(feats, labels):
    sim = feats.astype(np.float64) @ feats.T.astype(np.float64)
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[sim.argmax(1)] == labels))


def test_every_variant_equals_brute_force_and_the_best_comes_first():
    base = random_images(6, seed=1, side=32)
    rng = np.random.default_rng(2)
    images, labels = [], []
    for label, image in enumerate(base):  # 3 noisy copies of each of 6 images
        for _ in range(3):
            images.append(np.clip(image + rng.normal(0, 60, image.shape), 0, 255).astype(np.uint8))
            labels.append(label)
    labels = np.array(labels)
    results = raw_pixel_baselines(images, labels, sides=(4, 16))
    assert [name for name, _ in sorted(results)] == sorted(
        ["raw pixels 4x4 RGB", "raw pixels 4x4 gray", "raw pixels 16x16 RGB", "raw pixels 16x16 gray"])
    recalls = [m["recall@1"] for _, m in results]
    assert recalls == sorted(recalls, reverse=True)
    for name, metrics in results:
        side, mode = name.split()[2], name.split()[3]
        feats = raw_pixel_features(images, int(side.split("x")[0]), gray=mode == "gray")
        assert metrics["recall@1"] == pytest.approx(brute_force_recall_at_1(feats, labels), abs=1e-9)


def test_command_prints_the_best_variant_last(tmp_path, capsys):
    images = random_images(4, seed=3, side=16)
    lines = []
    for i, image in enumerate(images + images):  # two copies of each: every query's neighbour is its copy
        cv2.imwrite(str(tmp_path / f"{i}.png"), image)
        lines.append(f"{i}.png {i % 4}\n")
    (tmp_path / "test.txt").write_text("".join(lines))
    main(["--dataset_path", str(tmp_path), "--eval_list", "test.txt", "--sides", "4,8", "--recall_ks", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "eval_recall: 1.0000"
    assert [line for line in out if line.startswith("best: raw pixels ")]
    assert [line.split() for line in out if line.startswith("map@r")] == [["map@r", "1.0000"]]
    assert len([line for line in out if line.startswith("raw pixels")]) == 4
    best = [line for line in out if line.startswith("best: ")][0][len("best: "):]
    main(["--dataset_path", str(tmp_path), "--eval_list", "test.txt", "--sides", "4,8", "--recall_ks", "1",
          "--save_features", str(tmp_path / "raw.npz")])
    saved = np.load(tmp_path / "raw.npz")
    side, gray = int(best.split()[2].split("x")[0]), best.endswith("gray")
    loaded = load_list_images(str(tmp_path), "test.txt")[0]
    np.testing.assert_array_equal(saved["features"], raw_pixel_features(loaded, side, gray))
    assert saved["labels"].tolist() == [i % 4 for i in range(8)] and saved["paths"][0] == "0.png"
    os.remove(tmp_path / "raw.npz")
    with pytest.raises(SystemExit):
        main(["--dataset_path", str(tmp_path), "--eval_list", "test.txt", "--sides", "0"])
    assert os.listdir(tmp_path)  # nothing written besides what the test made
