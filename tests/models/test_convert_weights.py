"""torchvision ResNet-50 weights read without PyTorch, converted, and run: features equal an independent numpy
forward of torchvision's network (bench/torchvision_reference.py) in both padding conventions."""
import os
import re
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest

from bench.torchvision_reference import (
    global_call,
    random_state_dict,
    resnet50_forward,
    write_pth,
    write_safetensors,
)
from src.models.checkpoint import CheckpointError, checkpoint_padding, load_strict, resolve_padding
from src.models.convert_weights import ConversionError, backbone_shapes, convert, our_name
from src.models.resnet import BN_EPS, ResNet50
from src.models.torch_weights import WeightFileError, read_pth, read_safetensors, read_weights
from tests.paths import ROOT


def run(args, expect=0):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def state():
    return random_state_dict(seed=3)


@pytest.fixture(scope="module")
def converted(state, tmp_path_factory):
    """The state dict written as a real .pth and converted by the command line."""
    folder = tmp_path_factory.mktemp("convert")
    pth, ckpt = folder / "resnet50-test.pth", folder / "resnet50_tv.ckpt"
    write_pth(pth, state)
    lines = run(["-m", "src.models.convert_weights", str(pth), str(ckpt)])
    assert lines[-1] == f"converted: {ckpt}"
    assert any("320 tensors -> 265 parameters (53 num_batches_tracked dropped, fc left out)" in line
               for line in lines)
    return ckpt


def test_pth_and_safetensors_read_back_exactly(state, tmp_path):
    write_pth(tmp_path / "w.pth", state)
    write_safetensors(tmp_path / "w.safetensors", state)
    for back in (read_pth(str(tmp_path / "w.pth")), read_weights(str(tmp_path / "w.safetensors"))):
        assert list(back) == list(state)
        for name, value in state.items():
            assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
            np.testing.assert_array_equal(back[name], value)


def test_a_strided_view_and_half_precision_are_rebuilt(tmp_path):
    # A transposed (non-contiguous) tensor: storage in memory order, strides as written.
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_pth(tmp_path / "t.pth", {"t": base.T, "h": np.linspace(-1, 1, 5).astype(np.float16)})
    back = read_pth(str(tmp_path / "t.pth"))
    np.testing.assert_array_equal(back["t"], base.T)
    np.testing.assert_array_equal(back["h"], np.linspace(-1, 1, 5).astype(np.float16))


@pytest.mark.parametrize("module, name", [("os", "system"), ("builtins", "eval"), ("subprocess", "Popen"),
                                          ("torch", "load")])
def test_a_pickle_asking_for_other_globals_is_refused(tmp_path, module, name):
    path = tmp_path / "evil.pth"
    write_pth(path, {"w": np.ones(2, np.float32)}, extra=global_call(module, name, "touch pwned"))
    with pytest.raises(WeightFileError, match=rf"refused: its pickle asks for {module}\.{name}"):
        read_pth(str(path))
    assert not os.path.exists("pwned")


def test_unreadable_files_are_named(tmp_path):
    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(b"\x80\x02\x8a\x0alp\xfc\x9cF\xf9 j\xa8P\x19.")  # the legacy format's magic number
    with pytest.raises(WeightFileError, match=r"legacy\.pth: not a zip archive: only the torch\.save format"):
        read_pth(str(legacy))
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
        z.writestr("archive/version", "3\n")
    with pytest.raises(WeightFileError, match="expected one data.pkl in the archive, found 0"):
        read_pth(str(tmp_path / "nopkl.pth"))
    (tmp_path / "short.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(WeightFileError, match="too short for a safetensors file"):
        read_safetensors(str(tmp_path / "short.safetensors"))
    with pytest.raises(FileNotFoundError, match="weight file not found"):
        read_weights(str(tmp_path / "none.pth"))


def test_every_name_maps():
    assert our_name("bn1.running_var") == "bn1.moving_variance"
    assert our_name("layer3.0.downsample.0.weight") == "layer3.0.down_sample_layer.0.weight"
    assert our_name("layer3.0.downsample.1.weight") == "layer3.0.down_sample_layer.1.gamma"
    assert our_name("layer4.2.bn3.bias") == "layer4.2.bn3.beta"
    assert our_name("layer1.1.bn2.num_batches_tracked") is None
    with pytest.raises(KeyError):
        our_name("layer1.0.se.fc1.weight")


def fit(state, tmp_path, name):
    path = tmp_path / name
    write_pth(path, state)
    return str(path)


def test_extra_missing_and_misshaped_tensors_are_named(state, tmp_path):
    shapes = backbone_shapes()
    extra = dict(state, **{"layer1.0.se.weight": np.ones(3, np.float32)})
    with pytest.raises(ConversionError, match=r"1 tensor\(s\) with no counterpart in this ResNet-50: "
                                              r"layer1\.0\.se\.weight"):
        convert(extra, shapes, source="x.pth")
    missing = {k: v for k, v in state.items() if k != "layer2.1.bn2.running_var"}
    with pytest.raises(ConversionError, match=r"1 tensor\(s\) missing: layer2\.1\.bn2\.running_var"):
        convert(missing, shapes)
    bad = dict(state, **{"layer4.0.conv2.weight": np.ones((512, 512, 1, 1), np.float32)})
    with pytest.raises(ConversionError, match=r"layer4\.0\.conv2\.weight \(512, 512, 1, 1\) \(ours: "
                                              r"layer4\.0\.conv2\.weight \(512, 512, 3, 3\)\)"):
        convert(bad, shapes)
    # The command line: the same message as one ERROR line, and no output file.
    out = tmp_path / "out.ckpt"
    lines = run(["-m", "src.models.convert_weights", fit(missing, tmp_path, "m.pth"), str(out)], expect=1)
    assert re.search(r"ERROR .*ConversionError: .*m\.pth is not torchvision's ResNet-50: 1 tensor\(s\) missing: "
                     r"layer2\.1\.bn2\.running_var$", lines[-1])
    assert not out.exists()


def test_fc_is_kept_on_request(state):
    converted = convert(state, backbone_shapes(), with_fc=True)
    assert converted["fc.weight"].shape == (1000, 2048) and converted["fc.bias"].shape == (1000,)
    assert "fc.weight" not in convert(state, backbone_shapes())


def features(ckpt, padding, images):
    net = ResNet50(padding)
    load_strict(net, str(ckpt), what="backbone")
    net.set_train(False)
    return net(ms.Tensor(images)).asnumpy()


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_converted_features_equal_the_reference_in_each_convention(state, converted, padding):
    """Random weights and images: ours (float32) against the numpy forward (float64) of the same convention,
    within 1e-4 of the largest feature; the other convention's reference differs by far more."""
    images = np.random.default_rng(7).standard_normal((2, 3, 32, 32)).astype(np.float32)
    got = features(converted, padding, images)
    scale = np.abs(resnet50_forward(state, images, padding, BN_EPS[padding])).max()
    expected = resnet50_forward(state, images, padding, BN_EPS[padding])
    error = np.abs(got - expected).max() / scale
    print(f"{padding}: max |ours - reference| / max |reference| = {error:.2e}")
    assert error < 1e-4
    other = "same" if padding == "symmetric" else "symmetric"
    assert np.abs(got - resnet50_forward(state, images, other, BN_EPS[padding])).max() / scale > 1e-2


def test_the_checkpoint_records_its_convention_and_loaders_follow_it(converted, tmp_path):
    assert checkpoint_padding(str(converted)) == "symmetric"
    assert resolve_padding("auto", [str(converted)]) == "symmetric"
    assert resolve_padding("symmetric", [None, str(converted)]) == "symmetric"
    with pytest.raises(CheckpointError, match=r"holds weights for backbone_padding=symmetric, but this run has "
                                              r"backbone_padding=same: set --backbone_padding symmetric"):
        resolve_padding("same", [str(converted)])
    hub_like = tmp_path / "hub.ckpt"  # a checkpoint that records nothing (MindSpore Hub's): "same"
    ms.save_checkpoint(ResNet50(), str(hub_like))
    assert checkpoint_padding(str(hub_like)) is None
    assert resolve_padding("auto", [str(hub_like)]) == "same"
    assert resolve_padding("auto", []) == "same"
    with pytest.raises(CheckpointError, match="backbone_padding must be auto, same or symmetric"):
        resolve_padding("valid", [])


@pytest.mark.slow
def test_the_recipe_starts_from_converted_weights(converted, tmp_path):
    """train.py from the converted file trains a symmetric backbone and says so in its checkpoints; eval.py and
    export.py pick the convention up from them; a conflicting explicit setting is one error line."""
    from src.data.demo_data import make_retrieval_dataset

    data = make_retrieval_dataset(str(tmp_path / "data"))
    small = ["--image_size", "32", "--num_parallel_workers", "1", "--eval_batch_size", "16", "--hflip", "false"]
    out = tmp_path / "out"
    lines = run(["train.py", "--loss_name", "triplet", "--dataset_path", data, "--ckpt_path", str(converted),
                 "--output_dir", str(out), "--batch_size", "6", "--epoch_size", "1", *small])
    final = re.search(r"final checkpoint: (\S+\.ckpt)", "\n".join(lines)).group(1)
    assert checkpoint_padding(final) == "symmetric"
    assert "backbone_padding: symmetric" in (out / "config.yaml").read_text()
    lines = run(["eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path", final, *small])
    assert any(line.startswith("eval_recall: ") for line in lines)
    lines = run(["eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path", final,
                 "--backbone_padding", "same", *small], expect=1)
    assert re.search(r"ERROR .*holds weights for backbone_padding=symmetric, .* set --backbone_padding symmetric",
                     lines[-1])
    lines = run(["export.py", "--ckpt_file", final, "--file_name", str(tmp_path / "net"), "--image_size", "32"])
    assert lines[-1] == f"exported: {tmp_path / 'net.mindir'}"
