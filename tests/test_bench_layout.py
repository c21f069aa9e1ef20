"""The shape of bench/: every script runs as a file and as a module from any folder; nothing in bench/ imports tests/
or edits sys.path (bench/_bootstrap.py does that, once)."""
import ast
import os
import subprocess
import sys

import pytest

from tests.paths import ROOT

BENCH = os.path.join(ROOT, "bench")


def bench_modules():
    return sorted(name for name in os.listdir(BENCH) if name.endswith(".py"))


def source(name):
    with open(os.path.join(BENCH, name), encoding="utf-8") as f:
        return f.read()


SCRIPTS = [name[:-3] for name in bench_modules() if 'if __name__ == "__main__":' in source(name)]


def test_the_scripts_are_found():
    assert {"bench_train", "bench_learning", "parity_torch", "profile_ops"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", bench_modules())
def test_bench_imports_no_tests_and_leaves_sys_path_to_the_bootstrap(name):
    tree = ast.parse(source(name), name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "tests" for a in node.names), f"{name}:{node.lineno}"
        elif isinstance(node, ast.ImportFrom):
            assert (node.module or "").split(".")[0] != "tests", f"{name}:{node.lineno} imports from tests/"
        elif isinstance(node, ast.Attribute) and node.attr == "path" and name != "_bootstrap.py":
            assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), f"{name}:{node.lineno}: sys.path"


def test_every_script_starts_with_the_bootstrap():
    for name in SCRIPTS:
        tree = ast.parse(source(name + ".py"))
        first = next(node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))
        assert isinstance(first, ast.Import) and first.names[0].name == "_bootstrap", name


def test_every_script_runs_as_a_file_and_as_a_module_from_another_folder(tmp_path):
    """`python bench/<script>.py --help` without PYTHONPATH, `python -m bench.<script> --help` with the repository on
    it; both from a folder outside the repository."""
    bare = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    procs = {}
    for name in SCRIPTS:
        for how, args, env in (("file", [os.path.join(BENCH, name + ".py")], bare),
                               ("module", ["-m", f"bench.{name}"], dict(bare, PYTHONPATH=ROOT))):
            procs[name, how] = subprocess.Popen([sys.executable, *args, "--help"], cwd=tmp_path, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for (name, how), proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and f"usage: {name}.py" in out, f"{name} as a {how}:\n{out[-2000:]}"
