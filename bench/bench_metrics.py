"""Time and memory of the retrieval metrics next to the seed's algorithm, faiss and the GEMM floor.

Usage: python bench/bench_metrics.py [--sizes 5000 20000 60502] [--dims 512 2048] [--quick]
           [--seed-max-n 20000] [--faiss-max-n 60502] [--output bench/results/metrics_results.md]

Features: SOP-like synthetic data (class sizes 2..12, mean ~5.3; class centre + Gaussian noise,
tuned so that the ranks look like a trained model's, Recall@1 ~0.6-0.7). Every method runs in its own
subprocess on the same features; its peak memory is the process's peak RSS above the RSS right
after the feature matrix was made (children of a process pool: each child's peak above its
start, summed).
  ours   src.evaluation.metrics.retrieval_metrics: Recall@1/10/100/1000, MAP@R, R-precision, exact.
  seed   the seed's algorithm re-implemented: normalise, Pool(4), full squared-distance rows,
         np.argsort of every whole row, Recall@1 only. Run up to --seed-max-n; beyond that its
         time is extrapolated as O(N^2 log N) from the largest N run at that dim.
  faiss  faiss-cpu IndexFlatIP exact search, k = 1000, on the normalised features (if installed);
         Recall@K and MAP@R are then read off the neighbour lists.
  floor  2*N^2*d flops at this machine's sgemm rate, measured with one large numpy matmul in
         the worker that runs `ours`, just before and just after it (the mean of the two; the
         machine may be shared).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import math
import multiprocessing
import os
import platform
import sys
import time

import numpy as np

from bench.common import print_result, read_result, run_script, time_calls, write_report
from src.runtime import env as runtime_env

# Noise per coordinate = NOISE_SCALE * d**0.25 gives Recall@1 ~0.6-0.7 and MAP@R ~0.3 at every d
# (an isotropic Gaussian class separates more easily as d grows).
NOISE_SCALE = 0.5
FAISS_K = 1000
SEED_POOL = 4
SEED_CHUNK = 256


def sop_like_labels(n, rng):
    """Class sizes 2..12 skewed towards small (mean ~5.3, like Stanford Online Products)."""
    sizes = np.clip(2 + rng.poisson(3.3, n), 2, 12)
    labels = np.repeat(np.arange(n), sizes)[:n]
    return labels


def make_features(n, dim, seed=0):
    """(n, dim) float32 features and labels, generated in chunks so no float64 copy exists."""
    rng = np.random.default_rng(seed)
    labels = sop_like_labels(n, rng)
    noise = NOISE_SCALE * dim ** 0.25
    centers = rng.standard_normal((labels.max() + 1, dim), dtype=np.float32)
    features = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 4096):
        stop = min(n, start + 4096)
        features[start:stop] = centers[labels[start:stop]]
        features[start:stop] += noise * rng.standard_normal((stop - start, dim), dtype=np.float32)
    return features, labels


def proc_status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return proc_status_kib("VmRSS") * 1024


def peak_above(baseline):
    return proc_status_kib("VmHWM") * 1024 - baseline


# ---------------------------------------------------------------- methods (run in a worker)

def start_ours():
    """Once per process, outside the timed call: logging set-up and numba's import and cached kernel
    load (compiled once per machine), by a call on 3 items."""
    from src.evaluation.metrics import retrieval_metrics
    from src.runtime.log import setup_logging
    setup_logging()
    retrieval_metrics(np.eye(3, dtype=np.float32), np.array([0, 0, 1]), ks=(1,))


def run_ours(features, labels):
    from src.evaluation.metrics import retrieval_metrics
    from src.runtime.log import get_logger
    return retrieval_metrics(features, labels, logger=get_logger())


_SEED_STATE = {}


def _seed_init():
    _SEED_STATE["baseline"] = reset_peak()


def _seed_rows(bounds):
    start, stop = bounds
    unit, sq = _SEED_STATE["unit"], _SEED_STATE["sq"]
    dist = sq[start:stop, None] + sq[None, :] - 2.0 * (unit[start:stop] @ unit.T)
    dist[np.arange(stop - start), np.arange(start, stop)] = np.inf
    nearest = np.argsort(dist, axis=1)[:, 0]
    return nearest, os.getpid(), peak_above(_SEED_STATE["baseline"])


def run_seed(features, labels):
    """The seed's Recall@1: full distance rows, every row argsorted, in a Pool(4)."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    _SEED_STATE["unit"] = unit
    _SEED_STATE["sq"] = np.sum(unit * unit, axis=1)
    n = len(unit)
    chunks = [(s, min(n, s + SEED_CHUNK)) for s in range(0, n, SEED_CHUNK)]
    child_peaks = {}
    with multiprocessing.get_context("fork").Pool(SEED_POOL, initializer=_seed_init) as pool:
        nearest = []
        for part, pid, peak in pool.imap(_seed_rows, chunks):
            nearest.append(part)
            child_peaks[pid] = max(child_peaks.get(pid, 0), peak)
    nearest = np.concatenate(nearest)
    return {"recall@1": float(np.mean(labels[nearest] == labels)),
            "children_peak_bytes": int(sum(child_peaks.values()))}


def run_faiss(features, labels):
    import faiss
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(unit.shape[1])
    index.add(unit)
    k = min(FAISS_K + 1, len(unit))
    _, neighbors = index.search(unit, k)
    n = len(unit)
    # Drop the query itself (usually first; ties may place it elsewhere).
    is_self = neighbors == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k - 1)
    keep = np.ones_like(neighbors, dtype=bool)
    keep[np.arange(n), drop] = False
    relevant = (labels[neighbors] == labels[:, None])[keep].reshape(n, k - 1)
    out = {f"recall@{kk}": float(relevant[:, :kk].any(axis=1).mean()) for kk in (1, 10, 100, 1000)}
    r = np.bincount(labels)[labels] - 1
    top = relevant[:, :r.max()]
    precision = np.cumsum(top, axis=1) / np.arange(1, top.shape[1] + 1)
    in_top_r = np.arange(top.shape[1])[None, :] < r[:, None]
    ap = np.sum(precision * top * in_top_r, axis=1) / np.maximum(r, 1)
    out["map@r"] = float(ap[r > 0].mean())
    return out


METHODS = {"ours": run_ours, "seed": run_seed, "faiss": run_faiss}


def worker(method, n, dim):
    features, labels = make_features(n, dim)
    rates = [sgemm_rate(dim)] if method == "ours" else []
    startup = time.perf_counter()
    if method == "ours":
        start_ours()
    startup = time.perf_counter() - startup
    baseline = reset_peak()
    cpu_start = cpu_seconds()
    start = time.perf_counter()
    result = METHODS[method](features, labels)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_start
    peak = peak_above(baseline) + result.pop("children_peak_bytes", 0)
    if rates:
        rates.append(sgemm_rate(dim))
    print_result({"seconds": seconds, "startup_seconds": startup, "cpu_seconds": cpu, "peak_bytes": peak,
                  "metrics": result,
                  "sgemm_rates": [wall for wall, _ in rates],
                  "sgemm_cpu_rates": [per_cpu for _, per_cpu in rates]})


def run_worker(method, n, dim):
    """One method in a worker subprocess (its stderr, the progress, passed through); the worker's result."""
    what = f"{method} at N={n} d={dim}"
    proc = run_script(__file__, ["--worker", method, "--n", str(n), "--dim", str(dim)], what, stderr=None)
    return read_result(proc, what)


# ---------------------------------------------------------------- driver

def cpu_seconds():
    """User + system CPU time of this process (all threads) and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def sgemm_rate(dim, repeats=5):
    """One large float32 matmul (4096 x dim) @ (dim x 16384), `repeats` times: (FLOP per wall
    second of the fastest, FLOP per CPU second over all)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4096, dim), dtype=np.float32)
    b = rng.standard_normal((16384, dim), dtype=np.float32)
    out = np.empty((4096, 16384), dtype=np.float32)
    np.matmul(a, b.T, out=out)
    flops = 2.0 * 4096 * 16384 * dim
    best = math.inf
    cpu_start = cpu_seconds()
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b.T, out=out)
        best = min(best, time.perf_counter() - start)
    return flops / best, flops * repeats / (cpu_seconds() - cpu_start)


def blas_header():
    """numpy's OpenBLAS kernel (as src/runtime/env.py left it) and its 4096^3 sgemm rate, on this CPU."""
    flags = runtime_env.cpu_flags()
    kernels = ", ".join(str(k) for k in runtime_env.numpy_blas_kernels()) or "not OpenBLAS"
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((4096, 4096), dtype=np.float32) for _ in range(2))
    a @ b
    best = min(time_calls(lambda: a @ b, 3))
    chosen = os.environ.get(runtime_env.BLAS_VAR)
    origin = ("unset" if chosen is None else f"{chosen} (src/runtime/env.py)"
              if runtime_env.BLAS_VAR in os.environ.get(runtime_env.MARKER, "") else f"{chosen!r} (the environment's)")
    return (f"BLAS: numpy's OpenBLAS kernel {kernels} (OPENBLAS_CORETYPE {origin}; the CPU supports "
            f"{runtime_env.blas_kernel_for(flags) or 'no AVX2'}, AVX-512: "
            f"{'yes' if runtime_env.has_avx512(flags) else 'no'}); sgemm 4096x4096x4096: "
            f"{2 * 4096 ** 3 / best / 1e9:.0f} GFLOP/s")


def fmt_s(seconds):
    return "—" if seconds is None else f"{seconds:.1f}" if seconds >= 10 else f"{seconds:.2f}"


def fmt_gb(num_bytes):
    return "—" if num_bytes is None else f"{num_bytes / 1e9:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000, 60502])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--quick", action="store_true", help="sizes 2000 5000, dim 256")
    parser.add_argument("--seed-max-n", type=int, default=20000)
    parser.add_argument("--faiss-max-n", type=int, default=60502)
    parser.add_argument("--output", help="also write the table (markdown) to this file")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.n, args.dim)
        return
    if args.quick:
        args.sizes, args.dims = [2000, 5000], [256]
    try:
        import faiss  # noqa: F401
        have_faiss = True
    except ImportError:
        have_faiss = False

    blas = blas_header()
    print(blas, file=sys.stderr, flush=True)
    load_start = os.getloadavg()
    rows = []
    seed_fit = {}
    for dim in args.dims:
        for n in sorted(args.sizes):
            print(f"N={n} d={dim} ...", file=sys.stderr, flush=True)
            row = {"n": n, "dim": dim}
            row["ours"] = run_worker("ours", n, dim)
            row["floor"] = 2.0 * n * n * dim / float(np.mean(row["ours"]["sgemm_rates"]))
            row["floor_cpu"] = 2.0 * n * n * dim / float(np.mean(row["ours"]["sgemm_cpu_rates"]))
            if n <= args.seed_max_n:
                row["seed"] = run_worker("seed", n, dim)
                seed_fit[dim] = (n, row["seed"]["seconds"])
            elif dim in seed_fit:
                n0, t0 = seed_fit[dim]
                row["seed_extrapolated"] = t0 * (n / n0) ** 2 * math.log(n) / math.log(n0)
            if have_faiss and n <= args.faiss_max_n:
                row["faiss"] = run_worker("faiss", n, dim)
            rows.append(row)
            print(table([row]), file=sys.stderr, flush=True)
    load_end = os.getloadavg()

    text = "\n".join([
        "Command: `python bench/bench_metrics.py " + " ".join(sys.argv[1:]) + "`",
        "",
        f"Machine: {len(os.sched_getaffinity(0))} cores ({platform.processor() or platform.machine()}), "
        f"numpy {np.__version__}; 1-minute load average at start {load_start[0]:.2f}, "
        f"at end {load_end[0]:.2f}.",
        "",
        blas,
        "",
        table(rows),
        "",
        "Times in seconds (wall), memory = peak RSS above the feature matrix in GB. ours start-up: once per "
        "process, before the timed call (logging set-up, numba's import and cached-kernel load; compiling the "
        "kernel, once per machine, adds about 0.9 s). sgemm: rate of one "
        "large matmul just before and just after `ours`; floor = 2*N^2*d / their mean. CPU s: user+system "
        "seconds of all threads; floor CPU s = 2*N^2*d / (flops per CPU second of those matmuls) -- less "
        "sensitive than wall time to other processes on the machine. seed: Recall@1 only; "
        "\"(extrapolated)\" = O(N^2 log N) from the largest N run. "
        f"faiss: IndexFlatIP, k={FAISS_K}. same as: Recall@1 equal to the seed's, all of faiss's "
        "Recall@1/10/100/1000 and MAP@R equal to ours."
        + ("" if have_faiss else " faiss-cpu not installed: no faiss column."),
    ])
    print(text)
    if args.output:
        write_report(args.output, text)


def table(rows):
    header = ("| N | d | ours s | ours start-up s | ours GB | sgemm GFLOP/s | floor s | ours/floor | ours CPU s "
              "| floor CPU s | CPU ratio | faiss s | faiss GB | ours/faiss | seed s | seed GB | seed/ours | R@1 "
              "| MAP@R | same as |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for row in rows:
        ours, seed, faiss = row["ours"], row.get("seed"), row.get("faiss")
        seed_s = seed["seconds"] if seed else row.get("seed_extrapolated")
        seed_text = fmt_s(seed_s) + (" (extrapolated)" if not seed and seed_s else "")
        m = ours["metrics"]
        agree = []
        if seed:
            agree.append("seed" if seed["metrics"]["recall@1"] == m["recall@1"] else "NOT seed")
        if faiss:
            same = all(abs(faiss["metrics"][key] - m[key]) < 1e-9 for key in faiss["metrics"])
            agree.append("faiss" if same else "NOT faiss")
        cells = [
            f"{row['n']:,}", str(row["dim"]), fmt_s(ours["seconds"]), fmt_s(ours.get("startup_seconds")),
            fmt_gb(ours["peak_bytes"]),
            "–".join(f"{r / 1e9:.0f}" for r in ours["sgemm_rates"]), fmt_s(row["floor"]),
            f"{ours['seconds'] / row['floor']:.2f}",
            fmt_s(ours["cpu_seconds"]), fmt_s(row["floor_cpu"]), f"{ours['cpu_seconds'] / row['floor_cpu']:.2f}",
            fmt_s(faiss["seconds"]) if faiss else "—", fmt_gb(faiss["peak_bytes"]) if faiss else "—",
            f"{ours['seconds'] / faiss['seconds']:.2f}" if faiss else "—",
            seed_text, fmt_gb(seed["peak_bytes"]) if seed else "—",
            f"{seed_s / ours['seconds']:.1f}" if seed_s else "—",
            f"{m['recall@1']:.4f}", f"{m['map@r']:.4f}", ", ".join(agree) or "—",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
