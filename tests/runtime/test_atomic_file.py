"""atomic_path / write_atomic: the target changes only when a write completes, and nothing is left behind."""
import os
import stat

import pytest

from src.runtime.atomic_file import atomic_path, write_atomic


def test_a_completed_write_replaces_the_file_with_the_umasks_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_atomic(str(target), "old")
    with atomic_path(str(target)) as tmp:
        assert os.path.dirname(tmp) == str(target.parent) and tmp != str(target)
        with open(tmp, "w") as f:
            f.write("new")
        assert target.read_text() == "old", "the target changes only when the block ends"
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask
    assert os.listdir(target.parent) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(target), suffix=".npz") as tmp:
            assert tmp.endswith(".npz")
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.npz"]


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "index"
    with atomic_path(str(target), folder=True) as tmp:
        (tmp_path / os.path.basename(tmp) / "a.txt").write_text("1")
    assert sorted(os.listdir(target)) == ["a.txt"]
    with pytest.raises(RuntimeError):
        with atomic_path(str(target), folder=True) as tmp:
            (tmp_path / os.path.basename(tmp) / "b.txt").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(target)) == ["a.txt"], "the old folder stays as it was"
    with atomic_path(str(target), folder=True) as tmp:
        (tmp_path / os.path.basename(tmp) / "b.txt").write_text("2")
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert os.listdir(tmp_path) == ["index"], "no temporary or old folder left"


def test_keep_mode_leaves_the_writers_permissions(tmp_path):
    target = tmp_path / "model.ckpt"
    with atomic_path(str(target), suffix=".ckpt", keep_mode=True) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"weights")
        os.chmod(tmp, stat.S_IRUSR)  # as ms.save_checkpoint leaves its files
    assert stat.S_IMODE(os.stat(target).st_mode) == stat.S_IRUSR
    with atomic_path(str(target), suffix=".ckpt", keep_mode=True) as tmp:  # a read-only target is replaced
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(os.stat(target).st_mode) == 0o600, "mkstemp's"
    assert os.listdir(tmp_path) == ["model.ckpt"]
