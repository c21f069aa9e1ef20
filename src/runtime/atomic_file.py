"""Atomic file writes: a temporary path in the target's folder, renamed onto the target only when the write
finished, so a reader or a crash never sees half a file and an earlier file stays whole until replaced."""
import contextlib
import os
import shutil
import tempfile

# The process umask, read once (os.umask can only be read by setting it): mkstemp creates files 0600,
# and written reports and pictures should get the usual permissions instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path, suffix=".tmp", folder=False, keep_mode=False):
    """Yield a temporary path beside `path`; rename it onto `path` when the block ends normally, remove it when
    the block raises (the exception goes on). `suffix` ends the temporary name (writers that choose a format by
    the file's ending, e.g. np.savez or ms.save_checkpoint, need theirs). With folder=True the temporary path is
    an empty folder, and it replaces a folder `path` (the old one is removed only after the new one is complete).
    A file gets the umask's permissions, not mkstemp's 0600; keep_mode=True leaves it those it has when the
    block ends (the writer's: MindSpore makes checkpoints and exports read-only, 0400; a file the block only
    wrote into keeps mkstemp's 0600)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    prefix = "." + os.path.basename(path) + "."
    if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=directory)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
        os.close(fd)
    try:
        yield tmp
        if folder:
            os.chmod(tmp, 0o777 & ~_UMASK)
            _replace_folder(tmp, path)
        else:
            if not keep_mode:
                os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, path)
    except BaseException:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.remove(tmp)
        raise


def _replace_folder(tmp, path):
    """Put the folder `tmp` at `path`: the old folder is moved aside first and removed after the rename."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
        return
    old = tempfile.mkdtemp(prefix="." + os.path.basename(path) + ".", suffix=".old", dir=os.path.dirname(tmp))
    os.rmdir(old)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.remove(old)


def write_atomic(path, data):
    """Write bytes (or a str, as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
