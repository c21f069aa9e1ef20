"""The on-disk index: what a build writes, --add against a rebuild, atomic builds (kill -9), and bad index folders.
The network is a stand-in here (tests/retrieval/stub.py); tests/test_retrieve.py runs the real one."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.data.image_list import read_image_list
from src.retrieval.index import (
    FEATURES,
    MANIFEST,
    UNKNOWN_LABEL,
    build_index,
    check_same_embedding,
    clear_leftovers,
    folder_images,
    load_index,
)
from src.retrieval.search import ExactSearch
from tests.paths import ROOT
from tests.retrieval.stub import SETTINGS, PixelEmbedder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")), num_classes=6, per_class=4,
                                  test_per_class=3, size=24)


def build(folder, images, add=False, chunk=7, embedder=None):
    return build_index(str(folder), images, embedder or PixelEmbedder(), SETTINGS, add=add, chunk=chunk,
                       hash_workers=2)


def results_by_path(index, queries, k=8):
    """Each query's (path, similarity) list: comparable between indexes whose items are in another order."""
    sims, ids = ExactSearch(index.features).search(queries, k)
    return [[(index.paths[i], s) for s, i in zip(row_s, row_i, strict=True)] for row_s, row_i in zip(sims, ids,
                                                                                                     strict=True)]


def assert_same_results(a, b):
    for row_a, row_b in zip(a, b, strict=True):
        assert [p for p, _ in row_a] == [p for p, _ in row_b]
        np.testing.assert_allclose([s for _, s in row_a], [s for _, s in row_b], atol=1e-5)


def test_a_list_index_holds_its_images_features_labels_and_manifest(data, tmp_path):
    images = read_image_list(os.path.join(data, "test.txt"), data)
    assert build(tmp_path / "idx", images) == len(images)
    index = load_index(str(tmp_path / "idx"))
    assert index.paths == list(images.paths) and index.labels.tolist() == images.ids.tolist()
    assert index.root == os.path.abspath(data) and index.has_labels and index.label(0) == int(images.ids[0])
    np.testing.assert_allclose(index.features, PixelEmbedder().embed_list(images), atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(index.features, axis=1), 1, atol=1e-6)
    m = index.manifest
    assert (m["count"], m["feature_dim"], m["checkpoint_sha256"], m["image_size"]) == (18, 48, "0" * 64, 32)
    assert m["sources"] == [os.path.join(data, "test.txt")] and m["ann"] is None and m["created"]
    assert len(index.hashes[0]) == 64 and os.listdir(tmp_path) == ["idx", ".idx.lock"] or \
        sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


def test_a_folder_is_walked_for_images_without_labels(data, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(os.path.join(data, "class_001"), folder / "a" / "b")
    shutil.copy(os.path.join(data, "class_002", "0.png"), folder / "top.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden").mkdir()
    shutil.copy(os.path.join(data, "class_002", "1.png"), folder / ".hidden" / "x.png")
    images = folder_images(str(folder))
    assert images.paths == tuple(f"a/b/{i}.png" for i in range(7)) + ("top.png",)
    build(tmp_path / "idx", images)
    index = load_index(str(tmp_path / "idx"))
    assert not index.has_labels and set(index.labels.tolist()) == {UNKNOWN_LABEL} and index.label(3) is None
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"--image_dir .*empty holds no images \(looked for .bmp"):
        folder_images(str(tmp_path / "empty"))


def test_add_gives_the_search_results_of_a_rebuild(data, tmp_path):
    everything = read_image_list(os.path.join(data, "test.txt"), data)
    first, second = everything.subset(np.arange(10)), everything.subset(np.arange(6, 18))  # they overlap
    build(tmp_path / "added", first)
    embedder = PixelEmbedder()
    assert build(tmp_path / "added", second, add=True, embedder=embedder) == 8  # the 4 shared ones are kept
    assert build(tmp_path / "added", second, add=True) == 0  # nothing new: nothing written
    build(tmp_path / "rebuilt", everything)
    added, rebuilt = load_index(str(tmp_path / "added")), load_index(str(tmp_path / "rebuilt"))
    assert sorted(added.paths) == sorted(rebuilt.paths) and len(added) == 18
    queries = np.random.default_rng(0).standard_normal((5, 48))
    assert_same_results(results_by_path(added, queries), results_by_path(rebuilt, queries))
    assert added.manifest["sources"] == [everything.list_file] * 2


def test_add_extracts_a_changed_image_again(data, tmp_path):
    root = tmp_path / "photos"
    shutil.copytree(os.path.join(data, "class_000"), root)
    build(tmp_path / "idx", folder_images(str(root)))
    before = load_index(str(tmp_path / "idx"))
    cv2.imwrite(str(root / "3.png"), np.full((24, 24, 3), 200, np.uint8) + np.arange(24, dtype=np.uint8)[:, None, None])
    assert build(tmp_path / "idx", folder_images(str(root)), add=True) == 1
    after = load_index(str(tmp_path / "idx"))
    assert sorted(after.paths) == sorted(before.paths)
    row = after.paths.index("3.png")
    assert not np.allclose(after.features[row], before.features[before.paths.index("3.png")])
    np.testing.assert_allclose(after.features[row], PixelEmbedder().embed_files([str(root / "3.png")])[0], atol=1e-7)


def test_add_refuses_another_checkpoint_or_image_size(data, tmp_path):
    images = read_image_list(os.path.join(data, "test.txt"), data)
    build(tmp_path / "idx", images)
    manifest = load_index(str(tmp_path / "idx")).manifest
    with pytest.raises(ValueError, match=r"this build has image_size 64, the index .*idx was built with 32"):
        check_same_embedding(manifest, dict(SETTINGS, image_size=64), "this build", str(tmp_path / "idx"))
    with pytest.raises(ValueError, match=r"has checkpoint \(SHA-256\) 1111"):
        build_index(str(tmp_path / "idx"), images, PixelEmbedder(), dict(SETTINGS, checkpoint_sha256="1" * 64),
                    add=True)


def test_images_outside_the_index_root_are_refused_by_add(data, tmp_path):
    build(tmp_path / "idx", folder_images(os.path.join(data, "class_000")))
    with pytest.raises(ValueError, match=r"class_001/0.png \(listed at .*\) is outside the index's image root"):
        build(tmp_path / "idx", folder_images(os.path.join(data, "class_001")), add=True)


def index_copy(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("damage, message", [
    (lambda d: shutil.rmtree(d), r"--index_dir .*: no index there"),
    (lambda d: os.remove(os.path.join(d, MANIFEST)), r"manifest.json is missing: not a complete index"),
    (lambda d: open(os.path.join(d, MANIFEST), "w").write('{"format": '), r"manifest.json is not valid JSON"),
    (lambda d: os.remove(os.path.join(d, "paths.txt")), r"paths.txt is missing"),
    (lambda d: open(os.path.join(d, FEATURES), "r+b").write(b"\x93NUMPY garbage"),
     r"features.npy is corrupt \(its SHA-256 differs from the manifest's\)"),
])
def test_a_missing_or_damaged_index_is_one_error_naming_it(data, tmp_path, damage, message):
    build(tmp_path / "idx", read_image_list(os.path.join(data, "test.txt"), data))
    damage(str(tmp_path / "idx"))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_index(str(tmp_path / "idx"))


def test_a_truncated_features_file_is_found_without_the_hashes(data, tmp_path):
    build(tmp_path / "idx", read_image_list(os.path.join(data, "test.txt"), data))
    path = tmp_path / "idx" / FEATURES
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="features.npy or labels.npy does not read as a numpy array"):
        load_index(str(tmp_path / "idx"), verify=False)


KILLED_BUILD = """
import sys
sys.path.insert(0, {root!r})
import src.runtime.env
from src.data.image_list import read_image_list
from src.retrieval.index import build_index
from tests.retrieval.stub import SETTINGS, PixelEmbedder
images = read_image_list({list!r}, {data!r})
build_index({folder!r}, images, PixelEmbedder(delay=0.5), SETTINGS, chunk=2, hash_workers=1)
"""


def test_a_build_killed_halfway_leaves_the_previous_index_and_the_next_build_clears_up(data, tmp_path):
    folder = str(tmp_path / "idx")
    build(folder, read_image_list(os.path.join(data, "test.txt"), data).subset(np.arange(5)))
    before = index_copy(folder)
    code = KILLED_BUILD.format(root=ROOT, list=os.path.join(data, "train.txt"), data=data, folder=folder)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, GLOG_v="3"))
    building = os.path.join(str(tmp_path), ".idx.*.building")
    deadline = time.monotonic() + 120
    # halfway: its features file is there and being filled (12 extraction calls of 0.5 s)
    while not glob.glob(os.path.join(building, FEATURES)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(glob.glob(building)) == 1  # its half-built folder is left beside the index ...
    assert index_copy(folder) == before  # ... which is untouched
    index = load_index(folder)
    assert len(index) == 5
    # the next build takes the lock the killed one held (its process is gone), and clears its folder
    build(folder, read_image_list(os.path.join(data, "test.txt"), data).subset(np.arange(6)))
    assert glob.glob(building) == [] and len(load_index(folder)) == 6


def test_leftovers_of_a_build_killed_between_its_renames_are_put_back(data, tmp_path):
    folder = str(tmp_path / "idx")
    build(folder, read_image_list(os.path.join(data, "test.txt"), data))
    before = index_copy(folder)
    os.rename(folder, str(tmp_path / ".idx.abc123.old"))  # the old index moved aside, the new one not yet in place
    (tmp_path / ".idx.xyz.building").mkdir()
    assert clear_leftovers(folder) == 1
    assert index_copy(folder) == before and sorted(os.listdir(tmp_path)) == [".idx.lock", "idx"]


def test_the_manifest_is_json_with_the_recorded_files(data, tmp_path):
    build(tmp_path / "idx", read_image_list(os.path.join(data, "test.txt"), data))
    with open(tmp_path / "idx" / MANIFEST) as f:
        manifest = json.load(f)
    assert sorted(manifest["files"]) == ["features.npy", "hashes.txt", "labels.npy", "paths.txt"]
    assert manifest["format"] == "metric_learn-retrieval-index/1"
