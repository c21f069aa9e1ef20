import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# CPU dispatch, BLAS kernel and glog level for the test process and every subprocess it starts.
import src.runtime.env  # noqa: E402,F401

# isort: split
import shutil  # noqa: E402

import pytest  # noqa: E402


def pytest_collection_modifyitems(items):
    """Modules with the most end-to-end (slow) tests first: with the suite spread over workers a module at a time
    (pytest-xdist --dist loadfile), the long modules start at once instead of being left for the end."""
    slow = {}
    for item in items:
        slow[item.module.__name__] = slow.get(item.module.__name__, 0) + (item.get_closest_marker("slow") is not None)
    items.sort(key=lambda item: -slow[item.module.__name__])  # stable: the order inside a module is kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.test_failed = report.failed


@pytest.fixture(autouse=True)
def _remove_tmp_path_of_passed_tests(request):
    """A passed test's tmp_path goes when it ends (checkpoints of a ResNet-50 are 100-300 MB each, and the suite
    writes dozens: the disk may be small); a failed test's stays for a look."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None and not getattr(request.node, "test_failed", True):
        shutil.rmtree(path, ignore_errors=True)
