"""The CPU kernels' build and choice (config cpu_kernels): MindSpore's ops off CPU or when asked for, one warning
where the library cannot be built, nothing half-written by a failing compile, and one private copy of MindSpore's
oneDNN shared by every version of our kernels and every venv."""
import logging
import os

import pytest

from src.kernels import build

pytestmark = pytest.mark.skipif(build.resolve(build.NATIVE, "CPU") != build.NATIVE,
                                reason="the CPU kernels cannot be built here (see the warning)")


def test_other_devices_and_mindspore_choice_build_nothing():
    assert build.resolve("native", "GPU") == "mindspore"
    assert build.resolve("native", "Ascend") == "mindspore"
    assert build.resolve("mindspore", "CPU") == "mindspore"
    with pytest.raises(ValueError, match="cpu_kernels must be one of native, mindspore, got 'onednn'"):
        build.resolve("onednn", "CPU")


def test_no_compiler_falls_back_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(build, "_state", {"library": None, "error": None, "warned": False})
    monkeypatch.setenv(build.CACHE_VAR, str(tmp_path))
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ / c++ here
    with caplog.at_level(logging.WARNING):
        assert build.resolve("native", "CPU") == "mindspore"
        assert build.resolve("native", "CPU") == "mindspore"
    warnings = [r.getMessage() for r in caplog.records if "cpu_kernels" in r.getMessage()]
    assert len(warnings) == 1
    assert "no C++ compiler found" in warnings[0] and "MindSpore's Conv2D" in warnings[0]


def test_a_failing_compile_names_the_source(monkeypatch, tmp_path):
    monkeypatch.setattr(build, "_state", {"library": None, "error": None, "warned": False})
    monkeypatch.setenv(build.CACHE_VAR, str(tmp_path))
    broken = tmp_path / "broken.cc"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(build, "SOURCES", (str(broken),))
    with pytest.raises(build.KernelsUnavailableError, match="broken.cc"):
        build.library()
    leftovers = [p.name for p in (tmp_path / "cpu_kernels").iterdir() if not p.name.startswith("libdnnl-")]
    assert leftovers == []  # nothing half-written, no temporary file left


def test_new_kernels_reuse_the_private_onednn_copy(monkeypatch, tmp_path):
    """The 58 MB copy of MindSpore's libdnnl is named by that library's content alone: a change of our sources
    builds new kernels beside the same copy, instead of one more copy per version, and another venv's install of
    the same library (another path, another mtime) builds nothing and copies nothing."""
    monkeypatch.setenv(build.CACHE_VAR, str(tmp_path / "cache"))
    for name in (build._ENV_LIB, build._ENV_THREADS, build._ENV_UNCAP):
        monkeypatch.setenv(name, "")  # _build sets them; restored after the test
    fake_onednn = tmp_path / "libdnnl.so.3"
    fake_onednn.write_bytes(b"not really oneDNN")
    monkeypatch.setattr(build, "mindspore_onednn", lambda: str(fake_onednn))
    compiler = tmp_path / "fake-c++"
    compiler.write_text(f'#!/bin/sh\necho >> {tmp_path}/compiles\nwhile [ "$1" != "-o" ]; do shift; done\n'
                        'echo built > "$2"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    source = tmp_path / "kernels.cc"
    monkeypatch.setattr(build, "SOURCES", (str(source),))
    built = []
    for version in ("// version 1\n", "// version 2\n"):
        source.write_text(version)
        built.append(build._build(threads=1))
    folder = tmp_path / "cache" / "cpu_kernels"
    assert len(set(built)) == 2 and all(open(path).read() == "built\n" for path in built)
    assert all(os.path.basename(path).startswith("cpu_kernels-") and path.endswith(".so") for path in built)
    copies = sorted(p.name for p in folder.glob("libdnnl-*.so.3"))
    assert len(copies) == 1, copies
    assert (folder / copies[0]).read_bytes() == b"not really oneDNN"
    other_venv = tmp_path / "venv2" / "libdnnl.so.3"
    other_venv.parent.mkdir()
    other_venv.write_bytes(fake_onednn.read_bytes())
    os.utime(other_venv, ns=(0, 0))
    monkeypatch.setattr(build, "mindspore_onednn", lambda: str(other_venv))
    assert build._build(threads=1) == built[1]
    assert sorted(p.name for p in folder.glob("libdnnl-*.so.3")) == copies
    assert (tmp_path / "compiles").read_text() == "\n\n"  # the two versions' builds, none for the new venv
    other_venv.write_bytes(b"another oneDNN")  # a different library: its own copy and kernels
    assert build._build(threads=1) != built[1]
    assert len(list(folder.glob("libdnnl-*.so.3"))) == 2
