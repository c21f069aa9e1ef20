"""Building the CPU kernels' library, and choosing it (config key `cpu_kernels`; what each kernel replaces, why,
and how it falls back: src/kernels/__init__.py). This module imports no MindSpore until it builds.

Building: at the first use per process, the .cc files (SOURCES) are compiled with the system's C++ compiler (`CXX`,
else g++ / c++) into one library, cpu_kernels-<hash>.so, in the folder cpu_kernels/ of the cache folder
(METRIC_LEARN_CACHE, else ~/.cache/metric_learn, else a temp folder), with a private copy of MindSpore's own
libdnnl.so.3 beside it: a copy has its own CPU dispatch, so it runs its AVX-512 kernels while MindSpore's runs
under src/runtime/env.py's AVX2 cap (a cap the user set applies to both). Both files are written atomically and
named by a hash of what they are built from (MindSpore's library by its content, not its path: venvs share them),
so concurrent processes (msrun) and upgrades are safe. Where it cannot be built (no compiler, no libdnnl.so.3, not
Linux x86-64), `resolve` says why in one warning and MindSpore's own ops are used.
"""
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

from src.runtime import env as runtime_env
from src.runtime.atomic_file import atomic_path
from src.runtime.log import get_logger

CONFIG_KEY = "cpu_kernels"
NATIVE, MINDSPORE = "native", "mindspore"  # our kernels | MindSpore's own ops
IMPLEMENTATIONS = (NATIVE, MINDSPORE)
_HERE = os.path.dirname(os.path.abspath(__file__))
# One library: the convolutions, BatchNorm + ReLU, the max pool and the optimizer's update.
SOURCES = tuple(os.path.join(_HERE, name) for name in ("conv.cc", "batchnorm.cc", "maxpool.cc", "momentum.cc"))
HEADERS = tuple(os.path.join(_HERE, name) for name in ("onednn_api.h", "thread_pool.h"))
CXXFLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC")
CACHE_VAR = "METRIC_LEARN_CACHE"
CACHE_FOLDER = "cpu_kernels"  # inside the cache folder
LIBRARY_NAME = "cpu_kernels"  # the library: cpu_kernels-<hash>.so
ONEDNN_LIBRARY = "libdnnl.so.3"
# Set by _build, read by the kernels at their first call (conv.cc, thread_pool.h).
_ENV_LIB, _ENV_THREADS, _ENV_UNCAP = ("METRIC_LEARN_KERNELS_LIB", "METRIC_LEARN_KERNELS_THREADS",
                                      "METRIC_LEARN_KERNELS_UNCAP")


_lock = threading.Lock()
_state = {"library": None, "error": None, "warned": False}


class KernelsUnavailableError(RuntimeError):
    """The kernels cannot be built or loaded here; the message says why."""


def check_implementation(name):
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{CONFIG_KEY} must be one of {', '.join(IMPLEMENTATIONS)}, got {name!r}")
    return name


def resolve(requested, device_target, threads=None):
    """The kernels to build networks and the optimizer with: NATIVE where it is asked for, the device is CPU and
    the library builds (else one warning saying why), otherwise MINDSPORE. `threads`: the kernels' (default: the
    cores this process may use)."""
    check_implementation(requested)
    if requested != NATIVE or device_target != "CPU":
        return MINDSPORE
    try:
        library(threads)
    except KernelsUnavailableError as err:
        if not _state["warned"]:
            get_logger().warning(f"{CONFIG_KEY}: {NATIVE} is unavailable ({err}); using MindSpore's Conv2D, "
                                 f"BatchNorm, MaxPool and nn.Momentum, which are slower on CPU")
            _state["warned"] = True
        return MINDSPORE
    return NATIVE


def _cache_dir():
    candidates = [os.environ.get(CACHE_VAR), os.path.join(os.path.expanduser("~"), ".cache", "metric_learn"),
                  os.path.join(tempfile.gettempdir(), f"metric_learn-{os.getuid()}")]
    for folder in filter(None, candidates):
        folder = os.path.join(folder, CACHE_FOLDER)
        try:
            os.makedirs(folder, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise KernelsUnavailableError(f"no writable cache folder (set {CACHE_VAR})")


def _compiler():
    for name in filter(None, (os.environ.get("CXX"), "g++", "c++")):
        path = shutil.which(name)
        if path:
            return path
    raise KernelsUnavailableError("no C++ compiler found (g++ or c++ on PATH, or CXX)")


def mindspore_onednn():
    """Path of the libdnnl.so.3 MindSpore ships."""
    import mindspore

    path = os.path.join(os.path.dirname(mindspore.__file__), "lib", ONEDNN_LIBRARY)
    if not os.path.isfile(path):
        raise KernelsUnavailableError(f"{path} not found")
    return path


def _build(threads):
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise KernelsUnavailableError(f"built for Linux x86-64 only, this is {platform.system()} {platform.machine()}")
    onednn = mindspore_onednn()
    cxx = _compiler()
    with open(onednn, "rb") as f:  # by content (0.05 s): every venv of the same MindSpore shares the copy
        onednn_id = hashlib.file_digest(f, "sha256").hexdigest()
    digest = hashlib.sha256()
    for path in SOURCES + HEADERS:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(f"{cxx} {' '.join(CXXFLAGS)} {onednn_id}".encode())
    folder = _cache_dir()
    kernels = os.path.join(folder, f"{LIBRARY_NAME}-{digest.hexdigest()[:16]}.so")
    # Named by MindSpore's library alone: a new version of our kernels reuses the copy (58 MB) of an unchanged one,
    # and so does every new venv with the same MindSpore (named by its path, each venv left one more copy).
    private = os.path.join(folder, f"libdnnl-{onednn_id[:16]}.so.3")
    if not os.path.isfile(private):
        with atomic_path(private) as tmp:
            shutil.copyfile(onednn, tmp)
    if not os.path.isfile(kernels):
        with atomic_path(kernels) as tmp:
            command = [cxx, *CXXFLAGS, "-I", _HERE, *SOURCES, "-o", tmp, "-lpthread", "-ldl"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                lines = (done.stderr or done.stdout).strip().splitlines()
                raise KernelsUnavailableError(f"{os.path.basename(cxx)} failed on {' '.join(SOURCES)}: "
                                              f"{lines[0] if lines else 'exit ' + str(done.returncode)}")
    # Read by the kernels at their first call, in this process.
    os.environ[_ENV_LIB] = private
    os.environ[_ENV_THREADS] = str(threads or len(os.sched_getaffinity(0)))
    # Lift the AVX2 cap for the private copy when it is ours (src/runtime/env.py), never when the user set one.
    os.environ[_ENV_UNCAP] = "0" if runtime_env.user_onednn_cap() else "1"
    return kernels


def float32_only(dtype, cell):
    """`dtype` (an out_dtype argument of a Custom op, called while the graph compiles) if it is float32, else a
    TypeError naming `cell`: the kernels compute float32 only, and this is clearer than the kernel's refusal."""
    from mindspore.common import dtype as mstype

    element = dtype.element_type() if isinstance(dtype, mstype.TensorType) else dtype
    if element != mstype.float32:
        raise TypeError(f"{cell} (config {CONFIG_KEY}: {NATIVE}) computes float32 only, got {element}; "
                        f"set {CONFIG_KEY}: {MINDSPORE} for other types")
    return dtype


def library(threads=None):
    """Path of the built kernels (built at the first call); raises KernelsUnavailableError."""
    with _lock:
        if _state["library"] is None and _state["error"] is None:
            try:
                _state["library"] = _build(threads)
            except KernelsUnavailableError as err:
                _state["error"] = str(err)
            except OSError as err:
                _state["error"] = f"cannot build the kernels: {err}"
        if _state["error"] is not None:
            raise KernelsUnavailableError(_state["error"])
        return _state["library"]
