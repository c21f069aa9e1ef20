"""export.py: exported MINDIR / ONNX files compute the checkpointed backbone's features; AIR and bad input are
refused with one-line errors."""
import os
import re
import stat
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.deploy.export import INPUT_NAME, OUTPUT_NAME, build_feature_net, export_network
from src.evaluation.metrics import l2_normalize_rows
from tests.paths import ROOT

SIZE = 32

pytestmark = pytest.mark.slow


def start(args):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, expect=0):
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {proc.args}:\n{output[-4000:]}"
    return output


def run(args, expect=0):
    return finish(start(args), expect)


def export_args(*args):
    return [sys.executable, os.path.join(ROOT, "export.py"), "--image_size", str(SIZE), *args]


def export(*args, expect=0):
    return run(export_args(*args), expect)


def exported_path(log):
    return re.search(r"^exported: (.+)$", log, re.M).group(1)


@pytest.fixture(scope="module")
def exported(untrained_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    common = ("--ckpt_file", untrained_checkpoint, "--file_name")
    # Run side by side: each export is mostly one busy core.
    procs = {"mindir": start(export_args(*common, str(out / "plain"))),
             "mindir_l2": start(export_args(*common, str(out / "l2"), "--l2_normalize")),
             "onnx_l2": start(export_args(*common, str(out / "l2"), "--file_format", "onnx", "--l2_normalize"))}
    try:
        return {name: exported_path(finish(proc)) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:  # another export failed: do not leave this one running
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(3, 1, 3, SIZE, SIZE)).astype(np.float32)


@pytest.fixture(scope="module")
def graph_mode():
    old = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=old)


@pytest.fixture(scope="module")
def reference(untrained_checkpoint, images, graph_mode):
    """Features of the checkpointed backbone (inference mode), one image at a time like the exported batch-1 graph."""
    net = build_feature_net(untrained_checkpoint)
    return np.concatenate([net(ms.Tensor(x)).asnumpy() for x in images])


def run_mindir(path, images):
    net = nn.GraphCell(ms.load(path))
    return np.concatenate([net(ms.Tensor(x)).asnumpy() for x in images])


def test_files_are_named_after_the_format(exported):
    assert exported["mindir"].endswith("plain.mindir") and os.path.isfile(exported["mindir"])
    assert exported["onnx_l2"].endswith("l2.onnx") and os.path.isfile(exported["onnx_l2"])
    assert not [name for name in os.listdir(os.path.dirname(exported["mindir"])) if ".tmp" in name]
    # The permissions MindSpore's exporters give their files (ms.onnx.export keeps the temporary file's).
    assert stat.S_IMODE(os.stat(exported["mindir"]).st_mode) == stat.S_IRUSR
    assert stat.S_IMODE(os.stat(exported["onnx_l2"]).st_mode) == stat.S_IRUSR | stat.S_IWUSR


@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_a_failed_export_keeps_the_previous_file_and_leaves_nothing(tmp_path, monkeypatch, file_format):
    written = []

    def failing(net, *inputs, file_name, **kwargs):
        with open(file_name, "wb") as f:  # the name the exporter is given already ends with the format's suffix
            f.write(b"half a graph")
        written.append(file_name)
        raise RuntimeError("export failed")

    monkeypatch.setattr(ms.onnx if file_format == "ONNX" else ms, "export", failing)
    path = tmp_path / ("net.onnx" if file_format == "ONNX" else "net.mindir")
    path.write_bytes(b"previous export")
    with pytest.raises(RuntimeError, match="export failed"):
        export_network(None, str(tmp_path / "net"), file_format, image_size=SIZE)
    assert written and written[0].endswith(path.suffix) and os.path.dirname(written[0]) == str(tmp_path)
    assert path.read_bytes() == b"previous export"
    assert os.listdir(tmp_path) == [path.name]


def test_mindir_gives_the_checkpointed_features(exported, images, reference, graph_mode):
    features = run_mindir(exported["mindir"], images)
    assert features.shape == (3, 2048)
    diff = float(np.abs(features - reference).max())
    print(f"MINDIR vs checkpointed network: max abs diff {diff:.3g} (feature scale {np.abs(reference).max():.3g})")
    assert diff < 1e-5


def test_l2_normalized_mindir_gives_unit_rows_equal_to_normalized_features(exported, images, reference, graph_mode):
    features = run_mindir(exported["mindir_l2"], images)
    np.testing.assert_allclose(np.linalg.norm(features.astype(np.float64), axis=1), 1.0, atol=1e-5)
    diff = float(np.abs(features - l2_normalize_rows(reference)).max())
    print(f"MINDIR --l2_normalize vs l2_normalize(features): max abs diff {diff:.3g}")
    assert diff < 1e-5


def test_onnx_in_onnxruntime_matches(exported, images, reference):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (requirements-dev.txt)")
    session = ort.InferenceSession(exported["onnx_l2"], providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [OUTPUT_NAME]
    features = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x})[0] for x in images])
    diff = float(np.abs(features - l2_normalize_rows(reference)).max())
    print(f"ONNX (onnxruntime) --l2_normalize vs l2_normalize(features): max abs diff {diff:.3g}")
    assert diff < 1e-4


def one_line_error(log):
    errors = [line for line in log.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in log, log[-3000:]
    return errors[0]


def test_air_is_refused_off_ascend(untrained_checkpoint, tmp_path):
    log = export("--ckpt_file", untrained_checkpoint, "--file_name", str(tmp_path / "net"), "--file_format", "AIR",
                 expect=1)
    assert re.search(r"AIR export needs --device_target Ascend \(got CPU\)", one_line_error(log))
    assert os.listdir(tmp_path) == []


def test_missing_checkpoint_is_a_one_line_error(tmp_path):
    missing = str(tmp_path / "nowhere.ckpt")
    log = export("--ckpt_file", missing, "--file_name", str(tmp_path / "net"), expect=1)
    assert f"checkpoint not found: {missing}" in one_line_error(log)
    assert os.listdir(tmp_path) == []
