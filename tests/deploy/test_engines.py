"""CPU inference engines (eval.py --backend, the CPU chain's BACKEND): ONNX Runtime and OpenVINO on the ONNX export
give MindSpore's features on real photos and the same metric lines; the export is cached next to the checkpoint;
a bad backend is a one-line error."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from src.data.demo_photos import make_photo_dataset
from src.data.sop_lists import prepare_lists
from src.deploy import engines
from tests.paths import ROOT

SIZE = 32
BATCH = 16  # 114 test images: the last batch is short, so the engines' padding is exercised
ENGINES = ("onnxruntime", "openvino")


def run(args, cwd=None, expect=0, env=None):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run(args, cwd=cwd or ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {args}:\n{proc.stdout[-4000:]}"
    return proc.stdout


def results(log):
    """The lines eval.py prints (the metric table, eval_recall, result), without the log lines."""
    return [line for line in log.splitlines() if line and not re.match(r"^(\d\d:\d\d:\d\d |\[)", line)]


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, untrained_checkpoint):
    """eval.py with each backend on the demo photos (32 px) and an untrained checkpoint, features saved."""
    for name in ENGINES:
        pytest.importorskip(name, reason=f"{name} is a test dependency (requirements-dev.txt)")
    base = tmp_path_factory.mktemp("engines")
    data = str(base / "photos")
    make_photo_dataset(data, grid=2, views=3, size=SIZE, test_regions=2)
    prepare_lists(data)
    ckpt = str(base / "ckpt" / "untrained.ckpt")  # a folder of its own: the ONNX export is cached next to it
    os.makedirs(os.path.dirname(ckpt))
    os.link(untrained_checkpoint, ckpt)
    out = {"data": data, "ckpt": ckpt}
    for backend in ("mindspore",) + ENGINES:  # onnxruntime exports the ONNX model, openvino reuses it
        features = str(base / f"{backend}.npz")
        log = run([sys.executable, os.path.join(ROOT, "eval.py"), "--dataset_path", data, "--eval_list", "test.txt",
                   "--ckpt_path", ckpt, "--image_size", str(SIZE), "--eval_batch_size", str(BATCH),
                   "--num_parallel_workers", "1", "--recall_ks", "1,10", "--backend", backend, "--threads", "2",
                   "--save_features", features])
        out[backend] = {"log": log, "features": dict(np.load(features))}
    return out


def max_relative_difference(features, reference):
    """max over images of max |a - b| / max |b| (each image's difference relative to its own feature scale)."""
    return float((np.abs(features - reference).max(1) / np.abs(reference).max(1)).max())


@pytest.mark.slow
@pytest.mark.parametrize("backend", ENGINES)
def test_each_engine_extracts_mindspores_features_on_real_photos(evaluations, backend):
    reference, features = evaluations["mindspore"]["features"], evaluations[backend]["features"]
    assert features["features"].shape == reference["features"].shape == (114, 2048)
    np.testing.assert_array_equal(features["labels"], reference["labels"])
    np.testing.assert_array_equal(features["paths"], reference["paths"])
    diff = max_relative_difference(features["features"], reference["features"])
    print(f"{backend} vs mindspore: max relative feature difference {diff:.3g}")
    assert diff <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("backend", ENGINES)
def test_each_engine_prints_the_same_metric_lines(evaluations, backend):
    expected = results(evaluations["mindspore"]["log"])
    assert any(line.startswith("map@r") for line in expected) and expected[-2].startswith("eval_recall: ")
    assert results(evaluations[backend]["log"]) == expected
    assert f"features by {backend} on " in evaluations[backend]["log"]


@pytest.mark.slow
def test_the_onnx_model_is_exported_once_next_to_the_checkpoint(evaluations):
    folder = os.path.dirname(evaluations["ckpt"])
    models = [name for name in os.listdir(folder) if name.endswith(".onnx")]
    assert len(models) == 1 and models[0].startswith(f"untrained.ckpt.{SIZE}px-b{BATCH}-"), models
    assert "ONNX model: exporting the backbone" in evaluations["onnxruntime"]["log"]
    assert f"ONNX model: reusing {os.path.join(folder, models[0])}" in evaluations["openvino"]["log"]


@pytest.mark.slow
def test_the_cpu_chain_runs_the_onnx_model_in_openvino(evaluations, tmp_path):
    folder = os.path.dirname(evaluations["ckpt"])
    model = next(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".onnx"))
    log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_cpu.sh"), model, evaluations["data"],
               "--eval_list", "test.txt", "--image_size", str(SIZE)], cwd=tmp_path,
              env={"BACKEND": "openvino", "THREADS": "2", "RECALL_KS": "1,10"})
    r1 = re.search(r"^eval_recall: ([0-9.]+)$", evaluations["mindspore"]["log"], re.M).group(1)
    assert f"R@1: {r1} " in log
    assert "(openvino, 2 thread(s)): 114 inputs of shape 1x3x32x32" in (tmp_path / "infer.log").read_text()


@pytest.mark.slow
def test_a_damaged_cached_model_is_exported_again(evaluations, tmp_path):
    """A truncated ONNX file in the cache: eval.py warns, exports it again and prints the usual lines."""
    from src.models.checkpoint import resolve_padding
    from src.models.resnet import head_options
    from src.runtime.config import load_config

    cfg = load_config("triplet", "CPU")  # eval.py's default stage: the settings its cache key holds
    settings = dict(head_options(cfg), padding=resolve_padding(cfg.backbone_padding, [evaluations["ckpt"]]))
    folder = os.path.dirname(evaluations["ckpt"])
    model = os.path.join(folder, next(name for name in os.listdir(folder) if name.endswith(".onnx")))
    assert engines.onnx_cache_path(evaluations["ckpt"], SIZE, BATCH, settings) == model
    ckpt = tmp_path / "untrained.ckpt"  # the same checkpoint in a folder of its own: its own cache name
    os.link(evaluations["ckpt"], ckpt)
    damaged = engines.onnx_cache_path(str(ckpt), SIZE, BATCH, settings)
    with open(model, "rb") as f:
        valid = f.read()
    with open(damaged, "wb") as f:
        f.write(valid[:len(valid) // 2])
    log = run([sys.executable, os.path.join(ROOT, "eval.py"), "--dataset_path", evaluations["data"], "--eval_list",
               "test.txt", "--ckpt_path", str(ckpt), "--image_size", str(SIZE), "--eval_batch_size", str(BATCH),
               "--num_parallel_workers", "1", "--recall_ks", "1,10", "--backend", "onnxruntime", "--threads", "2"])
    warnings = [line for line in log.splitlines() if "WARNING" in line and "OpenBLAS" not in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"WARNING metric_learn: ONNX model: the cached {damaged} does not load in onnxruntime (InvalidProtobuf: "
        f"[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from {damaged} failed:Protobuf parsing failed.); "
        "exporting it again"), log
    expected = results(evaluations["mindspore"]["log"])
    assert results(log) == [line.replace(evaluations["ckpt"], str(ckpt)) for line in expected]
    assert os.path.getsize(damaged) == len(valid)
    assert sorted(os.listdir(tmp_path)) == sorted(["untrained.ckpt", os.path.basename(damaged)])


class _Untrainable:
    """A stand-in backbone for an exporter that does not look at it."""

    training = False

    def set_train(self, mode=True):
        pass


@pytest.mark.parametrize("backend", ENGINES)
def test_an_export_that_does_not_load_is_a_one_line_error(backend, tmp_path, monkeypatch, caplog):
    """The exporter writes garbage: a damaged cached file is exported again (a warning); the fresh export does not
    load either: one ERROR line naming it."""
    pytest.importorskip(backend, reason=f"{backend} is a test dependency (requirements-dev.txt)")
    from src.deploy import export
    from src.runtime.cli import run as run_entry

    exported = []

    def garbage(net, file_name, file_format, batch_size, image_size):
        with open(file_name, "wb") as f:
            f.write(b"garbage, not a model")
        exported.append(file_name)
        return file_name

    monkeypatch.setattr(export, "export_network", garbage)
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"weights")
    cached = engines.onnx_cache_path(str(ckpt), 32, 4)
    with open(cached, "wb") as f:
        f.write(b"\x08\x07\x12")  # a truncated file
    with pytest.raises(SystemExit) as exit_status:
        run_entry(lambda argv: engines.extraction_engine(backend, _Untrainable(), str(ckpt), 32, 4, threads=1))
    assert exit_status.value.code == 1 and exported == [cached]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "OpenBLAS" not in r.message]
    assert len(warnings) == 1 and re.fullmatch(
        rf"ONNX model: the cached {re.escape(cached)} does not load in {backend} \(\w+: .+\); exporting it again",
        warnings[0]), warnings
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "\n" not in errors[0] and re.fullmatch(
        rf"ModelLoadError: {re.escape(cached)}: the ONNX model just exported does not load in {backend} \(\w+: .+\)",
        errors[0]), errors
    caplog.clear()
    exported.clear()
    with pytest.raises(engines.ModelLoadError, match=r"metric_learn_onnx_\w+/backbone\.onnx: the ONNX model just"):
        engines.extraction_engine(backend, _Untrainable(), None, 32, 4, threads=1)  # a random init: a temporary file
    assert len(exported) == 1 and not os.path.exists(os.path.dirname(exported[0])), "its folder is removed"
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "OpenBLAS" not in r.message]


def test_the_cached_model_is_reused_until_the_checkpoint_or_a_setting_changes(tmp_path):
    ckpt = tmp_path / "a.ckpt"
    ckpt.write_bytes(b"weights")
    cached = engines.onnx_cache_path(str(ckpt), 32, 4, {"pooling": "avg"})
    assert os.path.dirname(cached) == str(tmp_path) and os.path.basename(cached).startswith("a.ckpt.32px-b4-")
    with open(cached, "w") as f:
        f.write("onnx")
    assert engines.onnx_for_checkpoint(None, str(ckpt), 32, 4, {"pooling": "avg"}) == (cached, "reused")  # no export
    changed = {engines.onnx_cache_path(str(ckpt), 32, 4, {"pooling": "max"}),
               engines.onnx_cache_path(str(ckpt), 64, 4, {"pooling": "avg"}),
               engines.onnx_cache_path(str(ckpt), 32, 8, {"pooling": "avg"})}
    os.utime(ckpt, ns=(1, 1))
    changed.add(engines.onnx_cache_path(str(ckpt), 32, 4, {"pooling": "avg"}))
    assert len(changed) == 4 and cached not in changed


class _Doubling(engines._FixedBatchEngine):
    """A fake batch-4 model: each image's first 3 values, doubled; records the batch sizes it was given."""

    def __init__(self):
        super().__init__("fake.onnx", (4, 3, 2, 2))
        self.batches = []

    def _run(self, images):
        self.batches.append(len(images))
        return 2 * images.reshape(len(images), -1)[:, :3]


@pytest.mark.parametrize("count", [1, 4, 6, 8])
def test_an_engine_runs_any_count_in_its_fixed_batch(count):
    engine = _Doubling()
    images = np.random.default_rng(count).normal(size=(count, 3, 2, 2)).astype(np.float32)
    np.testing.assert_array_equal(engine(images), 2 * images.reshape(count, -1)[:, :3])
    assert engine.batches == [4] * -(-count // 4)
    with pytest.raises(ValueError, match=r"fake.onnx takes images of shape \(3, 2, 2\), got \(3, 4, 4\)"):
        engine(np.zeros((1, 3, 4, 4), np.float32))


@pytest.mark.parametrize("command", [["eval.py", "--dataset_path", ".", "--random_init"],
                                     ["-m", "src.deploy.infer_cpu", "--model_path", "x.onnx", "--dataset_path", "."]])
def test_a_bad_backend_is_a_one_line_error(command):
    log = run([sys.executable, *command, "--backend", "tensorrt"], expect=1)
    assert log.strip().splitlines()[-1].endswith(
        "ERROR metric_learn: ValueError: --backend must be one of mindspore, onnxruntime, openvino, got 'tensorrt'")
    assert log.count("tensorrt") == 1


def test_the_cpu_chain_refuses_a_bad_backend_before_any_step(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    for env, message in (({"BACKEND": "tensorrt"}, "error: BACKEND must be mindspore, onnxruntime or openvino, "
                                                   "got 'tensorrt'"),
                         ({}, f"error: BACKEND=mindspore runs a .mindir file, got MODEL_PATH '{model}'")):
        log = run(["bash", os.path.join(ROOT, "scripts", "run_infer_cpu.sh"), str(model), str(tmp_path)],
                  cwd=tmp_path, expect=2, env=env)
        assert log.splitlines()[0] == message
        assert not (tmp_path / "preprocess.log").exists()
