"""The shape of src/: every module in a concept package, packages without import cycles, each importable on its own,
the old `python -m src.<name>` tools still working, one logger name for everything, and no branching on a loss name
outside the registry."""
import ast
import os
import re
import subprocess
import sys

import pytest

from tests.paths import ROOT

SRC = os.path.join(ROOT, "src")
PACKAGES = ("runtime", "kernels", "data", "models", "losses", "training", "evaluation", "deploy",
            "retrieval")
# Thin modules kept at the top so that `python -m src.<name>` goes on working for users' scripts.
FORWARDERS = {"convert_weights": "models", "baselines": "evaluation", "history": "training",
              "benchmark_lists": "data"}


def python_files():
    for folder, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), SRC)


def module_name(relpath):
    parts = relpath[:-3].split(os.sep)
    return ".".join(["src"] + [p for p in parts if p != "__init__"])


def imported_modules(path):
    """Every src module `path` imports, at the top or inside a function."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("src.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "src":
            # `from src.data import dataset` imports the module src.data.dataset
            found |= {f"{node.module}.{a.name}" if os.path.isfile(
                os.path.join(ROOT, *node.module.split("."), a.name + ".py")) else node.module for a in node.names}
    return found


def package_of(module):
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def package_graph():
    graph = {p: set() for p in PACKAGES}
    for rel in python_files():
        source = package_of(module_name(rel))
        if source is None:
            continue
        for target in imported_modules(os.path.join(SRC, rel)):
            target_package = package_of(target)
            if target_package is not None and target_package != source:
                graph[source].add(target_package)
    return graph


def find_cycle(graph):
    """A list of nodes forming a cycle, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_every_module_lives_in_a_package():
    top = sorted(rel[:-3] for rel in python_files() if os.sep not in rel and rel != "__init__.py")
    assert top == sorted(FORWARDERS)
    packages = sorted(d for d in os.listdir(SRC) if os.path.isfile(os.path.join(SRC, d, "__init__.py")))
    assert packages == sorted(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_init_says_in_its_first_line_what_lives_there(package):
    """A one-line summary, then (src/kernels/: the map of what each kernel replaces) a blank line and more."""
    with open(os.path.join(SRC, package, "__init__.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), "only a docstring: importing stays cheap"
    first, _, rest = ast.get_docstring(tree).strip().partition("\n")
    assert first.strip(), "the first line says what lives there"
    assert not rest or rest.startswith("\n"), "the summary is one line, then a blank line"


def test_packages_import_each_other_without_cycles():
    graph = package_graph()
    assert find_cycle(graph) is None, f"import cycle between packages: {' -> '.join(find_cycle(graph))}"
    assert graph["runtime"] == set(), "runtime is the bottom layer"
    assert graph["kernels"] <= {"runtime"}, "the CPU kernels stand below the network and the training"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_scan_sees_function_level_and_module_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("from src.runtime import log\n\ndef f():\n    from src.data.dataset import create_dataset\n")
    assert imported_modules(str(path)) == {"src.runtime.log", "src.data.dataset"}


def run(args):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT, GLOG_v="3"))


def test_each_package_imports_on_its_own():
    """Every module of a package, imported in a fresh interpreter that has loaded nothing else of src."""
    procs = {}
    for package in PACKAGES:
        modules = sorted(module_name(rel) for rel in python_files() if rel.startswith(package + os.sep))
        procs[package] = run(["-c", "; ".join(f"import {m}" for m in modules)])
    for package, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"src.{package}: {out[-2000:]}"


def test_old_module_paths_forward_to_the_packages(tmp_path):
    procs = {name: run(["-m", f"src.{name}", "--help"]) for name in FORWARDERS}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out
        assert f"usage: python -m src.{FORWARDERS[name]}.{name}" in out


def test_a_module_run_with_python_m_logs_as_the_project(tmp_path):
    (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n1 1 1 a/1.jpg\n2 1 1 a/2.jpg\n")
    (tmp_path / "Ebay_test.txt").write_text("image_id class_id super_class_id path\n3 2 1 b/3.jpg\n4 2 1 b/4.jpg\n")
    proc = run(["-m", "src.benchmark_lists", "sop", str(tmp_path)])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (tmp_path / "train.txt").read_text() == "a/1.jpg 1\na/2.jpg 1\n"
    logged = [line for line in out.splitlines() if " INFO " in line]
    assert logged and all(" INFO metric_learn: " in line for line in logged), out


def test_no_module_names_its_own_logger():
    for rel in python_files():
        if rel == os.path.join("runtime", "log.py"):
            continue
        with open(os.path.join(SRC, rel), encoding="utf-8") as f:
            text = f.read()
        assert "getLogger(" not in text, f"src/{rel}: log through src.runtime.log.get_logger()"


# ---------------------------------------------------------------------------------------------------------
# What a loss name means is decided in src/losses/registry.py alone

REGISTRY = os.path.join("losses", "registry.py")
ENTRY_SCRIPTS = ("train.py", "eval.py", "export.py", "preprocess.py", "postprocess.py", "retrieve.py")


def loss_name_branches(source, names):
    """Sorted (line, name) of the places in Python `source` that decide something by a loss name: a string literal
    equal to one of `names` compared (==, !=, in, ...), used as a dict key or an index, listed in a tuple / list /
    set, a keyword of dict(...), or a match pattern. Prose (docstrings, messages) and plain values (an argument's
    default) pass."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        candidates = []
        if isinstance(node, ast.Compare):
            candidates = [node.left, *node.comparators]
        elif isinstance(node, ast.Dict):
            candidates = [key for key in node.keys if key is not None]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            candidates = node.elts
        elif isinstance(node, ast.Subscript):
            candidates = [node.slice]
        elif isinstance(node, ast.MatchValue):
            candidates = [node.value]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
            found |= {(node.lineno, k.arg) for k in node.keywords if k.arg in names}
        found |= {(c.lineno, c.value) for c in candidates
                  if isinstance(c, ast.Constant) and isinstance(c.value, str) and c.value in names}
    return sorted(found)


def test_no_package_branches_on_a_loss_name():
    """src/ and the entry scripts ask the registry (its entry's layout, classes, ...) instead of comparing names; the
    launch scripts list no names of their own (scripts/common.sh asks `python -m src.losses.registry`)."""
    from src.losses.registry import LOSS_NAMES

    paths = [os.path.join(SRC, rel) for rel in python_files() if rel != REGISTRY]
    paths += [os.path.join(ROOT, name) for name in ENTRY_SCRIPTS]
    found = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            found += [f"{os.path.relpath(path, ROOT)}:{line}: {name!r}"
                      for line, name in loss_name_branches(f.read(), LOSS_NAMES)]
    assert found == [], "branches on a loss name outside src/losses/registry.py:\n" + "\n".join(found)
    scripts = os.path.join(ROOT, "scripts")
    for name in sorted(os.listdir(scripts)):
        if name.endswith(".sh"):
            with open(os.path.join(scripts, name), encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    named = {word for word in re.findall(r"\w+", line) if word in LOSS_NAMES}
                    assert len(named) < 3, f"scripts/{name}:{number} lists loss names {sorted(named)}: ask the registry"


def test_loss_name_scan_finds_branches_and_passes_prose():
    names = ("softmax", "triplet", "npairs", "eml")
    branches = ('if loss_name == "triplet":\n    pass\n', 'HEADS = {"softmax": 1}\n',
                'ok = name in ("npairs", "eml")\n', 'x = OPTIONS["eml"]\n', 'd = dict(triplet=3)\n',
                'match name:\n    case "softmax":\n        pass\n', 'if "softmax" != name:\n    pass\n')
    for source in branches:
        assert loss_name_branches(source, names), source
    prose = ('"""Train softmax, then triplet."""\n', 'logger.info("the %s stage", "softmax")\n',
             'parser.add_argument("--loss_name", default="triplet")\n', 'raise ValueError(f"npairs: {x}")\n',
             'if layout == "triplets":\n    pass\n')
    for source in prose:
        assert loss_name_branches(source, names) == [], source
