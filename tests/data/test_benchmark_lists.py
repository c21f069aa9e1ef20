"""CUB-200-2011, Cars196 and In-Shop list files from tiny folders in each download's exact layout, built here;
the query/gallery protocol of eval.py and postprocess.py against brute force."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import scipy.io

from src.data.benchmark_lists import ListError, main, write_lists
from src.data.demo_data import make_retrieval_dataset
from src.data.image_list import read_image_list
from src.runtime.config import ConfigError, load_config
from tests.paths import ROOT


def image(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (12, 10, 3), dtype=np.uint8))


def read_list(path):
    with open(path) as f:
        return [tuple(line.split()) for line in f.read().splitlines()]


# ---------------------------------------------------------------------------------------------------------
# CUB-200-2011: images.txt, image_class_labels.txt, images/<class folder>/<file>

CUB_CLASSES = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 100: "100.Brown_Pelican",
               101: "101.White_Pelican", 200: "200.Common_Yellowthroat"}


def make_cub(root):
    rows, image_id = [], 0
    for cls, folder in CUB_CLASSES.items():
        for k in range(3):
            image_id += 1
            rel = f"{folder}/{folder.split('.')[1]}_{k:04d}_{image_id}.jpg"
            image(root / "images" / rel, image_id)
            rows.append((image_id, rel, cls))
    order = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # files need not be sorted
    (root / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _ in order))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c in rows))
    return rows


def test_cub_split_by_class(tmp_path):
    rows = make_cub(tmp_path)
    assert main(["cub", str(tmp_path), "--subset", "--check"]) == 0
    expected = {"train.txt": [(f"images/{rel}", str(c)) for i, rel, c in sorted(rows) if c <= 100],
                "test.txt": [(f"images/{rel}", str(c)) for i, rel, c in sorted(rows) if c > 100]}
    for name, entries in expected.items():
        assert read_list(tmp_path / name) == entries
    assert read_image_list(str(tmp_path / "train.txt")).num_classes == 3
    assert read_image_list(str(tmp_path / "test.txt")).num_classes == 2


def test_cub_errors_name_the_file_and_line(tmp_path):
    make_cub(tmp_path)
    with pytest.raises(ListError, match=r"9 images for train\.txt, the published cub split has 5864"):
        write_lists("cub", str(tmp_path))
    lines = (tmp_path / "image_class_labels.txt").read_text().splitlines()
    lines[3] = "4 four"
    (tmp_path / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(ListError, match=r"image_class_labels\.txt:4: expected '<image id> <class>', got '4 four'"):
        write_lists("cub", str(tmp_path), subset=True)
    os.remove(tmp_path / "images.txt")
    with pytest.raises(FileNotFoundError, match=r"images\.txt not found"):
        write_lists("cub", str(tmp_path), subset=True)


def test_check_names_an_image_that_does_not_decode(tmp_path, caplog):
    rows = make_cub(tmp_path)
    (tmp_path / "images" / rows[4][1]).write_bytes(b"")
    assert main(["cub", str(tmp_path), "--subset", "--check"]) == 1
    assert re.search(r"cannot decode image: .*" + re.escape(rows[4][1]) + r" \(listed at .*train\.txt:5\)",
                     caplog.text)


# ---------------------------------------------------------------------------------------------------------
# Cars196: cars_annos.mat (struct array annotations), car_ims/

def make_cars(root, classes=(1, 2, 98, 99, 196), per_class=3):
    records, index = [], 0
    for cls in classes:
        for _ in range(per_class):
            index += 1
            rel = f"car_ims/{index:06d}.jpg"
            image(root / rel, index)
            records.append((rel, 5, 5, 40, 30, cls, index % 2))
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    annotations = np.array([tuple(r) for r in records], dtype=dtype).reshape(1, -1)
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations, "class_names": np.array(["a"], "O")})
    return records


def test_cars_split_by_class_from_the_mat_file(tmp_path):
    records = make_cars(tmp_path)
    assert main(["cars", str(tmp_path), "--subset", "--check"]) == 0
    assert read_list(tmp_path / "train.txt") == [(r[0], str(r[5])) for r in records if r[5] <= 98]
    assert read_list(tmp_path / "test.txt") == [(r[0], str(r[5])) for r in records if r[5] > 98]
    with pytest.raises(ListError, match=r"9 images for train\.txt, the published cars split has 8054"):
        write_lists("cars", str(tmp_path))


def test_cars_bad_class_and_bad_file(tmp_path):
    make_cars(tmp_path, classes=(1, 197))
    with pytest.raises(ListError, match=r"annotation 4 \(car_ims/000004\.jpg\) has class 197, outside 1-196"):
        write_lists("cars", str(tmp_path), subset=True)
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"other": np.ones(3)})
    with pytest.raises(ListError, match="no annotations with relative_im_path and class"):
        write_lists("cars", str(tmp_path), subset=True)


# ---------------------------------------------------------------------------------------------------------
# In-Shop: list_eval_partition.txt (count, header, image_name item_id evaluation_status), img/

def make_inshop(root, data):
    """An In-Shop partition over the generated images of `data` (class c -> item id_0000000c): 6 train, then
    query and gallery alternating, per class."""
    entries = []
    for line in open(os.path.join(data, "train.txt")).read().split("\n") + \
            open(os.path.join(data, "test.txt")).read().split("\n"):
        if line:
            rel, cls = line.split()
            entries.append((rel, int(cls)))
    by_class = {}
    for rel, cls in entries:
        by_class.setdefault(cls, []).append(rel)
    rows = []
    for cls, rels in sorted(by_class.items()):
        for k, rel in enumerate(rels):
            status = "train" if k < 6 else ("query" if k % 2 == 0 else "gallery")
            rows.append((rel, f"id_{cls + 1:08d}", status))
    text = f"{len(rows)}\nimage_name item_id evaluation_status\n" + "".join(
        f"{rel}                 {item}  {status}\n" for rel, item, status in rows)  # the file pads with blanks
    (root / "list_eval_partition.txt").write_text(text)
    return rows


@pytest.fixture(scope="module")
def inshop(tmp_path_factory):
    data = make_retrieval_dataset(str(tmp_path_factory.mktemp("inshop")))
    rows = make_inshop(__import__("pathlib").Path(data), data)
    assert main(["inshop", data, "--subset"]) == 0
    return data, rows


def test_inshop_partition(inshop):
    data, rows = inshop
    for status in ("train", "query", "gallery"):
        expected = [(rel, str(int(item[3:]))) for rel, item, s in rows if s == status]
        assert read_list(os.path.join(data, f"{status}.txt")) == expected
    assert len(read_list(os.path.join(data, "query.txt"))) == 16


def test_inshop_errors(tmp_path):
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("3\nimage_name item_id evaluation_status\nimg/a.jpg id_00000001 train\nimg/b.jpg id_1 test\n")
    with pytest.raises(ListError, match=r"list_eval_partition\.txt:4: expected 'image_name id_<number> "
                                        r"train\|query\|gallery', got 'img/b\.jpg id_1 test'"):
        write_lists("inshop", str(tmp_path), subset=True)
    path.write_text("5\nimage_name item_id evaluation_status\nimg/a.jpg id_00000001 train\n")
    with pytest.raises(ListError, match=r":1: says 5 images, the file lists 1"):
        write_lists("inshop", str(tmp_path), subset=True)
    path.write_text("1\nname item status\nimg/a.jpg id_00000001 train\n")
    with pytest.raises(ListError, match=r":2: expected the header"):
        write_lists("inshop", str(tmp_path), subset=True)


def brute_force_recall(query, query_labels, gallery, gallery_labels, ks):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    order = np.argsort(-(q.astype(np.float64) @ g.T.astype(np.float64)), axis=1, kind="stable")
    hits = gallery_labels[order] == query_labels[:, None]
    return {k: float(np.mean(hits[:, :k].any(axis=1))) for k in ks}


def run(args, expect=0):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_eval_query_gallery_equals_brute_force(inshop, tmp_path):
    data, _ = inshop
    saved = tmp_path / "f.npz"
    out = run([os.path.join(ROOT, "eval.py"), "--random_init", "--dataset_path", data, "--query_list", "query.txt",
               "--gallery_list", "gallery.txt", "--dataset", "inshop", "--save_features", str(saved),
               "--image_size", "32", "--num_parallel_workers", "1", "--eval_batch_size", "16"])
    reported = {int(k): float(v) for k, v in re.findall(r"^recall@(\d+)\s+([0-9.]+)$", out, re.M)}
    assert sorted(reported) == [1, 10, 20, 30, 40]  # In-Shop's Recall@K
    f = np.load(saved)
    assert f["features"].shape == (16, 2048) and f["gallery_features"].shape == (16, 2048)
    expected = brute_force_recall(f["features"], f["labels"], f["gallery_features"], f["gallery_labels"],
                                  [1, 10])
    for k in (1, 10):
        assert reported[k] == pytest.approx(expected[k], abs=5e-5)
    assert set(f["labels"].tolist()) == set(range(1, 9))  # the lists' own item ids
    out = run([os.path.join(ROOT, "eval.py"), "--random_init", "--dataset_path", data, "--query_list", "query.txt",
               "--image_size", "32"], expect=1)
    assert "--query_list and --gallery_list go together" in out.strip().splitlines()[-1]


def test_postprocess_query_gallery_equals_brute_force(tmp_path):
    rng = np.random.default_rng(4)
    sets = {}
    for name, n in (("query", 12), ("gallery", 20)):
        results, labels = tmp_path / f"{name}_results", tmp_path / f"{name}_labels"
        results.mkdir()
        labels.mkdir()
        x, y = rng.standard_normal((n, 8)).astype(np.float32), rng.integers(100, 104, n).astype(np.int32)
        for i in range(n):
            x[i].tofile(results / f"sop_{i}_0.bin")
            y[i:i + 1].tofile(labels / f"sop_{i}.bin")
        sets[name] = (x, y, results, labels)
    (qx, qy, qr, ql), (gx, gy, gr, gl) = sets["query"], sets["gallery"]
    out = run([os.path.join(ROOT, "postprocess.py"), "--result_path", str(qr), "--label_path", str(ql),
               "--gallery_result_path", str(gr), "--gallery_label_path", str(gl), "--feature_dim", "8",
               "--dataset", "cub", "--output", str(tmp_path / "acc.log")])
    reported = {int(k): float(v) for k, v in re.findall(r"^recall@(\d+)\s+([0-9.]+)$", out, re.M)}
    assert sorted(reported) == [1, 2, 4, 8]  # CUB's Recall@K
    expected = brute_force_recall(qx, qy, gx, gy, [1, 2, 4, 8])
    for k, value in expected.items():
        assert reported[k] == pytest.approx(value, abs=5e-5)


def test_dataset_defaults_in_the_config():
    cub = load_config("softmax", "CPU", overrides=["dataset=cub"])
    assert (cub.class_num, cub.recall_ks) == (100, "1,2,4,8")
    assert load_config("arcmargin", "CPU", overrides=["dataset=cars"]).class_num == 98
    assert load_config("proxyanchor", "CPU", overrides=["dataset=inshop"]).class_num == 3997
    assert load_config("triplet", "CPU", overrides=["dataset=inshop"]).recall_ks == "1,10,20,30,40"
    assert load_config("softmax", "CPU").class_num == 5184  # SOP's train_half.txt
    assert load_config("softmax", "CPU", overrides=["dataset=cub", "class_num=7"]).class_num == 7
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        load_config("softmax", "CPU", overrides=["dataset=imagenet"])


def test_prepare_lists_script_checks_its_arguments(tmp_path):
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "prepare_lists.sh"), "cub"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "usage: bash" in proc.stderr
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "prepare_lists.sh"), "cub", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "images.txt not found" in proc.stderr.strip().splitlines()[-1]


def test_queries_without_a_gallery_class(caplog):
    from src.evaluation.metrics import NoPositivesError, check_query_positives

    assert check_query_positives(np.array([1, 2, 3]), np.array([1, 2, 2]), "q against g") == 1
    assert "q against g: 1 of 3 queries have no gallery image of their class" in caplog.text
    with pytest.raises(NoPositivesError, match="none of its 2 queries has a gallery image of its class"):
        check_query_positives(np.array([5, 6]), np.array([1, 2]), "q against g")


@pytest.mark.slow
def test_training_evaluates_on_query_and_gallery(inshop, tmp_path):
    data, _ = inshop
    out = run([os.path.join(ROOT, "train.py"), "--loss_name", "triplet", "--dataset_path", data, "--run_eval",
               "--query_list", "query.txt", "--gallery_list", "gallery.txt", "--output_dir", str(tmp_path),
               "--batch_size", "6", "--epoch_size", "1", "--image_size", "32", "--num_parallel_workers", "1",
               "--eval_batch_size", "16", "--hflip", "false"])
    assert re.search(r"epoch: 1 eval_recall: [0-9.]+ \(MAP@R [0-9.]+", out)
