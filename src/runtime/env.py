"""Process-wide settings that must precede the first kernel: oneDNN's CPU dispatch, OpenBLAS's kernel, glog.

Every entry point (train.py, eval.py, export.py, preprocess.py, postprocess.py, src.deploy.infer_cpu, the
bench scripts, the test suite's conftest) imports this module before numpy and mindspore, and
nothing else sets these variables. Importing it applies `configure()` once per process.

Why (measured, bench/results/cpu_isa_results.md):
  - MindSpore 2.10's CPU convolutions hand oneDNN 3.10 plain NCHW tensors. On a CPU with AVX-512,
    oneDNN then runs every convolution that is not 1x1 through `jit_uni_ncsp:conv+ref:any`, a
    reference kernel (0.3 GFLOP/s): training and extraction are 16-42x slower. Every AVX-512 ISA
    level oneDNN accepts (AVX512_CORE ... AVX10_1_512_AMX, ALL) does this; capped at AVX2, every
    convolution is `x64:gemm:jit`. So on AVX-512 CPUs we set ONEDNN_MAX_CPU_ISA=AVX2; on other CPUs
    oneDNN's own choice is already AVX2-or-lower and nothing is set.
  - numpy 1.26's OpenBLAS 0.3.23 can fail to recognise a newer AVX-512 CPU and fall back to a
    generic kernel (seen: Prescott, 40 GFLOP/s sgemm instead of 288 with Cooperlake). OpenBLAS reads
    OPENBLAS_CORETYPE when numpy loads it, so on AVX-512 CPUs we name the kernel for the CPU's
    features. After numpy is loaded, `check_blas_kernel` compares the kernel OpenBLAS reports
    against the CPU and warns, naming the variable, where it is a weaker one.
A value the user set (ONEDNN_MAX_CPU_ISA or the older DNNL_MAX_CPU_ISA; OPENBLAS_CORETYPE) always
wins. Child processes inherit what we set; MARKER lists those variables, so that a child tells our
choice from the user's.
"""
import contextlib
import os
import platform
import re
from collections import Counter

MARKER = "METRIC_LEARN_RUNTIME_ENV"
ONEDNN_VARS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
BLAS_VAR = "OPENBLAS_CORETYPE"
ONEDNN_ISA_FOR_AVX512 = "AVX2"
AVX512_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd")
# OpenBLAS kernel names (lower case) by the widest vector ISA they use.
_AVX512_KERNELS = {"skylakex", "cooperlake", "sapphirerapids"}
_AVX2_KERNELS = _AVX512_KERNELS | {"haswell", "zen", "excavator"}

_state = {"configured": False, "messages": [], "logged": False}


def _cpuinfo_field(name, cpuinfo_path):
    """The value of the first `name : value` line of /proc/cpuinfo, or None."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    """The CPU feature flags of the first processor in /proc/cpuinfo (empty where there is none)."""
    return frozenset((_cpuinfo_field("flags", cpuinfo_path) or "").split())


def cpu_model(cpuinfo_path="/proc/cpuinfo"):
    """The first processor's model name from /proc/cpuinfo, or "unknown"."""
    return (_cpuinfo_field("model name", cpuinfo_path) or "unknown").strip()


def cpu_class(flags=None):
    """A label for timings and results: the CPU model and whether it has AVX-512."""
    flags = cpu_flags() if flags is None else flags
    return f"{cpu_model()}, {'with' if has_avx512(flags) else 'no'} AVX-512"


def has_avx512(flags):
    return all(flag in flags for flag in AVX512_FLAGS)


def _ours(environ):
    return set(filter(None, environ.get(MARKER, "").split(",")))


def _user_value(environ, names):
    """(name, value) of the first of `names` set in `environ` by the user (not by us), else None."""
    ours = _ours(environ)
    for name in names:
        if name in environ and name not in ours:
            return name, environ[name]
    return None


def user_onednn_cap(environ=None):
    """(name, value) of a oneDNN ISA cap the user set (not we), else None."""
    return _user_value(os.environ if environ is None else environ, ONEDNN_VARS)


def _is_x86(machine):
    return machine in ("x86_64", "amd64", "i686", "i386")


def choose_onednn_isa(environ, flags, machine):
    """(value to set or None, reason) for oneDNN's maximum CPU ISA."""
    user = _user_value(environ, ONEDNN_VARS)
    if user:
        return None, f"oneDNN CPU dispatch: {user[0]}={user[1]} set by the user (kept)"
    if not _is_x86(machine):
        return None, f"oneDNN CPU dispatch: oneDNN's default (a {machine} CPU; the AVX-512 fallback is x86 only)"
    if has_avx512(flags):
        return ONEDNN_ISA_FOR_AVX512, (
            f"oneDNN CPU dispatch: ONEDNN_MAX_CPU_ISA={ONEDNN_ISA_FOR_AVX512} (this CPU has AVX-512, where oneDNN "
            f"runs MindSpore's NCHW convolutions with reference kernels; capped at AVX2 they are JIT GEMM, "
            f"measured 16-42x faster; export ONEDNN_MAX_CPU_ISA to choose otherwise)")
    return None, "oneDNN CPU dispatch: oneDNN's default (no AVX-512 on this CPU: its JIT kernels are used as they are)"


def blas_kernel_for(flags):
    """The OpenBLAS kernel name matching the CPU's widest vector ISA, or None below AVX2."""
    if has_avx512(flags):
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


def choose_blas_kernel(environ, flags, machine):
    """(value to set or None, reason) for OPENBLAS_CORETYPE, read by numpy's OpenBLAS when it loads."""
    user = _user_value(environ, (BLAS_VAR,))
    if user:
        return None, f"OpenBLAS kernel: {BLAS_VAR}={user[1]!r} set by the user or the environment (kept)"
    if _is_x86(machine) and has_avx512(flags):
        kernel = blas_kernel_for(flags)
        return kernel, (f"OpenBLAS kernel: {BLAS_VAR}={kernel} (an AVX-512 CPU, which OpenBLAS 0.3.23's detection "
                        f"can miss and then run a generic kernel)")
    return None, "OpenBLAS kernel: OpenBLAS's own CPU detection"


def configure(environ=None, flags=None, machine=None):
    """Set the variables chosen for this CPU in `environ` (default os.environ); returns the reasons.

    Idempotent for os.environ: a second call does nothing. Must run before numpy (OpenBLAS) loads and
    before MindSpore's first CPU kernel (oneDNN).
    """
    own_process = environ is None
    if own_process and _state["configured"]:
        return list(_state["messages"])
    environ = os.environ if environ is None else environ
    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    ours = _ours(environ)
    messages = []
    for var, (value, reason) in ((ONEDNN_VARS[0], choose_onednn_isa(environ, flags, machine)),
                                 (BLAS_VAR, choose_blas_kernel(environ, flags, machine))):
        if value is not None:
            environ[var] = value
            ours.add(var)
        elif var in ours:
            # Set by a parent process of ours, but here the user's value or the library default applies.
            environ.pop(var, None)
            ours.discard(var)
        messages.append(reason)
    if ours:
        environ[MARKER] = ",".join(sorted(ours))
    else:
        environ.pop(MARKER, None)
    # MindSpore's C++ side logs through glog: WARNING and above are kept (2), its INFO flood is not.
    environ.setdefault("GLOG_v", "2")
    if own_process:
        _state.update(configured=True, messages=messages)
    return messages


@contextlib.contextmanager
def onednn_uncapped(environ=None):
    """Lift our oneDNN cap (not the user's) inside the block, for a library with its own oneDNN that reads
    ONEDNN_MAX_CPU_ISA when it first runs: OpenVINO's CPU plugin, whose blocked-layout AVX-512 kernels are
    fast (the cap is for MindSpore's NCHW convolutions) and which, capped at AVX2, has no bf16 kernels either.
    MindSpore's own oneDNN, loaded separately, still sees the cap after the block."""
    environ = os.environ if environ is None else environ
    lifted = {name: environ.pop(name) for name in ONEDNN_VARS if name in environ and name in _ours(environ)}
    try:
        yield
    finally:
        environ.update(lifted)


def blas_kernel_warning(kernel, flags, environ):
    """A warning text if OpenBLAS's `kernel` is weaker than this CPU supports (None if it fits or the user chose)."""
    expected = blas_kernel_for(flags)
    if not kernel or expected is None or _user_value(environ, (BLAS_VAR,)):
        return None
    fits = _AVX512_KERNELS if has_avx512(flags) else _AVX2_KERNELS
    if kernel.lower() in fits:
        return None
    return (f"numpy's OpenBLAS runs its {kernel!r} kernel on a CPU that supports {expected!r} (its CPU detection "
            f"failed): matrix products are several times slower; set {BLAS_VAR}={expected} before starting Python")


def numpy_blas_kernels():
    """Kernel names of numpy's OpenBLAS (threadpoolctl's `architecture`); other packages bundle their own
    (opencv-python's OpenBLAS 0.3.3 always reports Prescott, and numpy never calls it)."""
    import numpy
    from threadpoolctl import threadpool_info

    libs = [info for info in threadpool_info() if info.get("internal_api") == "openblas"]
    numpy_dir = os.path.dirname(os.path.abspath(numpy.__file__))
    own = [info for info in libs if os.path.dirname(info["filepath"]) in (numpy_dir + ".libs", numpy_dir)]
    return [info.get("architecture") for info in (own or libs)]


def check_blas_kernel(logger):
    """Log numpy's OpenBLAS kernel; warn if it is weaker than the CPU supports (loads numpy)."""
    flags = cpu_flags()
    for kernel in numpy_blas_kernels():
        warning = blas_kernel_warning(kernel, flags, os.environ)
        if warning:
            logger.warning(warning)
        else:
            logger.info("OpenBLAS kernel in use: %s", kernel)


def log_choices(logger):
    """Log this process's choices at INFO, and check numpy's BLAS kernel; once per process."""
    if _state["logged"]:
        return
    _state["logged"] = True
    for message in configure():
        logger.info(message)
    check_blas_kernel(logger)


_VERBOSE_EXEC = re.compile(r"^onednn_verbose,(?:v\d+,)?(?:[^,]*,)?primitive,exec,cpu,([^,]+),([^,]+),([^,]*),", re.M)


def onednn_primitives(verbose_text):
    """Counter of (primitive kind, implementation, propagation) over the `exec` lines of ONEDNN_VERBOSE=1 output."""
    return Counter(match.groups() for match in _VERBOSE_EXEC.finditer(verbose_text))


def is_reference_implementation(name):
    """True for oneDNN's reference kernels: an implementation name with a `ref` part (`ref:any`,
    `jit_uni_ncsp:conv+ref:any`, `ref_int8:any`)."""
    return any(part == "ref" or part.startswith("ref_") for part in re.split(r"[:+]", name))


configure()
