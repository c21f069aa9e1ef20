"""The backbone's embedding head: average, max or summed global pooling, an optional Dense embedding layer and L2
normalisation; named in checkpoints, checked when loading, and carried through eval.py and export.py."""
import os
import re
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.models.checkpoint import CheckpointError, load_backbone_checkpoint, save_checkpoint_atomic
from src.models.resnet import FEATURE_DIM, ResNet50
from tests.paths import ROOT

SMALL = ["--image_size", "32", "--hflip", "false", "--num_parallel_workers", "1", "--eval_batch_size", "16"]


def same_weights(*nets):
    source = {p.name: p.data.asnumpy() for p in nets[0].get_parameters()}
    for net in nets[1:]:
        for p in net.get_parameters():
            if p.name in source:
                p.set_data(ms.Tensor(source[p.name]))
        net.set_train(False)
    nets[0].set_train(False)


def test_pooling_variants_and_the_embedding_layer():
    ms.set_seed(0)
    avg, mx, both = ResNet50(), ResNet50(pooling="max"), ResNet50(pooling="avg+max")
    emb = ResNet50(pooling="avg", embedding_size=8)
    normed = ResNet50(pooling="avg", embedding_size=8, embedding_normalize=True)
    same_weights(avg, mx, both, emb, normed)
    normed.embedding.weight.set_data(emb.embedding.weight.data)
    normed.embedding.bias.set_data(ms.Tensor(np.linspace(-1, 1, 8).astype(np.float32)))
    emb.embedding.bias.set_data(normed.embedding.bias.data)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    a, m, s = avg(x).asnumpy(), mx(x).asnumpy(), both(x).asnumpy()
    assert a.shape == m.shape == s.shape == (2, FEATURE_DIM)
    np.testing.assert_allclose(s, a + m, rtol=1e-5, atol=1e-6)
    assert (m >= a - 1e-6).all() and not np.allclose(m, a)  # the max of a map is at least its mean
    w, b = emb.embedding.weight.asnumpy(), emb.embedding.bias.asnumpy()
    e = emb(x).asnumpy()
    np.testing.assert_allclose(e, a @ w.T + b, rtol=1e-4, atol=1e-5)
    n = normed(x).asnumpy()
    np.testing.assert_allclose(n, e / np.linalg.norm(e, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert {p.name for p in emb.trainable_params()} - {p.name for p in avg.trainable_params()} == \
        {"embedding.weight", "embedding.bias"}


def test_loading_checks_the_head(tmp_path):
    with_embedding = tmp_path / "emb.ckpt"
    net = ResNet50(pooling="avg+max", embedding_size=16)
    save_checkpoint_atomic(net, str(with_embedding), net.head_record())
    with pytest.raises(CheckpointError, match=r"holds a backbone with embedding_size=16, pooling=avg\+max; this "
                                              r"network has embedding_size=0, pooling=avg: set --embedding_size 16 "
                                              r"--pooling avg\+max"):
        load_backbone_checkpoint(ResNet50(), str(with_embedding))
    load_backbone_checkpoint(ResNet50(pooling="avg+max", embedding_size=16), str(with_embedding))
    # Training from weights without an embedding layer (ImageNet's): the new layer keeps its initialisation.
    plain = tmp_path / "plain.ckpt"
    ms.save_checkpoint(ResNet50(), str(plain))
    fresh = ResNet50(pooling="max", embedding_size=16)
    before = fresh.embedding.weight.asnumpy().copy()
    load_backbone_checkpoint(fresh, str(plain), new_head=True)
    np.testing.assert_array_equal(fresh.embedding.weight.asnumpy(), before)
    with pytest.raises(CheckpointError, match="embedding_size=0; this network has embedding_size=16"):
        load_backbone_checkpoint(ResNet50(embedding_size=16), str(plain))  # evaluation needs the trained layer
    with pytest.raises(CheckpointError, match="set --embedding_size 16"):
        load_backbone_checkpoint(ResNet50(embedding_size=8), str(with_embedding), new_head=True)


def run(script, *args, expect=0):
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:]
    return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_a_512d_style_head_through_train_eval_and_export(tmp_path):
    data = make_retrieval_dataset(str(tmp_path / "data"))
    head = ["--pooling", "avg+max", "--embedding_size", "16", "--embedding_normalize", "true"]
    lines = run("train.py", "--loss_name", "proxyanchor", "--dataset_path", data, "--class_num", "8", "--batch_size",
                "8", "--epoch_size", "1", "--output_dir", str(tmp_path / "out"), *head, *SMALL)
    ckpt = re.search(r"final checkpoint: (\S+\.ckpt)", "\n".join(lines)).group(1)
    saved = ms.load_checkpoint(ckpt)
    assert saved["embedding.weight"].shape == (16, FEATURE_DIM) and saved["pooling"] == "avg+max"
    assert saved["proxyanchor.proxies"].shape == (8, 16)  # the proxies live in the embedding space
    features = tmp_path / "f.npz"
    run("eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path", ckpt, "--save_features",
        str(features), *head, *SMALL)
    f = np.load(features)["features"]
    assert f.shape == (32, 16)
    lines = run("eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path", ckpt, *SMALL, expect=1)
    assert re.search(r"ERROR .*set --embedding_size 16 --pooling avg\+max --embedding_normalize true$", lines[-1])
    lines = run("export.py", "--ckpt_file", ckpt, "--file_name", str(tmp_path / "net"), "--image_size", "32", *head)
    assert any("output feature (1, 16)" in line for line in lines), lines
