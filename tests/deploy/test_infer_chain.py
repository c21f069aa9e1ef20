"""The offline inference chain (preprocess -> runner -> postprocess) on CPU reproduces eval.py; the 310 script
stops at its build step where the Ascend toolchain is missing."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from src.data.decoding import load_image
from src.data.demo_data import make_retrieval_dataset
from src.data.image_list import read_image_list
from src.data.transforms import eval_transform
from src.deploy.infer_data import load_results
from src.evaluation.metrics import l2_normalize_rows
from tests.paths import FIXTURES, ROOT

SIZE = 32

pytestmark = pytest.mark.slow


def start(args, cwd=None):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    for name in ("MS_LITE_HOME", "LITE_HOME"):  # build.sh must find no Lite package
        env.pop(name, None)
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
def chain(tmp_path_factory, untrained_checkpoint):
    """Export a MindIR of an untrained checkpoint, run scripts/run_infer_cpu.sh and eval.py on the same list."""
    base = tmp_path_factory.mktemp("chain")
    data = make_retrieval_dataset(str(base / "data"))
    ckpt = untrained_checkpoint
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
        np.testing.assert_array_equal(np.fromfile(out / "label" / f"sop_{i}.bin", np.int32),
                                      [images.class_ids[images.labels[i]]])


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


def test_310_script_stops_at_the_build_step_without_lite(chain, tmp_path):
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_310.sh"), chain["mindir"], chain["data"], "0",
               "--eval_list", "test.txt", "--image_size", str(SIZE)], cwd=tmp_path, expect=1)
    assert "build.sh: error: MindSpore Lite not found: set MS_LITE_HOME (or LITE_HOME)" in log
    assert re.search(r"error: build failed with exit status 1 \(log: .*build\.log\); later steps not run", log)
    assert sorted(os.listdir(tmp_path)) == ["build.log"]  # neither preprocess nor postprocess ran


# ---------------------------------------------------------------------------------------------------------
# The runner built against tests/fixtures/lite_stub: headers declaring the MindSpore 2.10 Lite API the runner uses and
# a stand-in libmindspore-lite.so whose model folds each input into 2048 values (see its source).

STUB = os.path.join(FIXTURES, "lite_stub")
RUNNER = os.path.join(ROOT, "ascend310_infer")


def fold(values, size=2048):
    """The stub model: output[j] = sum of the input values at indices i with i % size == j."""
    values = np.asarray(values, np.float64).reshape(-1)
    return np.bincount(np.arange(len(values)) % size, weights=values, minlength=size)


@pytest.fixture(scope="module")
def lite_stub(tmp_path_factory):
    """A Lite-shaped package (runtime/include/api, runtime/lib/libmindspore-lite.so) made of the stub."""
    home = tmp_path_factory.mktemp("lite")
    shutil.copytree(os.path.join(STUB, "runtime", "include"), home / "runtime" / "include")
    (home / "runtime" / "lib").mkdir()
    subprocess.run(["g++", "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I",
                    str(home / "runtime"), os.path.join(STUB, "src", "lite_stub.cc"), "-o",
                    str(home / "runtime" / "lib" / "libmindspore-lite.so")], check=True)
    return home


def test_the_runner_needs_exactly_the_2_10_symbols_the_stub_declares(tmp_path):
    """main.cc compiled against the stub headers asks the library for the same symbols (mangled: names and
    parameter types) as against MindSpore 2.10's Lite headers, recorded in tests/fixtures/lite_stub/used_symbols.txt."""
    obj = tmp_path / "main.o"
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", "-I", os.path.join(STUB, "runtime"),
                    "-I", RUNNER, os.path.join(RUNNER, "src", "main.cc"), "-o", str(obj)], check=True)
    undefined = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True).stdout.split()
    used = sorted(name for name in undefined if "mindspore" in name.lower())
    with open(os.path.join(STUB, "used_symbols.txt")) as f:
        recorded = f.read().split()
    assert used == recorded, "main.cc's Lite API use changed: check the new calls against the 2.10 headers"


@pytest.fixture(scope="module")
def stub_chain(chain, lite_stub, tmp_path_factory):
    """run_infer_310.sh with MS_LITE_HOME=the stub, on Ascend device 3 (the stub's Ascend is the CPU)."""
    work = tmp_path_factory.mktemp("stub_chain")
    out, cwd = work / "runner", work / "run"
    cwd.mkdir()
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, MS_LITE_HOME=str(lite_stub),
               INFER_BUILD_DIR=str(work / "build"), INFER_OUT_DIR=str(out))
    env.pop("LITE_HOME", None)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "run_infer_310.sh"), chain["mindir"], chain["data"],
                           "3", "--eval_list", "test.txt", "--image_size", str(SIZE)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    return {"proc": proc, "cwd": cwd, "runner": out / "main", "env": env, "home": lite_stub}


def test_310_chain_on_the_lite_stub_writes_the_models_outputs(chain, stub_chain):
    proc, cwd = stub_chain["proc"], stub_chain["cwd"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    infer_log = (cwd / "infer.log").read_text()
    assert f"lite stub: Build {chain['mindir']} on Ascend device 3" in infer_log
    assert "input x 1x3x32x32, 32 input files" in infer_log
    inputs = cwd / "preprocess_Result" / "img_data"
    for i in range(32):
        got = np.fromfile(cwd / "result_Files" / f"sop_{i}_0.bin", np.float32)
        np.testing.assert_allclose(got, fold(np.fromfile(inputs / f"sop_{i}.bin", np.float32)), rtol=1e-5,
                                   atol=1e-4)
    assert re.search(r"^NN inference cost average time: [0-9.e-]+ ms of infer_count 32$",
                     (cwd / "time_Result" / "test_perform_static.txt").read_text(), re.M)
    # acc.log is postprocess's metrics of those outputs: brute-force Recall@1 on the folded inputs.
    features = np.stack([fold(np.fromfile(inputs / f"sop_{i}.bin", np.float32)) for i in range(32)])
    labels = np.array([np.fromfile(cwd / "preprocess_Result" / "label" / f"sop_{i}.bin", np.int32)[0]
                       for i in range(32)])
    x = l2_normalize_rows(features).astype(np.float64)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    expected = np.mean(labels[dist.argmin(1)] == labels)
    assert float(eval_recall((cwd / "acc.log").read_text())) == pytest.approx(expected, abs=5e-5)


def runner(stub_chain, *args, expect, env=None):
    proc = subprocess.run([str(stub_chain["runner"]), *args], cwd=stub_chain["cwd"], capture_output=True, text=True,
                          env=dict(stub_chain["env"], **(env or {})), timeout=60)
    assert proc.returncode == expect, proc.stdout + proc.stderr
    return proc


def test_runner_on_cpu_and_its_errors(chain, stub_chain, tmp_path):
    inputs = str(stub_chain["cwd"] / "preprocess_Result" / "img_data")
    mindir = chain["mindir"]
    proc = runner(stub_chain, f"--mindir_path={mindir}", f"--dataset_path={inputs}", "--device_type=CPU",
                  "--thread_num", "3", expect=0)
    assert f"lite stub: Build {mindir} on CPU with 3 threads" in proc.stderr
    assert f"{mindir} on the CPU: input x 1x3x32x32" in proc.stdout
    last = runner(stub_chain, f"--mindir_path={mindir}", f"--dataset_path={inputs}", "--device_type=GPU",
                  expect=1).stderr.strip().splitlines()[-1]
    assert last == "error: --device_type must be Ascend or CPU, got 'GPU'"
    last = runner(stub_chain, f"--mindir_path={mindir}", f"--dataset_path={inputs}", expect=1,
                  env={"LITE_STUB_INPUT_SHAPE": "1,3,16,16"}).stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"error: .*img_data/sop_0\.bin: 12288 bytes, the model input 1x3x16x16 needs 3072", last)
    last = runner(stub_chain, "--mindir_path", str(tmp_path / "none.mindir"), expect=1).stderr.strip()
    assert last.endswith(f"error: --mindir_path '{tmp_path / 'none.mindir'}' is not a file")
    last = runner(stub_chain, f"--mindir_path={mindir}", f"--dataset_path={tmp_path}", expect=1).stderr.strip()
    assert last.endswith(f"error: no *.bin input files in {tmp_path}")
    last = runner(stub_chain, "--device", "1", expect=1).stderr.strip().splitlines()[-1]
    assert last == "error: unknown flag --device"


def test_build_names_what_it_looked_for(tmp_path):
    env = dict(os.environ, MS_LITE_HOME=str(tmp_path), INFER_BUILD_DIR=str(tmp_path / "b"),
               INFER_OUT_DIR=str(tmp_path / "o"))
    proc = subprocess.run(["bash", os.path.join(RUNNER, "build.sh")], env=env, capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (f"build.sh: error: not a MindSpore Lite package: {tmp_path}/runtime/include/api/"
                                   f"model.h {tmp_path}/runtime/lib/libmindspore-lite.so not found")


def test_infer_scripts_check_their_arguments(chain, tmp_path):
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_cpu.sh"), chain["mindir"]], cwd=tmp_path, expect=2)
    assert "usage: bash run_infer_cpu.sh [MODEL_PATH] [DATASET_PATH]" in log
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_310.sh"), chain["mindir"], chain["data"], "x1"],
              cwd=tmp_path, expect=2)
    assert "DEVICE_ID must be a non-negative integer, got 'x1'" in log
