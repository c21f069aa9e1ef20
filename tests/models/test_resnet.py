"""ResNet-50 v1.5: architecture (names, shapes, strides, BN settings), outputs, strict checkpoint loading."""
import mindspore as ms
import numpy as np
import pytest

from src.models.checkpoint import CheckpointError, load_backbone_checkpoint
from src.models.resnet import FEATURE_DIM, ResNet50, l2_normalize, resnet50


def expected_backbone_shapes():
    """Parameter names and shapes of ResNet-50 v1.5, written out independently of src/models/resnet.py."""
    shapes = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix, c):
        for suffix in ("moving_mean", "moving_variance", "gamma", "beta"):
            shapes[f"{prefix}.{suffix}"] = (c,)

    bn("bn1", 64)
    in_c = 64
    for stage, (blocks, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True), start=1):
        out_c = mid * 4
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes[f"{p}.conv1.weight"] = (mid, in_c, 1, 1)
            bn(f"{p}.bn1", mid)
            shapes[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            bn(f"{p}.bn2", mid)
            shapes[f"{p}.conv3.weight"] = (out_c, mid, 1, 1)
            bn(f"{p}.bn3", out_c)
            if b == 0:
                shapes[f"{p}.down_sample_layer.0.weight"] = (out_c, in_c, 1, 1)
                bn(f"{p}.down_sample_layer.1", out_c)
            in_c = out_c
    return shapes


@pytest.fixture(scope="module")
def net():
    ms.set_seed(0)
    return resnet50(class_num=10)


def test_backbone_names_and_shapes_match_resnet50_v15(net):
    got = {p.name: tuple(p.shape) for p in net.backbone.get_parameters()}
    assert got == expected_backbone_shapes()


def test_trainable_parameter_count(net):
    trainable = sum(int(np.prod(p.shape)) for p in net.backbone.trainable_params())
    assert trainable == 23_508_032
    head = {p.name: tuple(p.shape) for p in net.get_parameters()
            if p.name not in {q.name for q in net.backbone.get_parameters()}}
    assert head == {"fc.weight": (10, FEATURE_DIM), "fc.bias": (10,)}


def test_stride_on_3x3_and_same_padding(net):
    for stage, stride in zip((net.backbone.layer1, net.backbone.layer2, net.backbone.layer3,
                              net.backbone.layer4), (1, 2, 2, 2), strict=True):
        first = stage[0]
        assert first.conv1.stride == (1, 1)
        assert first.conv2.stride == (stride, stride)
        assert first.conv3.stride == (1, 1)
        assert first.down_sample_layer[0].stride == (stride, stride)
    assert net.backbone.conv1.stride == (2, 2)
    for _, cell in net.backbone.cells_and_names():
        if isinstance(cell, ms.nn.Conv2d):
            assert cell.pad_mode == "same"
            assert cell.bias is None


def test_batchnorm_settings_and_zero_gamma_on_last_bn(net):
    for name, cell in net.backbone.cells_and_names():
        if isinstance(cell, ms.nn.BatchNorm2d):
            assert cell.eps == pytest.approx(1e-4)
            # MindSpore stores 1 - momentum: moving = 0.9 * moving + 0.1 * batch statistic.
            assert cell.momentum == pytest.approx(0.1)
            gamma = cell.gamma.asnumpy()
            assert np.all(gamma == (0.0 if name.endswith("bn3") else 1.0)), name


def test_batchnorm_moving_mean_update_uses_momentum_0_9():
    from src.models.resnet import _bn
    bn = _bn(3)
    bn.set_train(True)
    x = np.random.default_rng(5).normal(loc=2.0, size=(4, 3, 5, 5)).astype(np.float32)
    bn(ms.Tensor(x))
    np.testing.assert_allclose(bn.moving_mean.asnumpy(), 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)


def test_frozen_batchnorm_normalises_with_moving_statistics_and_keeps_them():
    from src.models.resnet import _bn, freeze_batchnorm
    bn = _bn(3)
    rng = np.random.default_rng(6)
    mean, var = rng.normal(size=3).astype(np.float32), rng.uniform(0.5, 2.0, 3).astype(np.float32)
    bn.moving_mean.set_data(ms.Tensor(mean))
    bn.moving_variance.set_data(ms.Tensor(var))
    bn.gamma.set_data(ms.Tensor(np.float32([1.0, 2.0, 0.5])))
    assert freeze_batchnorm(bn) == 1
    bn.set_train(True)
    x = rng.normal(loc=2.0, size=(4, 3, 5, 5)).astype(np.float32)
    y = bn(ms.Tensor(x)).asnumpy()
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + bn.eps) * np.float32([1, 2, 0.5])[:, None, None]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)  # not the batch's statistics
    np.testing.assert_array_equal(bn.moving_mean.asnumpy(), mean)
    np.testing.assert_array_equal(bn.moving_variance.asnumpy(), var)
    # Its scale still trains: the gradient of sum(y^2) w.r.t. gamma is 2 sum(y * x_hat).
    grad = ms.grad(lambda t: (bn(t) ** 2).sum(), grad_position=None, weights=[bn.gamma])(ms.Tensor(x))[0]
    x_hat = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + bn.eps)
    np.testing.assert_allclose(grad.asnumpy(), 2 * (expected * x_hat).sum(axis=(0, 2, 3)), rtol=1e-4)


def test_freeze_bn_config_freezes_every_backbone_batchnorm():
    from src.runtime.config import load_config
    from src.training.trainer import build_training
    cfg = load_config("triplet", "CPU", overrides=["freeze_bn=true", "epoch_size=1", "backbone_padding=same"])
    setup = build_training("triplet", cfg, steps_per_epoch=2)
    layers = [c for _, c in setup.backbone.cells_and_names() if isinstance(c, ms.nn.BatchNorm2d)]
    assert len(layers) == 53 and all(c.use_batch_statistics is False for c in layers)
    cfg = load_config("triplet", "CPU", overrides=["epoch_size=1", "backbone_padding=same"])
    layers = [c for _, c in build_training("triplet", cfg, 2).backbone.cells_and_names()
              if isinstance(c, ms.nn.BatchNorm2d)]
    assert all(c.use_batch_statistics is None for c in layers)  # by default batch statistics in training


def test_output_shapes_32_and_224(net):
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32))
    assert net(x).shape == (2, 10)
    assert net.backbone(x).shape == (2, FEATURE_DIM)
    x224 = ms.Tensor(np.random.default_rng(1).normal(size=(1, 3, 224, 224)).astype(np.float32))
    feat = net.backbone(x224).asnumpy()
    assert feat.shape == (1, FEATURE_DIM)
    assert np.all(np.isfinite(feat)) and np.all(feat >= 0)  # ReLU then average pooling


def test_head_is_dense_on_backbone_features(net):
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32))
    feat = net.backbone(x).asnumpy()
    w = net.head.fc.weight.asnumpy()
    b = net.head.fc.bias.asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), feat @ w.T + b, rtol=1e-4, atol=1e-4)


def test_l2_normalize_matches_numpy_and_handles_zero():
    x = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)
    x[2] = 0
    got = l2_normalize(ms.Tensor(x)).asnumpy()
    ref = x / np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True) + 1e-12)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert np.all(got[2] == 0)


# ---- strict checkpoint loading ---------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_full_net(net, tmp_path_factory):
    """A checkpoint like a softmax-stage one: backbone + head + optimizer state."""
    path = str(tmp_path_factory.mktemp("ckpt") / "full.ckpt")
    rng = np.random.default_rng(4)
    entries = []
    for p in net.get_parameters():
        value = rng.normal(size=p.shape).astype(np.float32)
        entries.append({"name": p.name, "data": ms.Tensor(value)})
        entries.append({"name": "moments." + p.name, "data": ms.Tensor(np.zeros(p.shape, np.float32))})
    entries.append({"name": "global_step", "data": ms.Tensor(np.array([7], np.int32))})
    ms.save_checkpoint(entries, path)
    return path, {e["name"]: e["data"].asnumpy() for e in entries}


def _entries_without(values, drop=(), reshape=None):
    out = []
    for name, value in values.items():
        if name in drop:
            continue
        if reshape and name in reshape:
            value = np.zeros(reshape[name], np.float32)
        out.append({"name": name, "data": ms.Tensor(value)})
    return out


def test_load_backbone_ignores_head_and_optimizer_state(saved_full_net):
    path, values = saved_full_net
    backbone = ResNet50()
    loaded = load_backbone_checkpoint(backbone, path)
    assert set(loaded) == set(expected_backbone_shapes())
    for p in backbone.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), values[p.name])


def test_missing_backbone_key_is_an_error_even_with_moments_present(saved_full_net, tmp_path):
    _, values = saved_full_net
    path = str(tmp_path / "missing.ckpt")
    # moments.layer3.1.conv2.weight is still in the file: it must not be used as a stand-in.
    ms.save_checkpoint(_entries_without(values, drop={"layer3.1.conv2.weight"}), path)
    with pytest.raises(CheckpointError, match=r"1 backbone parameter\(s\) missing: layer3\.1\.conv2\.weight"):
        load_backbone_checkpoint(ResNet50(), path)


def test_shape_mismatch_names_parameter_and_shapes(saved_full_net, tmp_path):
    _, values = saved_full_net
    path = str(tmp_path / "mismatch.ckpt")
    ms.save_checkpoint(_entries_without(values, reshape={"layer4.0.conv1.weight": (512, 1024, 3, 3)}), path)
    with pytest.raises(CheckpointError, match=r"layer4\.0\.conv1\.weight: checkpoint \(512, 1024, 3, 3\) "
                                              r"vs backbone \(512, 1024, 1, 1\)"):
        load_backbone_checkpoint(ResNet50(), path)


def test_missing_file_and_garbage_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        load_backbone_checkpoint(ResNet50(), str(tmp_path / "nope.ckpt"))
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.ckpt"):
        load_backbone_checkpoint(ResNet50(), str(bad))
