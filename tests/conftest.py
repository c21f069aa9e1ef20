import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# CPU dispatch, BLAS kernel and glog level for the test process and every subprocess it starts.
import src.runtime.env  # noqa: E402,F401

# isort: split
import json  # noqa: E402
import shutil  # noqa: E402

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
