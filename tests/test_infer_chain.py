"""The offline inference chain (preprocess -> runner -> postprocess) on CPU reproduces eval.py; the 310 script
stops at its build step where the Ascend toolchain is missing."""
import os
import re
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.dataset import eval_transform, load_image, read_image_list
from src.demo_data import make_retrieval_dataset
from src.features import l2_normalize_rows
from src.infer_data import load_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32

pytestmark = pytest.mark.slow


def start(args, cwd=None):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    env.pop("MINDSPORE_PATH", None)  # build.sh must look for MindSpore the default way
    return subprocess.Popen(args, cwd=cwd or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc, expect=0):
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {proc.args}:\n{output[-4000:]}"
    return output


def run(args, cwd=None, expect=0):
    return finish(start(args, cwd), expect)


def eval_recall(text):
    return re.search(r"^eval_recall: ([0-9.]+)$", text, re.M).group(1)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Export a MindIR of an untrained checkpoint, run scripts/run_infer_cpu.sh and eval.py on the same list."""
    base = tmp_path_factory.mktemp("chain")
    data = make_retrieval_dataset(str(base / "data"))
    ckpt = str(base / "untrained.ckpt")
    run([sys.executable, "-c", "import mindspore as ms; from src.resnet import ResNet50; "
         f"ms.set_seed(1); ms.save_checkpoint(ResNet50(), {ckpt!r})"])
    features = str(base / "eval_features.npz")
    # eval.py runs beside the export and the chain: each is mostly one busy core.
    evaluation = start([sys.executable, os.path.join(ROOT, "eval.py"), "--dataset_path", data, "--eval_list",
                        "test.txt", "--ckpt_path", ckpt, "--image_size", str(SIZE), "--num_parallel_workers", "1",
                        "--eval_batch_size", "16", "--save_features", features])
    try:
        log = run([sys.executable, os.path.join(ROOT, "export.py"), "--ckpt_file", ckpt, "--file_name",
                   str(base / "resnet50"), "--image_size", str(SIZE)])
        mindir = re.search(r"^exported: (.+)$", log, re.M).group(1)
        work = base / "work"
        work.mkdir()
        chain_log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_cpu.sh"), mindir, data,
                         "--eval_list", "test.txt", "--image_size", str(SIZE)], cwd=work)
        eval_log = finish(evaluation)
    finally:
        if evaluation.poll() is None:  # the chain failed: do not leave eval.py running
            evaluation.kill()
            evaluation.wait()
    return {"data": data, "mindir": mindir, "work": work, "log": chain_log, "eval_log": eval_log,
            "eval": np.load(features)}


def test_cpu_chain_reproduces_eval_py(chain):
    work = chain["work"]
    acc = (work / "acc.log").read_text()
    assert eval_recall(acc) == eval_recall(chain["eval_log"])
    assert f"R@1: {eval_recall(acc)}" in chain["log"]
    features, labels, names = load_results(str(work / "result_Files"), str(work / "preprocess_Result" / "label"))
    assert names[:3] == ["sop_0_0.bin", "sop_1_0.bin", "sop_2_0.bin"] and len(names) == 32
    np.testing.assert_array_equal(labels, chain["eval"]["labels"])
    diff = float(np.abs(l2_normalize_rows(features) - chain["eval"]["features"]).max())
    print(f"CPU runner vs eval.py features (L2-normalised): max abs diff {diff:.3g}")
    assert diff < 1e-5
    assert re.search(r"^NN inference cost average time: [0-9.]+ ms of infer_count 32$",
                     (work / "time_Result" / "test_perform_static.txt").read_text(), re.M)
    for what in ("preprocessing", "inference"):  # progress lines
        assert re.search(rf"{what}: 32/32 \(100\.0%\) [0-9.]+ images/s ETA", chain["log"]), what


def test_preprocess_writes_eval_transform_in_list_order(chain):
    out = chain["work"] / "preprocess_Result"
    images = read_image_list(os.path.join(chain["data"], "test.txt"), chain["data"])
    assert sorted(os.listdir(out / "img_data")) == sorted(f"sop_{i}.bin" for i in range(len(images)))
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no staging folder left
    for i in (0, 17, 31):
        stored = np.fromfile(out / "img_data" / f"sop_{i}.bin", np.float32)
        expected = eval_transform(load_image(images.full_path(i)), SIZE, "crop")
        np.testing.assert_array_equal(stored.reshape(1, 3, SIZE, SIZE), expected[None])
        np.testing.assert_array_equal(np.fromfile(out / "label" / f"sop_{i}.bin", np.int32), [images.labels[i]])


def test_postprocess_names_a_missing_result_file(chain, tmp_path):
    results = tmp_path / "result_Files"
    shutil.copytree(chain["work"] / "result_Files", results)
    os.remove(results / "sop_5_0.bin")
    log = run([sys.executable, os.path.join(ROOT, "postprocess.py"), "--result_path", str(results), "--label_path",
               str(chain["work"] / "preprocess_Result" / "label"), "--output", str(tmp_path / "acc.log")], expect=1)
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in log, log
    assert re.search(r"1 of 32 result files missing in .*result_Files: sop_5_0\.bin$", errors[0])
    assert not (tmp_path / "acc.log").exists()


def test_postprocess_recall_ks(chain, tmp_path):
    """--recall_ks picks the K of Recall@K in acc.log (no clipping warning for K that fit); values match brute force."""
    work = chain["work"]
    log = run([sys.executable, os.path.join(ROOT, "postprocess.py"), "--result_path", str(work / "result_Files"),
               "--label_path", str(work / "preprocess_Result" / "label"), "--output", str(tmp_path / "acc.log"),
               "--recall_ks", "1,5"])
    acc = (tmp_path / "acc.log").read_text()
    reported = dict(re.findall(r"^recall@(\d+)\s+([0-9.]+)$", acc, re.M))
    assert sorted(reported) == ["1", "5"] and "WARNING" not in log, log
    features, labels, _ = load_results(str(work / "result_Files"), str(work / "preprocess_Result" / "label"))
    x = l2_normalize_rows(features).astype(np.float64)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    nearest = np.argsort(dist, axis=1, kind="stable")[:, :5]
    for k in (1, 5):
        expected = np.mean([(labels[row[:k]] == labels[i]).any() for i, row in enumerate(nearest)])
        assert float(reported[str(k)]) == pytest.approx(expected, abs=5e-5)


def test_result_files_must_match_the_labels(chain, tmp_path):
    results = tmp_path / "result_Files"
    labels = str(chain["work"] / "preprocess_Result" / "label")
    shutil.copytree(chain["work"] / "result_Files", results)
    np.zeros(2047, np.float32).tofile(results / "sop_7_0.bin")
    with pytest.raises(ValueError, match=r"sop_7_0\.bin: expected 2048 float32 values \(8192 bytes\), got 8188"):
        load_results(str(results), labels)
    np.zeros(2048, np.float32).tofile(results / "sop_7_0.bin")
    np.zeros(2048, np.float32).tofile(results / "sop_40_0.bin")
    with pytest.raises(ValueError, match=r"1 result files .* have no label .*: sop_40_0\.bin"):
        load_results(str(results), labels)


@pytest.mark.skipif(os.path.isfile(os.path.join(os.path.dirname(ms.__file__), "include", "api", "model.h")),
                    reason="this MindSpore package has the C++ inference API: the build step may succeed")
def test_310_script_stops_at_the_build_step_here(chain, tmp_path):
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_310.sh"), chain["mindir"], chain["data"], "0",
               "--eval_list", "test.txt", "--image_size", str(SIZE)], cwd=tmp_path, expect=1)
    assert "build.sh: error: no MindSpore C++ inference API in" in log
    assert re.search(r"error: build failed with exit status 1 \(log: .*build\.log\); later steps not run", log)
    assert sorted(os.listdir(tmp_path)) == ["build.log"]  # neither preprocess nor postprocess ran


def test_infer_scripts_check_their_arguments(chain, tmp_path):
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_cpu.sh"), chain["mindir"]], cwd=tmp_path, expect=2)
    assert "usage: bash run_infer_cpu.sh [MINDIR_PATH] [DATASET_PATH]" in log
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_310.sh"), chain["mindir"], chain["data"], "x1"],
              cwd=tmp_path, expect=2)
    assert "DEVICE_ID must be a non-negative integer, got 'x1'" in log
