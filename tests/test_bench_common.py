"""bench/common.py, the base the bench scripts share: worker result lines, reports, the photo set built once."""
import os
import re

import numpy as np
import pytest

from bench import common


def script(tmp_path, body):
    path = tmp_path / "worker.py"
    path.write_text(body)
    return str(path)


def test_a_worker_result_comes_back_through_its_tagged_line(tmp_path):
    path = script(tmp_path, "import sys\nprint('noise')\n"
                            f"sys.path.insert(0, {common.ROOT!r})\n"
                            "from bench.common import print_result\nprint_result({'times': [0.5, 0.25]})\n"
                            "print('more noise')\n")
    proc = common.run_script(path, [], "the worker")
    assert common.read_result(proc, "the worker") == {"times": [0.5, 0.25]}


def test_a_failed_or_silent_worker_raises_naming_it(tmp_path):
    failing = script(tmp_path, "import sys\nprint('last words', file=sys.stderr)\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"(?s)ms / train64b33 failed \(exit 3\):.*last words"):
        common.run_script(failing, [], "ms / train64b33")
    silent = common.run_script(script(tmp_path, "print('no result')\n"), [], "x")
    with pytest.raises(RuntimeError, match="x printed no result line"):
        common.read_result(silent, "x")


def test_child_env_makes_the_repository_importable_and_keeps_overrides():
    env = common.child_env({"PATH": "/bin", "GLOG_v": "1"}, GLOG_v="2", EXTRA="x")
    assert env == {"PATH": "/bin", "PYTHONPATH": common.ROOT, "GLOG_v": "2", "PYTHONUNBUFFERED": "1", "EXTRA": "x"}


def test_measurement_env_preloads_jemalloc_and_uncaps_torch_only():
    torch_env = common.measurement_env("tuned", {"FOO": "bar"}, "torch")
    assert torch_env["LD_PRELOAD"] == common.JEMALLOC and torch_env["MALLOC_CONF"] == common.TUNED_MALLOC_CONF
    assert torch_env["ONEDNN_MAX_CPU_ISA"] == "ALL" and torch_env["FOO"] == "bar"
    ms_env = common.measurement_env(None, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "ms")
    assert "LD_PRELOAD" not in ms_env and ms_env["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_reports_end_with_one_newline(tmp_path):
    common.write_report(str(tmp_path / "a.md"), "| a |")
    common.write_report(str(tmp_path / "b.md"), "| b |\n")
    common.write_json(str(tmp_path / "c.json"), {"x": [1]})
    assert (tmp_path / "a.md").read_text() == "| a |\n" and (tmp_path / "b.md").read_text() == "| b |\n"
    assert (tmp_path / "c.json").read_text() == '{\n "x": [\n  1\n ]\n}'


def test_timing_and_relative_difference():
    assert len(common.time_calls(lambda: None, 3)) == 3
    assert common.relative_difference(np.array([1.0, 2.1]), np.array([1.0, 2.0])) == pytest.approx(0.05)
    assert common.relative_difference(np.zeros(2), np.zeros(2)) == 0.0


def test_the_photo_set_is_built_once_and_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    from src.data import sop_lists

    path = str(tmp_path / "data")
    spec = {"size": 16, "grid": 2, "views": 2, "test_regions": 1, "photos": ("astronaut",), "rotation": 0.0,
            "flip": False}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(sop_lists, "prepare_lists", interrupted)
        with pytest.raises(KeyboardInterrupt):
            common.build_photo_set(path, **spec)
    assert os.listdir(tmp_path) == []
    common.build_photo_set(path, **spec)
    built = os.path.getmtime(os.path.join(path, "test.txt"))
    with open(os.path.join(path, "train.txt")) as f:
        first = f.readline().split()
    assert os.path.isfile(os.path.join(path, first[0])) and not os.path.isabs(first[0])
    common.build_photo_set(path, **spec)  # a finished set is kept
    assert os.path.getmtime(os.path.join(path, "test.txt")) == built and sorted(os.listdir(tmp_path)) == ["data"]


def test_the_machine_label_names_the_cpu_class_cores_and_date():
    assert re.fullmatch(rf".+, (with|no) AVX-512, {os.cpu_count()} cores; \d{{4}}-\d\d-\d\d",
                        common.machine_and_date())
