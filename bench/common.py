"""What the bench scripts share: the repository's path, child processes and their result lines, timing, the
machine's label for reports, the demo photo set, and writing reports (atomically, through src.runtime.atomic_file).
The measured results are kept in bench/results/, which the pages of docs/ link."""
import json
import os
import subprocess
import sys
import time

import numpy as np

from src.runtime import env as runtime_env
from src.runtime.atomic_file import atomic_path, write_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A worker subprocess prints its result as one line: this tag, then JSON.
RESULT_TAG = "BENCH_RESULT "
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
TUNED_MALLOC_CONF = "oversize_threshold:0,background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"


# ----------------------------------------------------------------------------------------------
# Child processes

def child_env(environ=None, **overrides):
    """Environment for a child process (`environ`, default this one's): the repository importable, MindSpore's C++
    log at errors only (GLOG_v 3; pass GLOG_v to choose), output unbuffered; `overrides` on top."""
    base = os.environ if environ is None else environ
    return {**base, "PYTHONPATH": ROOT, "GLOG_v": "3", "PYTHONUNBUFFERED": "1", **overrides}


def measurement_env(jemalloc=None, extra=None, framework="ms"):
    """Environment for a measured process: child_env(), without an inherited allocator; `jemalloc` None,
    "tuned" or "default" preloads jemalloc (tuned: with TUNED_MALLOC_CONF); `extra` variables on top, as
    the user's (src/runtime/env.py keeps them). PyTorch's own oneDNN runs uncapped (ONEDNN_MAX_CPU_ISA=ALL,
    its default) unless `extra` says otherwise: our cap is for MindSpore's kernels, and the worker imports src."""
    env = child_env()
    env.pop("LD_PRELOAD", None)
    env.pop("MALLOC_CONF", None)
    extra = dict(extra or {})
    if framework == "torch" and not any(name in extra for name in runtime_env.ONEDNN_VARS):
        extra["ONEDNN_MAX_CPU_ISA"] = "ALL"
    env.update(extra)
    ours = [name for name in env.get(runtime_env.MARKER, "").split(",") if name and name not in extra]
    env[runtime_env.MARKER] = ",".join(ours)
    if jemalloc:
        env["LD_PRELOAD"] = JEMALLOC
        if jemalloc == "tuned":
            env["MALLOC_CONF"] = TUNED_MALLOC_CONF
    return env


def run_script(script, args, what, env=None, timeout=None, stderr=subprocess.PIPE):
    """Run the bench script `script` (a path: its workers run as files, as a user runs them) with `args` in a child
    process (child_env() unless `env` is given); its CompletedProcess (text). A failure raises, naming `what`, the
    exit status and the output's last lines. `stderr=None` lets the child's stderr through (progress lines)."""
    proc = subprocess.run([sys.executable, os.path.abspath(script), *args], env=child_env() if env is None else env,
                          stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{(proc.stdout + (proc.stderr or ''))[-4000:]}")
    return proc


def print_result(result):
    """A worker's result, as read_result reads it back: one tagged JSON line on stdout."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def read_result(proc, what):
    """The result a worker printed with print_result (its last one); raises, naming `what`, if there is none."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        raise RuntimeError(f"{what} printed no result line:\n{(proc.stdout + (proc.stderr or ''))[-4000:]}")
    return json.loads(lines[-1][len(RESULT_TAG):])


# ----------------------------------------------------------------------------------------------
# Timing and comparing

def time_calls(call, count):
    """Wall seconds of each of `count` calls of `call()` (perf_counter)."""
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def relative_difference(a, b):
    """max |a - b| / max |b| (b all zero: the difference itself over 1e-30)."""
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# ----------------------------------------------------------------------------------------------
# Reports

def log(source, message):
    """A progress line on stderr: `[source HH:MM:SS] message`."""
    print(f"[{source} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_and_date():
    """The start of a report's header: the CPU class (model, with or without AVX-512), the cores, today's date."""
    return f"{runtime_env.cpu_class()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}"


def write_report(path, text):
    """Write a report (markdown or any text) to `path` atomically, ending with one newline."""
    write_atomic(path, text if text.endswith("\n") else text + "\n")


def write_json(path, data):
    """Write `data` as indented JSON to `path` atomically."""
    write_atomic(path, json.dumps(data, indent=1))


# ----------------------------------------------------------------------------------------------
# Data

def build_photo_set(path, size, grid, views, test_regions, photos=None, **viewpoint):
    """The demo's photo set (src/data/demo_photos.py, seed 0; `viewpoint`: rotation, flip, ...) with its train.txt
    and test.txt at `path`, built once: a finished set is kept, an interrupted build leaves nothing behind."""
    from src.data.demo_photos import PHOTOS, make_photo_dataset
    from src.data.sop_lists import prepare_lists

    if os.path.exists(os.path.join(path, "test.txt")):
        return
    with atomic_path(path, suffix=".partial", folder=True) as building:
        make_photo_dataset(building, grid, views, size, seed=0, photos=photos or PHOTOS, test_regions=test_regions,
                           **viewpoint)
        prepare_lists(building, building)
