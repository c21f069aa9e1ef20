"""retrieve.py end to end on a tiny generated set with an untrained ResNet-50: index (and --add), search, match, and
every bad input as one error line that names it, leaving what was written before as it was."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.retrieval.index import FEATURES, MANIFEST, load_index
from src.retrieval.search import ExactSearch
from tests.paths import ROOT

pytestmark = pytest.mark.slow
SMALL = ["--image_size", "32", "--eval_batch_size", "16", "--num_parallel_workers", "1"]


def start(*args):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "retrieve.py"), *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, expect=0):
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {proc.args}:\n{out[-4000:]}"
    return out


def retrieve(*args, expect=0):
    return finish(start(*args), expect)


def write_list(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path.name


@pytest.fixture(scope="module")
def run(tmp_path_factory, untrained_checkpoint):
    """The test list split into a gallery (indexed; one image per class held out as a query) and the held-out
    images; an index built in two steps (--add) and one built at once."""
    data = tmp_path_factory.mktemp("data")
    make_retrieval_dataset(str(data))
    lines = (data / "test.txt").read_text().splitlines()
    held_out = [line for i, line in enumerate(lines) if i % 4 == 0]
    gallery = [line for i, line in enumerate(lines) if i % 4]
    write_list(data / "gallery.txt", gallery)
    write_list(data / "first.txt", gallery[:14])
    write_list(data / "second.txt", gallery[10:])  # overlapping: 4 images in both
    out = tmp_path_factory.mktemp("out")
    ckpt = untrained_checkpoint
    logs = {"first": retrieve("index", "--ckpt_path", ckpt, "--dataset_path", data, "--list", "first.txt",
                              "--index_dir", out / "added", *SMALL)}
    logs["add"] = retrieve("index", "--ckpt_path", ckpt, "--dataset_path", data, "--list", "second.txt",
                           "--index_dir", out / "added", "--add", *SMALL)
    logs["full"] = retrieve("index", "--ckpt_path", ckpt, "--dataset_path", data, "--list", "gallery.txt",
                            "--index_dir", out / "full", *SMALL)
    queries = [str(data / line.split()[0]) for line in held_out[:2]] + [str(data / gallery[5].split()[0])]
    logs["search"] = retrieve("search", "--index_dir", out / "full", *queries, "--top_k", 5, "--json",
                              out / "hits.json", "--picture", out / "hits.png")
    return data, out, logs, queries, gallery


def test_index_then_add_gives_the_rebuilds_search_results(run):
    _, out, logs, _, gallery = run
    assert "24 images indexed (10 extracted now, 14 kept)" in logs["add"]
    added, full = load_index(str(out / "added")), load_index(str(out / "full"))
    assert sorted(added.paths) == sorted(full.paths) == sorted(line.split()[0] for line in gallery)
    assert added.manifest["image_size"] == 32 and added.manifest["backend"] == "mindspore"
    queries = full.features[::3]
    for index in (added, full):
        sims, ids = ExactSearch(index.features).search(queries, 6)
        index.hits = [[(index.paths[i], s) for s, i in zip(rs, ri, strict=True)] for rs, ri in zip(sims, ids,
                                                                                                   strict=True)]
    for a, b in zip(added.hits, full.hits, strict=True):
        assert [p for p, _ in a] == [p for p, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-5)


def test_search_equals_brute_force_and_writes_json_and_a_picture(run):
    _, out, logs, queries, gallery = run
    index = load_index(str(out / "full"))
    with open(out / "hits.json") as f:
        result = json.load(f)
    assert [q["image"] for q in result["queries"]] == queries and result["search"] == "exact search over 24 items"
    for query in result["queries"]:
        assert [hit["rank"] for hit in query["results"]] == [1, 2, 3, 4, 5]
    # The indexed image as a query: its features are its index row (same preprocessing), so it finds itself first,
    # and the rest is the brute-force ranking of that row.
    indexed = result["queries"][2]["results"]
    row = index.features[index.paths.index(gallery[5].split()[0])].astype(np.float64)
    sim = index.features.astype(np.float64) @ row
    order = np.argsort(-sim, kind="stable")[:5]
    assert [hit["id"] for hit in indexed] == order.tolist() and indexed[0]["path"] == gallery[5].split()[0]
    np.testing.assert_allclose([hit["similarity"] for hit in indexed], sim[order], atol=1e-5)
    assert indexed[0]["label"] == int(gallery[5].split()[1])
    for query in result["queries"]:
        sims = [hit["similarity"] for hit in query["results"]]
        assert sims == sorted(sims, reverse=True)
    assert f"query {queries[0]}" in logs["search"]
    import cv2

    picture = cv2.imread(str(out / "hits.png"))
    assert picture.shape[0] > 3 * 64 and picture.shape[1] > 6 * 64


def test_match_calibrates_on_a_held_out_list_and_writes_pairs(run):
    data, out, _, _, _ = run
    log = retrieve("match", "--index_dir", out / "full", "--calibrate_list", data / "train.txt", "--precision", 0.2,
                   "--csv", out / "pairs.csv", "--ann", "exact")
    line = next(line for line in log.splitlines() if line.startswith("threshold "))
    assert "precision" in line and "recall" in line and str(data / "train.txt") in line
    summary = next(line for line in log.splitlines() if " pairs at cosine similarity >= " in line)
    rows = (out / "pairs.csv").read_text().splitlines()
    assert rows[0] == "group,id_a,path_a,label_a,id_b,path_b,label_b,similarity"
    assert int(summary.split()[0]) == len(rows) - 1


def index_files(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_every_bad_input_is_one_line_naming_it(run, tmp_path, untrained_checkpoint):
    data, out, _, queries, _ = run
    full = out / "full"
    before = index_files(full)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.png").write_text("not an image")
    other = tmp_path / "other.ckpt"
    shutil.copyfile(untrained_checkpoint, other)
    with open(other, "ab") as f:
        f.write(b"\0")
    half = tmp_path / "half"
    shutil.copytree(full, half)
    os.remove(half / MANIFEST)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(full, corrupt)
    with open(corrupt / FEATURES, "r+b") as f:
        f.seek(200)
        f.write(b"\x7f\x7f\x7f\x7f")
    write_list(tmp_path / "singles.txt", [f"class_00{c}/0.png {c}" for c in range(8)])
    ckpt = untrained_checkpoint
    cases = {
        "not an image": (["search", "--index_dir", full, tmp_path / "notes.png"],
                         rf"ValueError: cannot decode image: {tmp_path}/notes.png$"),
        "empty folder": (["index", "--ckpt_path", ckpt, "--image_dir", tmp_path / "empty", "--index_dir",
                          tmp_path / "new", *SMALL], r"ValueError: --image_dir .*empty holds no images"),
        "missing index": (["search", "--index_dir", tmp_path / "nowhere", queries[0]],
                          r"FileNotFoundError: --index_dir .*nowhere: no index there"),
        "half-written index": (["search", "--index_dir", half, queries[0]],
                               r"half: manifest.json is missing: not a complete index"),
        "corrupt features": (["search", "--index_dir", corrupt, queries[0]],
                             r"corrupt: features.npy is corrupt \(its SHA-256 differs"),
        "another checkpoint": (["search", "--index_dir", full, queries[0], "--ckpt_path", other],
                               r"ValueError: checkpoint .*other.ckpt \(SHA-256 .*\) is not the one the index was "
                               r"built with"),
        "another image size": (["index", "--ckpt_path", ckpt, "--dataset_path", data, "--list", "train.txt",
                                "--index_dir", full, "--add", *SMALL, "--image_size", "64"],
                               r"ValueError: this build has image_size 64, the index .*full was built with 32"),
        "top_k 0": (["search", "--index_dir", full, queries[0], "--top_k", "0"],
                    r"ValueError: --top_k must be a positive integer, got 0$"),
        "precision 1.5": (["match", "--index_dir", full, "--calibrate_list", data / "train.txt", "--precision", "1.5"],
                          r"ValueError: --precision must be in \(0, 1\], got 1.5$"),
        "no positives": (["match", "--index_dir", full, "--calibrate_list", tmp_path / "singles.txt",
                          "--dataset_path", data, "--precision", "0.9"],
                         r"ValueError: .*singles.txt: no two of its 8 images share a label"),
        "the test list": (["match", "--index_dir", full, "--calibrate_list", data / "gallery.txt", "--precision",
                           "0.9"], r"gallery.txt is the list the index was built from"),
    }
    names = list(cases)
    logs = {}
    for pair in (names[i:i + 2] for i in range(0, len(names), 2)):  # two at a time: 2 cores
        procs = {name: start(*cases[name][0]) for name in pair}
        logs.update({name: finish(proc, expect=1) for name, proc in procs.items()})
    for name, (_, pattern) in cases.items():
        log = logs[name]
        lines = [line for line in log.splitlines() if line.strip()]
        errors = [line for line in lines if " ERROR " in line]
        assert len(errors) == 1 and errors[0] == lines[-1], f"{name}:\n{log[-3000:]}"
        assert re.search(pattern, errors[0]), f"{name}: {errors[0]}"
        assert "Traceback" not in log, name
    assert index_files(full) == before  # nothing written was lost
    assert not (tmp_path / "new").exists()
