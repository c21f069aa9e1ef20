"""The real entry points (train.py, eval.py, scripts/) run as subprocesses on a tiny generated problem."""
import os
import re
import shutil
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.evaluation.bootstrap import interval_lines, per_query_scores
from src.training.history import read_history
from tests.paths import ROOT

SMALL = ["--image_size", "32", "--hflip", "false", "--num_parallel_workers", "1", "--eval_batch_size", "16"]

pytestmark = pytest.mark.slow


def run(args, cwd=None, env=None, expect=0, timeout=600):
    full_env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    proc = subprocess.run(args, cwd=cwd or ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if expect is not None:
        assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}) from {args}:\n{output[-4000:]}"
    return output


def python(script, *args, **kwargs):
    return run([sys.executable, os.path.join(ROOT, script), *args], **kwargs)


def epoch_mean_losses(log):
    return [float(x) for x in re.findall(r"epoch: \d+/\d+ done, mean loss ([0-9.eE+-]+)", log)]


def eval_recall(log):
    return float(re.search(r"^eval_recall: ([0-9.]+)$", log, re.M).group(1))


def final_checkpoint(log):
    return re.search(r"final checkpoint: (\S+\.ckpt)", log).group(1)


def load_values(path):
    """The tensors of a checkpoint (its string entries, such as backbone_padding, left out)."""
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items() if not isinstance(v, str)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")))


def triplet_options(data):
    return ["--loss_name", "triplet", "--dataset_path", data, "--batch_size", "6", "--epoch_size", "2",
            "--save_checkpoint_epochs", "1", "--keep_checkpoint_max", "5", *SMALL]


@pytest.fixture(scope="module")
def recipe(data, untrained_checkpoint, tmp_path_factory):
    """softmax (from the untrained backbone) -> triplet -> quadruplet, as the seed's two-stage recipe."""
    out = tmp_path_factory.mktemp("recipe")
    logs = {}
    logs["untrained"] = python("eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path",
                               untrained_checkpoint, *SMALL)
    logs["softmax"] = python("train.py", "--loss_name", "softmax", "--dataset_path", data, "--ckpt_path",
                             untrained_checkpoint, "--output_dir", str(out / "softmax"), "--class_num", "8",
                             "--batch_size", "12", "--epoch_size", "8", "--lr_max", "0.01", "--lr_decay_mode", "const",
                             "--run_eval", "--eval_list", "test.txt", "--eval_interval", "4", *SMALL)
    # Two epochs with a checkpoint after each: the resume test continues this run from epoch 1.
    logs["triplet"] = python("train.py", *triplet_options(data), "--ckpt_path", final_checkpoint(logs["softmax"]),
                             "--output_dir", str(out / "triplet"))
    logs["quadruplet"] = python("train.py", "--loss_name", "quadruplet", "--dataset_path", data, "--ckpt_path",
                                final_checkpoint(logs["triplet"]), "--output_dir", str(out / "quadruplet"),
                                "--batch_size", "8", "--epoch_size", "1", *SMALL)
    features = str(out / "features.npz")
    logs["eval"] = python("eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path",
                          final_checkpoint(logs["quadruplet"]), "--save_features", features, "--ci", *SMALL)
    return out, logs, features


def test_softmax_training_lowers_the_loss_and_beats_the_untrained_backbone(recipe):
    out, logs, _ = recipe
    losses = epoch_mean_losses(logs["softmax"])
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < losses[0] - 0.2, losses
    untrained = eval_recall(logs["untrained"])
    best = float(re.search(r"best eval_recall: ([0-9.]+)", logs["softmax"]).group(1))
    assert best >= untrained + 0.05, (untrained, best)
    assert os.path.isfile(out / "softmax" / "ckpt" / "resnet50_softmax-best.ckpt")
    assert os.path.isfile(out / "softmax" / "config.yaml")


def test_history_csv_has_one_row_per_epoch_with_the_logged_values(recipe):
    out, logs, _ = recipe
    rows = read_history(out / "softmax" / "history.csv")
    logged = re.findall(r"epoch: (\d+)/8 done, mean loss ([0-9.]+), last loss [0-9.]+, lr ([0-9.]+), "
                        r"epoch time [0-9.]+ s, ([0-9.]+) img/s", logs["softmax"])
    evals = dict((int(e), (r, m)) for e, r, m in
                 re.findall(r"epoch: (\d+) eval_recall: ([0-9.]+) \(MAP@R ([0-9.]+)", logs["softmax"]))
    assert len(logged) == 8 and sorted(evals) == [4, 8]  # eval_interval 4
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, 9)]
    for row, (epoch, loss, lr, rate) in zip(rows, logged, strict=True):
        recall, map_r = evals.get(int(epoch), ("", ""))
        assert (row["epoch"], row["mean_loss"], row["lr"], row["images_per_s"], row["recall_at_1"],
                row["map_at_r"]) == (epoch, loss, lr, rate, recall, map_r)
    assert float(rows[-1]["lr"]) == pytest.approx(0.01)


def test_metric_stages_write_backbone_checkpoints_named_after_the_loss(recipe):
    out, logs, _ = recipe
    for stage, epoch, steps in (("triplet", 2, 16), ("quadruplet", 1, 6)):
        # 48 images: triplet 16 triplets / 2 per batch = 8 steps an epoch; P x K 48 / 8 = 6 steps.
        assert final_checkpoint(logs[stage]).endswith(f"resnet50_{stage}-{epoch}_{steps}.ckpt")
        keys = load_values(final_checkpoint(logs[stage]))
        assert "fc.weight" not in keys and "conv1.weight" in keys and "moments.conv1.weight" in keys


def test_eval_metrics_equal_brute_force_on_saved_features(recipe):
    _, logs, features = recipe
    saved = np.load(features)
    feats, labels = saved["features"].astype(np.float64), saved["labels"]
    assert feats.shape == (32, 2048) and len(saved["paths"]) == 32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-5)
    sim = feats @ feats.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")[:, :-1]  # the query itself sorts last
    hits = labels[order] == labels[:, None]
    table = dict(re.findall(r"^(recall@\d+|map@r|r_precision)\s+([0-9.]+)$", logs["eval"], re.M))
    assert float(table["recall@1"]) == pytest.approx(hits[:, 0].mean(), abs=1e-4)
    assert float(table["recall@10"]) == pytest.approx(hits[:, :10].any(1).mean(), abs=1e-4)
    r = hits.sum(1)
    map_r = np.mean([np.sum(hits[i, :r[i]] * np.cumsum(hits[i, :r[i]]) / np.arange(1, r[i] + 1)) / r[i]
                     for i in range(len(r))])
    assert float(table["map@r"]) == pytest.approx(map_r, abs=1e-4)
    assert eval_recall(logs["eval"]) == pytest.approx(hits[:, 0].mean(), abs=1e-4)
    # --ci: the intervals of the bootstrap over the test classes, around the printed values
    lines = interval_lines(per_query_scores(saved["features"], labels, normalize=False), labels)
    assert [line for line in logs["eval"].splitlines() if "_ci95 " in line] == lines
    for line, name in zip(lines, ("recall@1", "map@r"), strict=True):
        value, low, high = map(float, re.fullmatch(rf"{name}_ci95  ([0-9.]+) \[([0-9.]+), ([0-9.]+)\]", line).groups())
        assert value == pytest.approx(float(table[name]), abs=1e-4) and low <= value <= high


def test_resume_after_epoch_1_matches_an_uninterrupted_run_bit_for_bit(data, recipe, tmp_path):
    out, _, _ = recipe  # its triplet stage: 2 epochs from the softmax stage, a checkpoint after each
    full_dir = out / "triplet" / "ckpt"
    after_epoch_1 = full_dir / "resnet50_triplet-1_8.ckpt"
    log = python("train.py", *triplet_options(data), "--resume", str(after_epoch_1), "--output_dir",
                 str(tmp_path / "resumed"))
    assert "resumed from" in log and "epoch: 1/2" not in log
    full = load_values(full_dir / "resnet50_triplet-2_16.ckpt")
    resumed = load_values(tmp_path / "resumed" / "ckpt" / "resnet50_triplet-2_16.ckpt")
    assert full.keys() == resumed.keys()
    different = [k for k in full if not np.array_equal(full[k], resumed[k])]
    assert different == []
    start = load_values(after_epoch_1)
    assert not np.array_equal(start["conv1.weight"], full["conv1.weight"])  # epoch 2 did train


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(data, recipe, tmp_path):
    # Continue the recipe's softmax run for one more epoch, in a folder holding its last checkpoint, from a copy of
    # that state whose head holds a NaN (as after a numerical blow-up; a NaN inside the backbone would be zeroed by
    # its ReLUs): the first step's loss is NaN.
    _, logs, _ = recipe
    source = final_checkpoint(logs["softmax"])
    epoch, step = (int(x) for x in re.search(r"-(\d+)_(\d+)\.ckpt$", source).groups())  # step: global
    (tmp_path / "ckpt").mkdir()
    good = tmp_path / "ckpt" / os.path.basename(source)
    shutil.copyfile(source, good)
    before = good.read_bytes()
    values = load_values(good)
    values["fc.bias"][0] = np.nan
    poisoned = str(tmp_path / "poisoned.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in values.items()], poisoned)
    log = python("train.py", "--loss_name", "softmax", "--dataset_path", data, "--class_num", "8", "--batch_size",
                 "12", "--output_dir", str(tmp_path), "--save_checkpoint_epochs", "1", "--epoch_size", str(epoch + 1),
                 "--lr_max", "0.01", "--lr_decay_mode", "const", *SMALL, "--resume", poisoned, expect=1)
    error = [line for line in log.splitlines() if "ERROR" in line]
    assert len(error) == 1, log
    assert re.search(rf"loss is nan at epoch {epoch + 1} step 1 \(global step {step + 1}\)", error[0]), error
    assert "Traceback" not in log
    assert sorted(os.listdir(tmp_path / "ckpt")) == [good.name]  # nothing new, nothing half
    assert good.read_bytes() == before


def test_wrong_checkpoints_give_one_line_errors(data, recipe, tmp_path):
    out, logs, _ = recipe
    softmax_ckpt = final_checkpoint(logs["softmax"])
    # Resuming the 8-class softmax run with a 5-class head: a head-size mismatch.
    log = python("train.py", "--loss_name", "softmax", "--dataset_path", data, "--class_num", "9", "--batch_size",
                 "12", "--epoch_size", "9", "--lr_max", "0.01", "--lr_decay_mode", "const", "--resume", softmax_ckpt,
                 "--output_dir", str(tmp_path / "x"), *SMALL, expect=1)
    assert re.search(r"ERROR .*fc\.weight: checkpoint \(8, 2048\) vs training state \(9, 2048\)", log), log
    assert "Traceback" not in log
    values = load_values(final_checkpoint(logs["triplet"]))
    broken = str(tmp_path / "broken.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in values.items() if k != "layer2.1.conv2.weight"],
                       broken)
    log = python("eval.py", "--dataset_path", data, "--eval_list", "test.txt", "--ckpt_path", broken, *SMALL, expect=1)
    assert re.search(r"ERROR .*missing: layer2\.1\.conv2\.weight", log)
    assert "Traceback" not in log


@pytest.mark.parametrize("bad", [["--loss_name", "contrastive", "--device_target", "CPU"],
                                 ["--loss_name", "triplet", "--device_target", "TPU"]])
def test_unknown_loss_or_device_is_a_usage_error(data, bad):
    log = python("train.py", "--dataset_path", data, *bad, expect=2)
    assert "usage:" in log and "invalid choice" in log


def test_scripts_check_their_arguments(data, tmp_path):
    log = run(["bash", os.path.join(ROOT, "scripts", "run_standalone_train.sh"), data, "none", "0"], cwd=tmp_path,
              expect=2)
    assert "usage: bash run_standalone_train.sh [DATASET_PATH] [CKPT_PATH] [DEVICE_ID] [LOSS_NAME]" in log
    log = run(["bash", os.path.join(ROOT, "scripts", "run_eval_gpu.sh"), str(tmp_path / "nowhere"), "x.ckpt", "0"],
              cwd=tmp_path, expect=2)
    assert "DATASET_PATH" in log and "is not a folder" in log
    log = run(["bash", os.path.join(ROOT, "scripts", "run_standalone_train_gpu.sh"), data, "0", "ranking", "none"],
              cwd=tmp_path, expect=2)
    assert "LOSS_NAME must be" in log


def test_standalone_script_on_cpu_writes_train_folder_and_returns_status(data, tmp_path):
    env = {"DEVICE_TARGET": "CPU"}
    run(["bash", os.path.join(ROOT, "scripts", "run_standalone_train_gpu.sh"), data, "0", "quadruplet", "none",
         "--batch_size", "8", "--epoch_size", "1", *SMALL], cwd=tmp_path, env=env)
    assert os.path.isfile(tmp_path / "train" / "ckpt" / "resnet50_quadruplet-1_6.ckpt")
    assert "epoch: 1/1 done" in (tmp_path / "train" / "log.txt").read_text()
    # A failing run's status comes back through the script.
    log = run(["bash", os.path.join(ROOT, "scripts", "run_eval_gpu.sh"), data,
               str(tmp_path / "train" / "config.yaml"), "0", "--eval_list", "test.txt"], cwd=tmp_path, env=env,
              expect=1)
    assert "not a readable MindSpore checkpoint" in log


def test_distributed_cpu_msrun_two_workers_keep_identical_weights(data, tmp_path):
    """2 CPU workers under msrun: after training, every trainable parameter is identical on both ranks.

    The BatchNorm moving statistics differ (each rank normalises its own half-batch), and for the
    same reason the distributed loss is not the loss of one process on the global batch: BN's
    batch statistics over 6 images per rank differ from those over 12, so the forward pass differs.
    """
    run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train_cpu.sh"), data, "triplet", "none",
         "--batch_size", "6", "--epoch_size", "1", "--save_rank_checkpoint", *SMALL], cwd=tmp_path,
        env={"MASTER_PORT": str(8200 + os.getpid() % 500)})
    out = tmp_path / "train_parallel"
    assert sorted(p for p in os.listdir(out / "ckpt")) == ["resnet50_triplet-1_4.ckpt"]  # rank 0 alone writes
    r0, r1 = load_values(out / "rank_0" / "final.ckpt"), load_values(out / "rank_1" / "final.ckpt")
    trainable = [k for k in r0 if "moving_" not in k]
    assert len(trainable) == 159
    assert [k for k in trainable if not np.array_equal(r0[k], r1[k])] == []
    assert any(not np.array_equal(r0[k], r1[k]) for k in r0 if "moving_" in k)
    for rank in (0, 1):
        assert "epoch: 1/1 done" in (out / f"worker_{rank}.log").read_text()


class NetworkNamespace:
    """A second host on this machine: a network namespace joined to this one by a veth pair (root needed).
    Inside it, this namespace's end (`host_addr`) is not a local address, as node 0 is not on another node."""

    def __init__(self, tag):
        self.name, self.veth = f"mlt{tag}", f"mlt{tag}h"
        subnet = 10 + tag % 200
        self.host_addr, self.inner_addr = f"10.77.{subnet}.1", f"10.77.{subnet}.2"

    def __enter__(self):
        inner = f"mlt{self.name[3:]}n"
        inside = ["ip", "netns", "exec", self.name]
        steps = [["ip", "netns", "add", self.name],
                 ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", inner],
                 ["ip", "link", "set", inner, "netns", self.name],
                 ["ip", "addr", "add", f"{self.host_addr}/24", "dev", self.veth],
                 ["ip", "link", "set", self.veth, "up"],
                 [*inside, "ip", "addr", "add", f"{self.inner_addr}/24", "dev", inner],
                 [*inside, "ip", "link", "set", inner, "up"],
                 [*inside, "ip", "link", "set", "lo", "up"]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True)
            if done.returncode:
                self.__exit__()
                raise RuntimeError(f"cannot make a network namespace ({' '.join(step)}): {done.stderr.strip()}")
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def test_two_nodes_under_msrun_keep_identical_weights(data, tmp_path):
    """Two msrun launches as node 0 and node 1 (one CPU worker each): node 1 in a network namespace, because
    msrun starts a scheduler on every node whose MASTER_ADDR is a local address (two launches on 127.0.0.1
    both start one, and the second fails on the port)."""
    script = os.path.join(ROOT, "scripts", "run_distribute_train_cpu.sh")
    args = ["bash", script, data, "triplet", "none", "--batch_size", "6", "--epoch_size", "1",
            "--save_rank_checkpoint", *SMALL]
    with NetworkNamespace(os.getpid() % 10000) as net:
        env = dict(os.environ, GLOG_v="3", PYTHONUNBUFFERED="1", WORKER_NUM="1", NODE_NUM="2",
                   MASTER_ADDR=net.host_addr, MASTER_PORT=str(8700 + os.getpid() % 500))
        nodes = []
        for rank in (0, 1):
            (tmp_path / f"node{rank}").mkdir()
            prefix = [] if rank == 0 else ["ip", "netns", "exec", net.name]
            nodes.append(subprocess.Popen(prefix + args, cwd=tmp_path / f"node{rank}",
                                          env=dict(env, NODE_RANK=str(rank)), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        outputs = [node.communicate(timeout=900)[0] for node in nodes]
    for rank, (node, output) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank} exit {node.returncode}:\n{output[-4000:]}"
        assert f"node {rank} of 2: ranks {rank}-{rank} of 2, scheduler {net.host_addr}:" in output
    node0, node1 = tmp_path / "node0" / "train_parallel", tmp_path / "node1" / "train_parallel"
    assert os.listdir(node0 / "ckpt") == ["resnet50_triplet-1_4.ckpt"]  # rank 0 alone writes, on node 0
    assert not (node1 / "ckpt").exists() and not (node1 / "scheduler.log").exists()  # node 1 only has a worker
    assert "epoch: 1/1 done" in (node1 / "worker_1.log").read_text()
    r0, r1 = load_values(node0 / "rank_0" / "final.ckpt"), load_values(node1 / "rank_1" / "final.ckpt")
    trainable = [k for k in r0 if "moving_" not in k]
    assert len(trainable) == 159
    assert [k for k in trainable if not np.array_equal(r0[k], r1[k])] == []
    assert any(not np.array_equal(r0[k], r1[k]) for k in r0 if "moving_" in k)  # two ranks, two halves of a batch


def test_several_ascend_servers_start_their_own_ranks(data, tmp_path):
    """The rank-table launcher on server 2 of 2 (RANK_START=2, DEVICE_NUM=2, RANK_SIZE=4): ranks 2 and 3 start,
    each in its own folder; on this machine without Ascend each ends with the device error, and the script
    returns the first failing rank's status."""
    table = tmp_path / "rank_table.json"
    table.write_text("{}")
    log = run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"), str(table), data, "none", "triplet"],
              cwd=tmp_path, env={"DEVICE_NUM": "2", "RANK_SIZE": "4", "RANK_START": "2"}, expect=1)
    assert sorted(os.listdir(tmp_path)) == ["rank_table.json", "train_parallel2", "train_parallel3"]
    for rank in (2, 3):
        assert f"rank {rank} failed with exit status 1, see train_parallel{rank}/log.txt" in log
        last = (tmp_path / f"train_parallel{rank}" / "log.txt").read_text().splitlines()[-1]
        assert "DeviceUnavailableError: --device_target Ascend" in last
    log = run(["bash", os.path.join(ROOT, "scripts", "run_distribute_train.sh"), str(table), data, "none", "triplet"],
              cwd=tmp_path, env={"RANK_SIZE": "8", "RANK_START": "4"}, expect=2)
    assert "RANK_START=4 + DEVICE_NUM=8 exceeds RANK_SIZE=8" in log
    gpu = os.path.join(ROOT, "scripts", "run_distribute_train_gpu.sh")
    log = run(["bash", gpu, data, "triplet", "none"], cwd=tmp_path, env={"NODE_NUM": "2"}, expect=2)
    assert "NODE_NUM=2 needs MASTER_ADDR" in log
    log = run(["bash", gpu, data, "triplet", "none"], cwd=tmp_path, env={"NODE_NUM": "2", "NODE_RANK": "2",
                                                                       "MASTER_ADDR": "10.0.0.1"}, expect=2)
    assert "NODE_RANK must be below NODE_NUM=2, got 2" in log


def test_a_new_run_never_overwrites_an_earlier_runs_checkpoints(data, tmp_path):
    earlier = tmp_path / "ckpt" / "resnet50_triplet-1_8.ckpt"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier run's weights")
    log = python("train.py", "--loss_name", "triplet", "--dataset_path", data, "--output_dir", str(tmp_path),
                 "--batch_size", "6", "--epoch_size", "1", *SMALL, expect=1)
    assert re.search(r"ERROR .*already holds checkpoints of an earlier triplet run", log)
    assert earlier.read_bytes() == b"an earlier run's weights"


def test_arcmargin_stage_trains_backbone_and_class_weights(data, tmp_path):
    log = python("train.py", "--loss_name", "arcmargin", "--dataset_path", data, "--output_dir", str(tmp_path),
                 "--class_num", "8", "--batch_size", "12", "--epoch_size", "2", "--lr_max", "0.01", *SMALL)
    assert len(epoch_mean_losses(log)) == 2
    state = load_values(final_checkpoint(log))
    assert state["arcmargin.weight"].shape == (2048, 8)
    assert np.any(state["moments.arcmargin.weight"] != 0)  # the class weights are trained too
