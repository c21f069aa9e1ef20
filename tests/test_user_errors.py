"""The last line a user sees for the first errors of a device run: a device this machine lacks, a bad image
met inside MindSpore's data pipeline, an evaluation list in which no query has a positive, a training run without
epochs, a checkpoint of another stage given to --resume."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from src.data.demo_data import make_retrieval_dataset
from src.evaluation.metrics import NoPositivesError, check_positives
from src.runtime.cli import pipeline_error
from src.runtime.devices import missing_libraries, plugin_files, unavailable_message
from tests.paths import ROOT

SMALL = ["--image_size", "32", "--eval_batch_size", "16"]


def run(args, expect, cwd=None):
    """Run an entry script; stdout and stderr in one stream, in the order written. Returns its lines."""
    env = dict(os.environ, GLOG_v="3", PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd or ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}):\n{proc.stdout[-4000:]}"
    return [line for line in proc.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_retrieval_dataset(str(tmp_path_factory.mktemp("data")))


# ---------------------------------------------------------------------------------------------------------
# A device this machine cannot use

@pytest.mark.parametrize("device", ["GPU", "Ascend"])
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_missing_device_ends_with_one_line_naming_it_and_its_libraries(data, device, script):
    if not plugin_files(device) or not missing_libraries(plugin_files(device)[-1]):
        pytest.skip(f"this machine may have {device}'s libraries")  # not the case on CI machines
    args = ["--loss_name", "softmax"] if script == "train.py" else ["--random_init"]
    lines = run([os.path.join(ROOT, script), *args, "--dataset_path", data, "--device_target", device], expect=1)
    last = lines[-1]
    assert re.search(rf"ERROR .*DeviceUnavailableError: --device_target {device}: MindSpore 2\.10\.\d+ cannot use "
                     rf"{device} on this machine: .* not found \(needed by MindSpore's libmindspore_", last), last
    needed = {"GPU": ["libcuda.so.1", "libcudnn.so.8", "libcudart.so.11.0"],
              "Ascend": ["libascendcl.so", "libge_runner.so"]}[device]
    assert all(lib in last for lib in needed), last
    assert not any(line.startswith("Traceback") for line in lines)


def test_the_unavailable_message_takes_the_plugin_missing_fewest_libraries():
    plugins = ["/p/libmindspore_gpu.so.11.1", "/p/libmindspore_gpu.so.11.6"]
    missing = {plugins[0]: ["libcuda.so.1", "libnvrtc.so.11.1"], plugins[1]: ["libnvrtc.so.11.2"]}
    text = unavailable_message("GPU", "", plugins, missing.get)
    assert "cannot use GPU on this machine: libnvrtc.so.11.2 not found (needed by MindSpore's " \
           "libmindspore_gpu.so.11.6); install CUDA 11.1 or 11.6 with cuDNN 8" in text
    tie = unavailable_message("GPU", "", plugins, lambda p: ["libcuda.so.1"])
    assert "libmindspore_gpu.so.11.6" in tie  # the newest on a tie
    # No plugin answer: the libraries MindSpore's loader named.
    loader = ("Load dynamic library: libmindspore_ascend.so.2 failed. libge_runner.so: cannot open shared object "
              "file: No such file or directory\n")
    text = unavailable_message("Ascend", loader, [], lambda p: [])
    assert "libge_runner.so not found (named by MindSpore's loader); install the Ascend driver and CANN" in text


# ---------------------------------------------------------------------------------------------------------
# A bad image read inside the data pipeline

def spoil(data, tmp_path, list_name, kind):
    """A copy of the data set whose `list_name` line 3 points to a missing, truncated or empty image."""
    root = tmp_path / "data"
    shutil.copytree(data, root)
    rel = (root / list_name).read_text().splitlines()[2].split()[0]
    image = root / rel
    if kind == "missing":
        image.unlink()
    elif kind == "truncated":
        image.write_bytes(image.read_bytes()[:60])
    else:
        image.write_bytes(b"")
    return str(root), str(image)


MESSAGES = {"missing": "FileNotFoundError: image not found: {image}",
            "truncated": "ValueError: cannot decode image: {image}",
            "empty": "ValueError: cannot decode image: {image}"}


@pytest.mark.slow
@pytest.mark.parametrize("stage, workers, kind", [("eval", 1, kind) for kind in MESSAGES]
                         + [("train", 2, "missing"), ("train", 2, "truncated")])
def test_a_bad_image_in_the_pipeline_is_the_last_line(data, tmp_path, kind, stage, workers):
    """Process workers (2) and the in-process pipeline (1) wrap the error differently; both end the same. Every
    pipeline reads with src/data/decoding.py's load_image, so each kind's message is checked once (in-process);
    a missing file is found when the dataset is made (check_files_exist, with load_image's message: before
    training compiles), and training's process workers carry a file that does not decode (an empty file raises
    what a truncated one does)."""
    list_name = "train.txt" if stage == "train" else "test.txt"
    root, image = spoil(data, tmp_path, list_name, kind)
    if stage == "train":
        args = ["train.py", "--loss_name", "softmax", "--class_num", "8", "--batch_size", "8", "--epoch_size", "1",
                "--train_list", list_name, "--output_dir", str(tmp_path / "out")]
    else:
        args = ["eval.py", "--random_init", "--eval_list", list_name]
    lines = run([os.path.join(ROOT, args[0]), *args[1:], "--dataset_path", root, "--num_parallel_workers",
                 str(workers), *SMALL], expect=1)
    expected = MESSAGES[kind].format(image=image) + f" (listed at {os.path.join(root, list_name)}:3)"
    assert lines[-1].endswith(" ERROR metric_learn: " + expected), lines[-3:]
    if stage == "train":
        assert not os.path.exists(tmp_path / "out" / "ckpt")  # nothing half-written


def test_pipeline_error_finds_the_innermost_exception():
    worker = ("Exception thrown from user defined Python function in dataset. \n\n- Python Call Stack: \n"
              "Traceback (most recent call last):\n  File \"x.py\", line 409, in process\n"
              "FileNotFoundError: Traceback (most recent call last):\n  File \"src/data/dataset.py\", line 120\n"
              "    raise FileNotFoundError(f\"image not found: {path}{listed}\")\n"
              "FileNotFoundError: image not found: /d/a.png (listed at /d/t.txt:3)\n\n"
              "- Dataset Pipeline Error Message: \n[ERROR] Execute user Python code failed\n"
              "- C++ Call Stack: (For framework developers) \ngenerator_op.cc(383).\n")
    assert pipeline_error(RuntimeError(worker)) == ("FileNotFoundError",
                                                    "image not found: /d/a.png (listed at /d/t.txt:3)")
    assert pipeline_error(RuntimeError("Unsupported device target GPU")) is None
    assert pipeline_error(RuntimeError("Exception thrown from user defined Python function in dataset.")) is None


# ---------------------------------------------------------------------------------------------------------
# No query with a positive

def singletons(data, tmp_path):
    """A list with one image of each class."""
    with open(os.path.join(data, "test.txt")) as f:
        lines = f.read().splitlines()
    seen, single = set(), []
    for line in lines:
        if line.split()[1] not in seen:
            seen.add(line.split()[1])
            single.append(line)
    path = tmp_path / "single.txt"
    path.write_text("\n".join(single) + "\n")
    return str(path)


NO_POSITIVE = r"each of its 8 images is the only one of its class, so no query has a positive"


def test_check_positives_counts_the_lonely_items(caplog):
    assert check_positives(np.array([1, 1, 2, 3, 3, 3]), "l.txt") == 1
    assert "l.txt: 1 of 6 images are the only one of their class" in caplog.text
    assert check_positives(np.array([5, 5]), "l.txt") == 0
    with pytest.raises(NoPositivesError, match="l.txt: each of its 3 images is the only one of its class"):
        check_positives(np.array([1, 2, 3]), "l.txt")


@pytest.mark.slow
def test_eval_and_train_refuse_a_list_without_positives(data, tmp_path):
    single = singletons(data, tmp_path)
    lines = run([os.path.join(ROOT, "eval.py"), "--random_init", "--dataset_path", data, "--eval_list", single,
                 "--num_parallel_workers", "1", *SMALL], expect=1)
    assert re.search(rf"ERROR metric_learn: NoPositivesError: {re.escape(single)}: {NO_POSITIVE}", lines[-1])
    assert not any("eval_recall" in line or "map@r" in line for line in lines)
    out = tmp_path / "out"
    lines = run([os.path.join(ROOT, "train.py"), "--loss_name", "triplet", "--dataset_path", data, "--run_eval",
                 "--eval_list", single, "--output_dir", str(out), "--batch_size", "6", "--num_parallel_workers", "1",
                 *SMALL], expect=1)
    assert re.search(rf"NoPositivesError: {re.escape(single)}: {NO_POSITIVE}", lines[-1])
    assert not any("step:" in line for line in lines)  # refused before training


def test_postprocess_refuses_labels_without_positives(tmp_path):
    results, labels = tmp_path / "result_Files", tmp_path / "label"
    results.mkdir()
    labels.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        rng.normal(size=2048).astype(np.float32).tofile(results / f"sop_{i}_0.bin")
        np.array([i], np.int32).tofile(labels / f"sop_{i}.bin")
    args = [os.path.join(ROOT, "postprocess.py"), "--result_path", str(results), "--label_path", str(labels),
            "--output", str(tmp_path / "acc.log")]
    lines = run(args, expect=1)
    assert re.search(rf"ERROR metric_learn: NoPositivesError: the labels in {re.escape(str(labels))}: "
                     rf"{NO_POSITIVE}", lines[-1])
    assert not (tmp_path / "acc.log").exists()
    np.array([0], np.int32).tofile(labels / "sop_1.bin")  # now class 0 has two images: a warning, and results
    lines = run(args, expect=0)
    assert any(re.search(r"WARNING .*6 of 8 images are the only one of their class: as queries they have no "
                         r"positive, count as misses in Recall@K", line) for line in lines)
    assert "eval_recall:" in (tmp_path / "acc.log").read_text()


# ---------------------------------------------------------------------------------------------------------
# Training arguments that cannot work: no epochs, a checkpoint of another stage to resume

def test_a_run_without_epochs_is_refused_before_anything_is_written(data, tmp_path):
    out = tmp_path / "out"
    lines = run([os.path.join(ROOT, "train.py"), "--loss_name", "triplet", "--dataset_path", data, "--epoch_size",
                 "-1", "--output_dir", str(out)], expect=1)
    assert lines[-1].endswith(" ERROR metric_learn: ValueError: epoch_size must be >= 1, got epoch_size=-1"), lines[-3:]
    assert not out.exists()


def fake_checkpoint(path, **entries):
    """A checkpoint holding one tensor and `entries` (epoch_num, step_num, loss_name, ...) as train.py writes them."""
    import mindspore as ms

    ms.save_checkpoint([{"name": "conv1.weight", "data": ms.Tensor(np.zeros((2, 3), np.float32))}], str(path),
                       append_dict=entries)
    return str(path)


def test_resuming_a_checkpoint_of_another_stage_points_to_ckpt_path(data, tmp_path):
    softmax = fake_checkpoint(tmp_path / "resnet50_softmax-8_16.ckpt", epoch_num=8, step_num=16, loss_name="softmax")
    out = tmp_path / "out"
    lines = run([os.path.join(ROOT, "train.py"), "--loss_name", "triplet", "--dataset_path", data, "--epoch_size",
                 "1", "--resume", softmax, "--output_dir", str(out)], expect=1)
    assert lines[-1].endswith(f" ERROR metric_learn: ValueError: {softmax} is a checkpoint of the softmax stage "
                              f"(pre-training), not of triplet: --resume continues an interrupted run of the same "
                              f"stage; to start the triplet stage from its weights, use --ckpt_path {softmax}"), \
        lines[-3:]
    assert not out.exists()


def test_the_stage_of_a_checkpoint_to_resume_comes_from_its_entry_then_its_file_name(tmp_path):
    from src.training.trainer import resume_point

    recorded = fake_checkpoint(tmp_path / "renamed.ckpt", epoch_num=2, step_num=6, loss_name="softmax")
    with pytest.raises(ValueError, match=r"renamed\.ckpt is a checkpoint of the softmax stage .*--ckpt_path"):
        resume_point(recorded, "quadruplet")
    assert resume_point(recorded, "softmax") == (2, 6)
    # Checkpoints written before the stage entry: the file name's prefix, else no check.
    old = fake_checkpoint(tmp_path / "resnet50_arcmargin-2_6.ckpt", epoch_num=2, step_num=6)
    with pytest.raises(ValueError, match=r"of the arcmargin stage \(pre-training\), not of npairs"):
        resume_point(old, "npairs")
    assert resume_point(old, "arcmargin") == (2, 6)
    anonymous = fake_checkpoint(tmp_path / "state.ckpt", epoch_num=2, step_num=6)
    assert resume_point(anonymous, "eml") == (2, 6)
