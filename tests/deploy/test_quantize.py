"""CPU inference in bf16 and int8 (eval.py --precision, export.py --quantize int8, the CPU chain's PRECISION): the
features stay close to float32's on real photos, the metric lines are printed, the int8 model is cached beside
the checkpoint keyed on its calibration, and bad requests are one-line errors."""
import json
import os
import re
import sys

import numpy as np
import pytest

from src.data.demo_photos import make_photo_dataset
from src.data.sop_lists import prepare_lists
from src.deploy import calibration as calib
from src.deploy import quantize
from tests.deploy.test_engines import run
from tests.paths import ROOT

# 64 px: the last stage's maps are 2 x 2. At 32 px they are 1 x 1 and each feature is one int8 activation, whose
# rounding no pooling averages (docs/speed.md "Quantized extraction" measures what that costs).
SIZE = 64
BATCH = 16
CALIBRATION = ["--calibration_list", "train.txt", "--calibration_size", "48"]


def last_line(log):
    return [line for line in log.splitlines() if line.strip()][-1]


def has_bf16():
    import openvino as ov

    from src.runtime.env import onednn_uncapped

    with onednn_uncapped():
        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, untrained_checkpoint):
    for name in ("onnxruntime", "openvino", "nncf", "onnx"):
        pytest.importorskip(name, reason=f"{name} is a test dependency (requirements-dev.txt)")
    base = tmp_path_factory.mktemp("quantize")
    data = str(base / "photos")
    make_photo_dataset(data, grid=2, views=3, size=SIZE, test_regions=2)
    prepare_lists(data)
    ckpt = str(base / "ckpt" / "untrained.ckpt")  # a folder of its own: the models are cached next to it
    os.makedirs(os.path.dirname(ckpt))
    os.link(untrained_checkpoint, ckpt)
    with open(os.path.join(data, "train.txt")) as train, open(os.path.join(data, "test.txt")) as test:
        mixed = train.readlines()[:3] + test.readlines()[:1]  # a training list with one test image on line 4
    with open(os.path.join(data, "mixed.txt"), "w") as f:
        f.writelines(mixed)
    return {"base": base, "data": data, "ckpt": ckpt}


def eval_args(photos, *extra):
    return [sys.executable, os.path.join(ROOT, "eval.py"), "--dataset_path", photos["data"], "--eval_list", "test.txt",
            "--ckpt_path", photos["ckpt"], "--image_size", str(SIZE), "--eval_batch_size", str(BATCH),
            "--num_parallel_workers", "1", "--recall_ks", "1,10", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def evaluations(photos):
    """eval.py in int8 (both engines) and bf16 (where the CPU has it), features saved; the float32 reference: the
    same test images through the float32 export those runs cached, in OpenVINO, in this process (one subprocess
    less: the suite's time)."""
    from src.data.decoding import load_image
    from src.data.image_list import read_image_list
    from src.data.transforms import eval_transform
    from src.deploy.engines import OpenVinoEngine

    runs = [("openvino", "int8"), ("onnxruntime", "int8")] + ([("openvino", "bf16")] if has_bf16() else [])
    out = {}
    for backend, precision in runs:
        features = str(photos["base"] / f"{backend}-{precision}.npz")
        log = run(eval_args(photos, "--backend", backend, "--precision", precision, "--save_features", features,
                            *CALIBRATION))
        out[backend, precision] = {"log": log, "features": dict(np.load(features))}
    folder = os.path.dirname(photos["ckpt"])
    fp32 = next(name for name in os.listdir(folder) if name.endswith(".onnx") and ".int8-" not in name)
    images = read_image_list(os.path.join(photos["data"], "test.txt"), photos["data"])
    batch = np.stack([eval_transform(load_image(images.full_path(i)), SIZE, "crop") for i in range(len(images))])
    out["openvino", "fp32"] = {"features": {"features": OpenVinoEngine(os.path.join(folder, fp32), 1)(batch),
                                            "paths": np.array(images.paths)}}
    return out


def cosines(features, reference):
    return (features * reference).sum(1) / np.linalg.norm(features, axis=1) / np.linalg.norm(reference, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("backend, precision", [("openvino", "int8"), ("onnxruntime", "int8"), ("openvino", "bf16")])
def test_features_stay_close_to_float32s_on_real_photos(evaluations, backend, precision):
    if (backend, precision) not in evaluations:
        pytest.skip("this CPU has no bfloat16 instructions (the one-line error is tested below)")
    reference = evaluations["openvino", "fp32"]["features"]
    features = evaluations[backend, precision]["features"]
    assert features["features"].shape == reference["features"].shape == (114, 2048)
    np.testing.assert_array_equal(features["paths"], reference["paths"])
    cos = cosines(features["features"], reference["features"])
    print(f"{backend} {precision}: cosine to fp32 min {cos.min():.5f} median {np.median(cos):.5f}")
    assert cos.min() >= 0.99
    assert not np.array_equal(features["features"], reference["features"])  # it did compute otherwise


@pytest.mark.slow
def test_every_precision_prints_the_metric_lines(evaluations):
    for (backend, precision), result in evaluations.items():
        if precision == "fp32":
            continue  # computed here
        log = result["log"]
        assert re.search(r"^map@r\s+[0-9.]+$", log, re.M), log
        assert re.search(r"^eval_recall: [0-9.]+$", log, re.M), log
        assert re.search(rf"features by {backend} on \S+\.onnx, 1 thread\(s\), {precision}$", log, re.M), log


@pytest.mark.slow
def test_each_engines_int8_model_is_cached_beside_the_checkpoint_keyed_on_its_calibration(evaluations, photos,
                                                                                         monkeypatch):
    folder = os.path.dirname(photos["ckpt"])
    for backend in ("openvino", "onnxruntime"):  # each engine's own quantizer
        int8 = [name for name in os.listdir(folder) if f".int8-{backend}-" in name]
        assert len(int8) == 1 and int8[0].startswith(f"untrained.ckpt.{SIZE}px-b{BATCH}-"), int8
        assert f"int8 model: quantized to {os.path.join(folder, int8[0])}" in evaluations[backend, "int8"]["log"]
        assert quantize.is_quantized(os.path.join(folder, int8[0]))
    float32 = [name for name in os.listdir(folder) if name.endswith(".onnx") and ".int8-" not in name]
    assert len(float32) == 1 and not quantize.is_quantized(os.path.join(folder, float32[0]))
    # the same calibration again: the cached file, not quantized again; another calibration or engine: another file
    fp32 = os.path.join(folder, float32[0])
    same = calib.read_calibration(photos["data"], "train.txt", 48)
    cached = os.path.join(folder, next(name for name in os.listdir(folder) if ".int8-openvino-" in name))
    monkeypatch.setattr(quantize, "quantize_onnx", lambda *args: pytest.fail("quantized again"))
    assert quantize.int8_for_onnx(fp32, same, SIZE, "openvino") == (cached, "reused")
    other = calib.read_calibration(photos["data"], "train.txt", 16)
    names = {quantize.int8_cache_path(fp32, c, tool, SIZE) for c in (same, other)
             for tool in ("openvino", "onnxruntime")}
    assert len(names) == 4 and cached in names


@pytest.mark.slow
def test_export_quantizes_and_the_cpu_chain_runs_it_in_int8(photos, tmp_path):
    log = run([sys.executable, os.path.join(ROOT, "export.py"), "--ckpt_file", photos["ckpt"], "--file_format", "ONNX",
               "--quantize", "int8", "--backend", "onnxruntime", "--dataset_path", photos["data"], *CALIBRATION,
               "--image_size", str(SIZE)], cwd=tmp_path)  # ONNX Runtime's tool's file, run by OpenVINO below
    model = tmp_path / "resnet50_int8.onnx"
    assert f"exported: {model}" in log and quantize.is_quantized(str(model))
    chain = os.path.join(ROOT, "scripts", "run_infer_cpu.sh")
    log = run(["bash", chain, str(model), photos["data"], "--eval_list", "test.txt", "--image_size", str(SIZE)],
              cwd=tmp_path, env={"BACKEND": "openvino", "PRECISION": "int8", "THREADS": "1", "RECALL_KS": "1,10"})
    assert re.search(r"^R@1: [0-9.]+ ", log, re.M), log
    assert f"114 inputs of shape 1x3x{SIZE}x{SIZE}, in int8" in (tmp_path / "infer.log").read_text()
    # the int8 file run as float32 would silently be int8: refused
    log = run([sys.executable, "-m", "src.deploy.infer_cpu", "--backend", "onnxruntime", "--model_path", str(model),
               "--dataset_path", str(tmp_path / "preprocess_Result" / "img_data"), "--output_dir",
               str(tmp_path / "as_fp32")], expect=1)
    assert "is an int8 model: run it with --precision int8 (got fp32)" in log


# ---------------------------------------------------------------------------------------------------------
# One-line errors

@pytest.mark.parametrize("args, message", [
    (["--backend", "openvino", "--precision", "fp16"], "ValueError: --precision must be one of fp32, bf16, int8, "
                                                       "got 'fp16'"),
    (["--backend", "openvino", "--precision", "int8"], "CalibrationError: --precision int8 needs --calibration_list: "
                                                       "a list of training images to calibrate on"),
    (["--backend", "openvino", "--precision", "int8", "--calibration_list", "mixed.txt"],
     r"CalibrationError: --calibration_list \S+/mixed.txt:4: \S+ is a test image \(\S+/Ebay_test.txt:\d+\): "
     r"calibrate on training images"),
])
def test_bad_precision_requests_are_one_line_errors(photos, args, message):
    log = run(eval_args(photos, *args), expect=1)
    assert re.search(r"ERROR metric_learn: " + (message if "\\" in message else re.escape(message)),
                     last_line(log)), log
    assert "Traceback" not in log
    assert not [name for name in os.listdir(os.path.dirname(photos["ckpt"])) if name.endswith(".tmp.onnx")]


def test_export_refuses_int8_without_a_calibration_list_or_off_onnx(photos, tmp_path):
    export = [sys.executable, os.path.join(ROOT, "export.py"), "--ckpt_file", photos["ckpt"], "--image_size", str(SIZE),
              "--quantize", "int8", "--dataset_path", photos["data"]]
    log = run(export + ["--file_format", "ONNX"], cwd=tmp_path, expect=1)
    assert last_line(log).endswith("CalibrationError: --quantize int8 needs --calibration_list: a list of training "
                                   "images to calibrate on"), log
    log = run(export + ["--file_format", "MINDIR", "--calibration_list", "train.txt"], cwd=tmp_path, expect=1)
    assert last_line(log).endswith("--quantize int8 writes an ONNX file: use --file_format ONNX (got MINDIR)"), log
    log = run(export + ["--file_format", "ONNX", "--calibration_list", "Ebay_test.txt"], cwd=tmp_path, expect=1)
    assert "is a test list: calibrate on training images" in last_line(log), log
    assert os.listdir(tmp_path) == []


def test_the_cpu_chain_refuses_a_bad_precision(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    chain = os.path.join(ROOT, "scripts", "run_infer_cpu.sh")
    for env, message in [({"BACKEND": "openvino", "PRECISION": "fp16"}, "PRECISION must be fp32, bf16 or int8, got "
                                                                         "'fp16'"),
                         ({"BACKEND": "onnxruntime", "PRECISION": "bf16"}, "PRECISION=bf16 runs on BACKEND=openvino"),
                         ({"PRECISION": "int8"}, "PRECISION=int8 runs on BACKEND=onnxruntime or openvino")]:
        log = run(["bash", chain, str(model), str(tmp_path)], cwd=tmp_path, env=env, expect=2)
        assert message in log, log


# ---------------------------------------------------------------------------------------------------------
# The calibration set

def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_the_calibration_draws_a_fixed_sample_and_refuses_test_images(tmp_path):
    train = write(tmp_path / "train.txt", [f"a/{i}.jpg {i % 5}" for i in range(40)])
    write(tmp_path / "Ebay_test.txt", ["image_id class_id super_class_id path", "1 1 1 b/0.jpg", "2 1 1 b/1.jpg"])
    first = calib.read_calibration(str(tmp_path), "train.txt", size=10)
    again = calib.read_calibration(str(tmp_path), str(train), size=10)
    assert first.paths == again.paths and len(set(first.paths)) == 10
    assert all(path.startswith(str(tmp_path / "a")) for path in first.paths)
    assert len(calib.read_calibration(str(tmp_path), "train.txt", size=100).paths) == 40
    assert first.key["calibration_sha256"] == again.key["calibration_sha256"]
    write(tmp_path / "mixed.txt", ["a/0.jpg 0", "a/1.jpg 0", "b/1.jpg 1"])
    with pytest.raises(calib.CalibrationError, match=r"mixed.txt:3: b/1.jpg is a test image \(\S+Ebay_test.txt:3\)"):
        calib.read_calibration(str(tmp_path), "mixed.txt")
    write(tmp_path / "holdout.txt", ["a/0.jpg 0"])  # a list the caller names as scored (eval.py's --eval_list)
    with pytest.raises(calib.CalibrationError, match=r"train.txt:1: a/0.jpg is a test image \(\S+holdout.txt:1\)"):
        calib.read_calibration(str(tmp_path), "train.txt", exclude=("holdout.txt",))
    assert calib.test_lists(str(tmp_path), ("holdout.txt", "absent.txt")) == ["Ebay_test.txt", "holdout.txt"]
    with pytest.raises(calib.CalibrationError, match=r"--calibration_list \S+Ebay_test.txt is a test list"):
        calib.read_calibration(str(tmp_path), "Ebay_test.txt")
    with pytest.raises(calib.CalibrationError, match="--calibration_size must be >= 1, got 0"):
        calib.read_calibration(str(tmp_path), "train.txt", size=0)
    with pytest.raises(calib.CalibrationError, match="--quantize int8 needs --calibration_list"):
        calib.read_calibration(str(tmp_path), None, what="--quantize int8")


def test_a_calibration_record_is_read_again_and_refused_once_its_list_changed(tmp_path):
    write(tmp_path / "train.txt", [f"a/{i}.jpg {i % 5}" for i in range(20)])
    original = calib.read_calibration(str(tmp_path), "train.txt", size=8, eval_resize="squash")
    again = calib.calibration_from_record(original.record())
    assert again == original
    write(tmp_path / "train.txt", [f"a/{i}.jpg {i % 5}" for i in range(21)])
    with pytest.raises(calib.CalibrationError, match="which has changed since"):
        calib.calibration_from_record(original.record())
    os.remove(tmp_path / "train.txt")
    with pytest.raises(calib.CalibrationError, match="which is not there any more"):
        calib.calibration_from_record(original.record())


def test_calibration_batches_are_full_and_preprocessed_as_evaluation(tmp_path):
    import cv2

    from src.data.transforms import eval_transform

    os.makedirs(tmp_path / "a")
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(tmp_path / "a" / f"{i}.png"), rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    write(tmp_path / "train.txt", [f"a/{i}.png {i}" for i in range(5)])
    calibration = calib.read_calibration(str(tmp_path), "train.txt")
    batches = list(calibration.batches(batch_size=4, image_size=16))
    assert [b.shape for b in batches] == [(4, 3, 16, 16)] * 2
    image = cv2.cvtColor(cv2.imread(calibration.paths[4]), cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(batches[1][0], eval_transform(image, 16, "crop"), atol=1e-6)
    np.testing.assert_array_equal(batches[1][1], batches[0][0])  # filled up with the first images again


def test_bf16_is_refused_on_a_cpu_without_it():
    from src.deploy import engines

    class Core:  # OpenVINO's view of a CPU with AVX-512 but neither AVX512_BF16 nor AMX
        def get_property(self, device, name):
            return ["FP32", "INT8", "BIN", "EXPORT_IMPORT"]

    with pytest.raises(ValueError, match=r"--precision bf16: this CPU has no bfloat16 instructions \(AVX512_BF16 or "
                                         r"AMX\); use --precision fp32 or int8"):
        engines.check_bf16_cpu(Core())


def test_check_precision_names_the_engines_that_run_it():
    assert quantize.check_precision("int8", "openvino") == "int8"
    with pytest.raises(ValueError, match="--precision int8 runs on --backend onnxruntime or openvino, not mindspore"):
        quantize.check_precision("int8", "mindspore")
    with pytest.raises(ValueError, match="--precision bf16 runs on --backend openvino, not onnxruntime"):
        quantize.check_precision("bf16", "onnxruntime")
    with pytest.raises(ValueError, match="--precision must be one of fp32, bf16, int8, got 'int4'"):
        quantize.check_precision("int4", "openvino")


@pytest.mark.slow
def test_an_int8_index_searches_in_int8_with_the_cached_model(evaluations, photos, tmp_path):
    """The index takes eval.py's int8 model (same checkpoint, batch, calibration), its searches the index's."""
    retrieve = [sys.executable, os.path.join(ROOT, "retrieve.py")]
    index = str(tmp_path / "index")
    log = run(retrieve + ["index", "--ckpt_path", photos["ckpt"], "--list", "test.txt", "--dataset_path",
                          photos["data"], "--index_dir", index, "--image_size", str(SIZE), "--eval_batch_size",
                          str(BATCH), "--backend", "openvino", "--precision", "int8", *CALIBRATION, "--threads", "1",
                          "--num_parallel_workers", "1"])
    assert "int8 model: reusing" in log and "int8 model: quantized" not in log
    with open(os.path.join(index, "manifest.json")) as f:
        manifest = json.load(f)
    assert manifest["precision"] == "int8"
    assert manifest["calibration"]["list"] == os.path.join(photos["data"], "train.txt")
    assert manifest["calibration"]["size"] == 48
    with open(os.path.join(photos["data"], "test.txt")) as f:
        first = f.readline().split()[0]
    log = run(retrieve + ["search", "--index_dir", index, os.path.join(photos["data"], first), "--top_k", "1",
                          "--threads", "1"])
    assert re.search(r"features by openvino on \S+\.int8-openvino-\w+\.onnx, 1 thread\(s\), int8$", log, re.M), log
    assert "int8 model: reusing" in log and "int8 model: quantized" not in log
    assert re.search(rf"^\s+1\s+1\.0000\s+{re.escape(first)}", log, re.M), log  # the indexed image finds itself


def test_queries_take_the_index_precision_and_int8_only_from_an_int8_index():
    from src.retrieval.embed import query_settings

    manifest = {"backend": "openvino", "precision": "int8", "calibration": {"list": "train.txt"}}
    assert query_settings(manifest)["precision"] == "int8"
    assert query_settings(manifest, precision="bf16")["precision"] == "bf16"
    assert query_settings({"backend": "onnxruntime"})["precision"] == "fp32"  # an index from before precisions
    with pytest.raises(ValueError, match="--precision int8 takes the calibration of an index built with --precision "
                                         "int8; this one was built in fp32"):
        query_settings({"backend": "onnxruntime", "precision": "fp32"}, precision="int8")
    with pytest.raises(ValueError, match="--precision bf16 runs on --backend openvino, not onnxruntime"):
        query_settings(manifest, backend="onnxruntime", precision="bf16")
