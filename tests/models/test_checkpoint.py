"""save_checkpoint_atomic: a checkpoint is replaced whole (read-only, as MindSpore leaves it) or not at all."""
import os
import stat

import mindspore as ms
import numpy as np
import pytest
from mindspore.train import serialization

from src.models.checkpoint import read_checkpoint_values, save_checkpoint_atomic


def params(value):
    return [{"name": "w", "data": ms.Tensor(np.full((2, 3), value, np.float32))}]


def test_a_checkpoint_is_replaced_whole_and_stays_read_only(tmp_path):
    path = tmp_path / "ckpt" / "best.ckpt"
    save_checkpoint_atomic(params(1.0), str(path), {"epoch_num": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == stat.S_IRUSR
    save_checkpoint_atomic(params(2.0), str(path), {"epoch_num": 2})
    assert read_checkpoint_values(str(path), ["epoch_num"]) == {"epoch_num": 2}
    np.testing.assert_array_equal(ms.load_checkpoint(str(path))["w"].asnumpy(), np.full((2, 3), 2.0, np.float32))
    assert os.listdir(path.parent) == ["best.ckpt"]


def test_an_interrupted_save_keeps_the_previous_checkpoint_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "best.ckpt"
    save_checkpoint_atomic(params(1.0), str(path), {"epoch_num": 1})
    before = path.read_bytes()

    def interrupted(name, value, f, *args, **kwargs):
        f.write(b"half a parameter")
        raise KeyboardInterrupt

    # MindSpore writes its own temporary file (x.tmp for x.ckpt) and leaves it when interrupted.
    monkeypatch.setattr(serialization, "_write_parameter_data", interrupted)
    monkeypatch.setattr(serialization, "_write_parameter_bytes_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic(params(2.0), str(path), {"epoch_num": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["best.ckpt"]
