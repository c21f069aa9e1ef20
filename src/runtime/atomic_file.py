"""Atomic file writes: a temporary file in the target's folder, then a rename, so a reader or a crash never
sees half a file."""
import os
import tempfile

# The process umask, read once (os.umask can only be read by setting it): mkstemp creates files 0600,
# and written reports and pictures should get the usual permissions instead.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def write_atomic(path, data):
    """Write bytes (or a str, as UTF-8) to `path` via a temporary file in the same folder and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
