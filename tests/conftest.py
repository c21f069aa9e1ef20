import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# CPU dispatch, BLAS kernel and glog level for the test process and every subprocess it starts.
import src.runtime.env  # noqa: E402,F401

# isort: split
import fcntl  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402

# Seconds each module took (the sum of its tests' --durations lines, one quiet run on 2 cores); only their order
# matters. A module missing here counts SLOW_TEST_SECONDS per slow test.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "module_seconds.json"), encoding="utf-8") as _f:
    MODULE_SECONDS = json.load(_f)
SLOW_TEST_SECONDS = 8


def pytest_collection_modifyitems(items):
    """The longest modules first: with the suite spread over workers a module at a time (pytest-xdist --dist
    loadfile), a long module started last would run alone at the end while the other workers sit idle."""
    slow = {}
    for item in items:
        slow[item.module.__file__] = slow.get(item.module.__file__, 0) + (item.get_closest_marker("slow") is not None)

    def seconds(path):
        rel = os.path.relpath(path, ROOT).replace(os.sep, "/")
        return MODULE_SECONDS.get(rel, SLOW_TEST_SECONDS * slow[path])

    items.sort(key=lambda item: -seconds(item.module.__file__))  # stable: the order inside a module is kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.test_failed = report.failed


@pytest.fixture(autouse=True)
def _keep_mindspores_execution_mode():
    """A test that trains in-process (the parity check: graph mode, as train.py) hands the next test on its
    worker the mode it found: tests written for PyNative (ms.grad of a lambda, which graph mode cannot parse)
    must not depend on which module pytest-xdist ran before them."""
    import mindspore as ms  # imported already: the test modules import it when they are collected

    mode = ms.get_context("mode")
    yield
    if ms.get_context("mode") != mode:
        ms.set_context(mode=mode)


@pytest.fixture(autouse=True)
def _remove_tmp_path_of_passed_tests(request):
    """A passed test's tmp_path goes when it ends (checkpoints of a ResNet-50 are 100-300 MB each, and the suite
    writes dozens: the disk may be small); a failed test's stays for a look."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None and not getattr(request.node, "test_failed", True):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory):
    """An untrained ResNet-50's checkpoint (seed 1), written once a test session and shared by its workers (a
    folder of the session's that pytest-xdist's workers share, a lock for the first to write it): read it, do not
    write next to it (a module whose runs write beside their checkpoint links it into a folder of its own).
    Written in a subprocess, so that set_seed does not reach the tests of this process."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, not an older run's
    path = shared / "untrained_seed1.ckpt"
    with open(shared / "untrained_seed1.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            partial = shared / "untrained_seed1.partial.ckpt"
            code = (f"import sys; sys.path.insert(0, {ROOT!r}); import src.runtime.env; import mindspore as ms; "
                    f"from src.models.resnet import ResNet50; ms.set_seed(1); "
                    f"ms.save_checkpoint(ResNet50(), {str(partial)!r})")
            proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                  env=dict(os.environ, GLOG_v="3"))
            assert proc.returncode == 0, proc.stderr[-3000:]
            os.replace(partial, path)
    return str(path)
