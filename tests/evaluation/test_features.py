"""save_features: the .npz is replaced whole or not at all."""
import os

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
