"""preprocess_eval_list: its two folders are replaced whole or not at all, and never a folder it did not write."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.deploy.infer_data import IMAGE_DIR, LABEL_DIR, preprocess_eval_list

CFG = SimpleNamespace(image_size=16, eval_resize="crop", skip_bad=False, num_parallel_workers=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")), num_classes=2, per_class=1,
                                  test_per_class=2, size=16)


def outputs(folder):
    return {name: sorted(os.listdir(folder / name)) for name in (IMAGE_DIR, LABEL_DIR)}


def test_a_second_run_replaces_both_folders_and_leaves_no_staging(data, tmp_path):
    assert preprocess_eval_list(data, "test.txt", str(tmp_path), CFG) == 4
    (tmp_path / IMAGE_DIR / "sop_9.bin").write_bytes(b"from an earlier, longer list")
    assert preprocess_eval_list(data, "test.txt", str(tmp_path), CFG) == 4
    names = [f"sop_{i}.bin" for i in range(4)]
    assert outputs(tmp_path) == {IMAGE_DIR: names, LABEL_DIR: names}
    assert sorted(os.listdir(tmp_path)) == [IMAGE_DIR, LABEL_DIR]
    assert np.fromfile(tmp_path / IMAGE_DIR / "sop_0.bin", np.float32).size == 3 * 16 * 16


def test_a_failed_run_keeps_the_previous_output(data, tmp_path):
    preprocess_eval_list(data, "test.txt", str(tmp_path), CFG)
    before = {name: (tmp_path / IMAGE_DIR / name).read_bytes() for name in os.listdir(tmp_path / IMAGE_DIR)}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not an image")  # exists, so it fails while the folders are written
    (bad / "list.txt").write_text(f"{os.path.join(data, 'class_000', '1.png')} 0\nbroken.png 0\n")
    with pytest.raises(ValueError, match="broken.png"):
        preprocess_eval_list(str(bad), "list.txt", str(tmp_path), CFG)
    assert {name: (tmp_path / IMAGE_DIR / name).read_bytes() for name in os.listdir(tmp_path / IMAGE_DIR)} == before
    assert sorted(os.listdir(tmp_path)) == ["bad", IMAGE_DIR, LABEL_DIR], "no staging folder left"


def test_a_folder_preprocess_did_not_write_is_refused_and_kept(data, tmp_path):
    (tmp_path / LABEL_DIR).mkdir()
    (tmp_path / LABEL_DIR / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"label holds files preprocess did not write \(notes\.txt\); refusing"):
        preprocess_eval_list(data, "test.txt", str(tmp_path), CFG)
    assert (tmp_path / LABEL_DIR / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == [LABEL_DIR]
