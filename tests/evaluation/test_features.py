"""Evaluation features: L2-normalised once on the way to the metrics; save_features replaces its .npz whole or
not at all."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from src.evaluation.features import save_features


class _Unreadable:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("disk gone")


def test_save_features_round_trips_and_a_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "features.npz"
    features = np.eye(3, dtype=np.float32)
    save_features(str(path), features, np.arange(3), ["a.jpg", "b.jpg", "c.jpg"])
    saved = dict(np.load(path))
    np.testing.assert_array_equal(saved["features"], features)
    assert saved["paths"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk gone"):  # after features and labels were written
        save_features(str(path), 2 * features, np.arange(3), ["a", "b", "c"], gallery=_Unreadable())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["features.npz"]


class _Pixels:
    """A stand-in backbone (numpy in, numpy out like the engines): each image's first 24 values, offset so no row
    is zero; not normalised."""

    numpy_io = True
    training = False

    def set_train(self, mode=True):
        pass

    def __call__(self, images):
        return images.reshape(len(images), -1)[:, :24] + 3.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from src.data.demo_data import make_retrieval_dataset

    root = make_retrieval_dataset(str(tmp_path_factory.mktemp("data")), num_classes=3, per_class=1, test_per_class=3,
                                  size=16)
    return root, SimpleNamespace(eval_batch_size=4, image_size=16, num_parallel_workers=1, eval_resize="crop",
                                 skip_bad=False)


@pytest.fixture
def normalisations(monkeypatch):
    """Counts the L2 normalisations of the evaluation (features.py and metrics.py share one function)."""
    from src.evaluation import features, metrics

    calls, normalize = [], metrics.l2_normalize_rows

    def counted(x, name="features"):
        calls.append(len(x))
        return normalize(x, name)

    monkeypatch.setattr(metrics, "l2_normalize_rows", counted)
    monkeypatch.setattr(features, "l2_normalize_rows", counted)
    return calls


def test_the_evaluation_normalises_the_features_once(data, normalisations):
    from src.evaluation.features import evaluate_backbone, evaluate_query_gallery
    from src.evaluation.metrics import l2_normalize_rows, query_gallery_metrics, retrieval_metrics

    root, cfg = data
    metrics, features, labels, _ = evaluate_backbone(_Pixels(), root, "test.txt", cfg, ks=(1, 2))
    assert normalisations == [9]
    raw = np.concatenate([_Pixels()(image[None]) for image in _eval_images(root, cfg)])
    np.testing.assert_array_equal(features, l2_normalize_rows(raw))
    assert metrics == retrieval_metrics(raw, labels, ks=(1, 2)), "the same as the metrics' own normalisation"
    normalisations.clear()
    metrics, queries, gallery = evaluate_query_gallery(_Pixels(), root, "test.txt", "test.txt", cfg, ks=(1, 2))
    assert normalisations == [9, 9], "each list once"
    assert metrics == query_gallery_metrics(raw, labels, raw, labels, ks=(1, 2))


def _eval_images(root, cfg):
    from src.data.decoding import load_image
    from src.data.image_list import read_image_list
    from src.data.transforms import eval_transform

    images = read_image_list(os.path.join(root, "test.txt"), root)
    return [eval_transform(load_image(images.full_path(i)), cfg.image_size, cfg.eval_resize)
            for i in range(len(images))]


def test_features_that_cannot_be_normalised_are_named_by_their_list(data):
    from src.evaluation.features import evaluate_backbone

    class Diverged(_Pixels):
        def __call__(self, images):
            out = super().__call__(images)
            out[1:2] = np.nan  # the second image of each batch of 4 (of 9): rows 1 and 5
            return out

    root, cfg = data
    with pytest.raises(ValueError, match=r"features of .*test\.txt cannot be L2-normalised: 2 row\(s\) with NaN or "
                                         r"Inf values \(first indices: \[1, 5\]\)"):
        evaluate_backbone(Diverged(), root, "test.txt", cfg)
