"""oneDNN CPU dispatch settings for MindSpore 2.10: step time and the implementation of every primitive.

Usage:
  python bench/bench_cpu_isa.py [--settings ALL ours AVX2 ...] [--runs train64b33 eval224b32 ...] [--steps 3]
                                [--verbose-size 32] [--markdown bench/results/cpu_isa_results.md]

For each setting of ONEDNN_MAX_CPU_ISA (`ALL` = oneDNN's default, what MindSpore runs
when nothing is set; `ours` = what src/runtime/env.py chooses on this CPU) and each run, a subprocess times the bare
ResNet-50 step on one fixed random batch (no data pipeline): a training step is the triplet stage's
TrainOneStepCell (ResNet50 + Tripletloss + Momentum with the triplet config's lr, momentum and weight
decay), an extraction step is the backbone's forward in inference mode. The first call compiles and is
not timed; the median of `--steps` timed calls is reported. Every process starts from the same seed and
batch, so the loss after one step and the features must agree across settings: the largest relative
difference to the first setting is printed next to the time (a setting that changes results is not a
candidate).

Then, per setting, one training step and one extraction at `--verbose-size` run with ONEDNN_VERBOSE=1,
and every executed primitive is listed as kind / implementation / pass with its call count. Ours is the
fastest setting whose primitives include no reference kernel.
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import os
import sys
import tempfile

import numpy as np

from bench.common import (
    child_env,
    print_result,
    read_result,
    relative_difference,
    run_script,
    time_calls,
    write_report,
)
from src.runtime import env as runtime_env

RUNS = {"train64b33": ("train", 64, 33), "train224b9": ("train", 224, 9),
        "eval64b32": ("eval", 64, 32), "eval224b32": ("eval", 224, 32)}
SETTINGS = ("ALL", "ours", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX", "SSE41", "AVX512_CORE", "AVX512_CORE_VNNI",
            "AVX512_CORE_BF16", "AVX10_1_512", "AVX10_1_512_AMX")


def worker(kind, size, batch, steps, features_path):
    import mindspore as ms
    from mindspore import nn

    from src.losses.triplet import Tripletloss
    from src.models.resnet import ResNet50
    from src.runtime.config import load_config

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(1)
    cfg = load_config("triplet", "CPU")
    net = ResNet50()
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
    if kind == "train":
        labels = np.array([[t, t, (t + 1) % (batch // 3)] for t in range(batch // 3)]).reshape(-1)
        optimizer = nn.Momentum(net.trainable_params(), cfg.lr_max, cfg.momentum, weight_decay=cfg.weight_decay)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, Tripletloss(margin=cfg.margin)), optimizer)
        step.set_train(True)
        y = ms.Tensor(labels.astype(np.int32))
        call = lambda: step(x, y).asnumpy()  # noqa: E731
    else:
        net.set_train(False)
        call = lambda: net(x).asnumpy()  # noqa: E731
    first = call()  # compiles; its output is the one compared across settings
    times = time_calls(call, steps)
    np.save(features_path, np.asarray(first, dtype=np.float64))
    print_result({"times": times})


def setting_env(setting):
    """Environment for a measured process: `ours` lets src.runtime.env choose, anything else is
    ONEDNN_MAX_CPU_ISA=<setting> as a user would export it (ALL is oneDNN's default: no cap)."""
    env = child_env({k: v for k, v in os.environ.items() if k not in (*runtime_env.ONEDNN_VARS, runtime_env.MARKER)})
    if setting != "ours":
        env["ONEDNN_MAX_CPU_ISA"] = setting
    return env


def run_worker(setting, kind, size, batch, steps, out_dir, verbose=False, timeout=3600):
    path = os.path.join(out_dir, f"{setting}_{kind}_{size}_{batch}_{int(verbose)}.npy")
    env = setting_env(setting)
    if verbose:
        env["ONEDNN_VERBOSE"] = "1"
    what = f"{setting} {kind} {size}"
    proc = run_script(__file__, ["--worker", kind, str(size), str(batch), str(steps), path], what, env=env,
                      timeout=timeout)
    result = read_result(proc, what)
    result["output"] = np.load(path)
    if verbose:
        result["primitives"] = runtime_env.onednn_primitives(proc.stdout)
        isa = [line for line in proc.stdout.splitlines() if ",info,cpu,isa:" in line]
        result["isa"] = isa[0].split("isa:", 1)[1].strip() if isa else "?"
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS))
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=3, help="timed calls per measurement")
    parser.add_argument("--slow-steps", type=int, default=1,
                        help="timed calls where the setting runs reference kernels (seen in its verbose pass)")
    parser.add_argument("--verbose-size", type=int, default=32, help="image side of the ONEDNN_VERBOSE pass")
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--worker", nargs=5, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, size, batch, steps, path = args.worker
        worker(kind, int(size), int(batch), int(steps), path)
        return 0

    flags = runtime_env.cpu_flags()
    header = (f"CPU: {runtime_env.cpu_model()}; AVX-512: {'yes' if runtime_env.has_avx512(flags) else 'no'}; flags: "
              f"{' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx', 'fma'))))}; ours on this CPU: "
              f"ONEDNN_MAX_CPU_ISA={runtime_env.choose_onednn_isa({}, flags, 'x86_64')[0] or '(unset)'}")
    print(header, file=sys.stderr, flush=True)
    out_dir = tempfile.mkdtemp(prefix="bench_cpu_isa_")
    verbose, reference_impls = {}, {}
    for setting in args.settings:
        found = merge_verbose(run_worker(setting, kind, args.verbose_size, batch, 0, out_dir, verbose=True)
                            for kind, batch in (("train", 6), ("eval", 6)))
        verbose[setting] = found
        reference_impls[setting] = sorted({impl for (_, impl, _) in found["primitives"]
                                           if runtime_env.is_reference_implementation(impl)})
        print(f"verbose {setting}: isa {found['isa']}; reference kernels: {reference_impls[setting] or 'none'}",
              file=sys.stderr, flush=True)

    timings, reference_out = {}, {}
    for run in args.runs:
        kind, size, batch = RUNS[run]
        for setting in args.settings:
            steps = args.slow_steps if reference_impls[setting] else args.steps
            result = run_worker(setting, kind, size, batch, steps, out_dir)
            reference_out.setdefault(run, result["output"])
            diff = relative_difference(result["output"], reference_out[run])
            timings[(run, setting)] = (float(np.median(result["times"])), len(result["times"]), diff)
            print(f"{run:11s} {setting:17s} {timings[(run, setting)][0]:8.3f} s ({len(result['times'])} calls), "
                  f"output vs {args.settings[0]}: {diff:.1e}", file=sys.stderr, flush=True)
    text = format_report(header, args, verbose, reference_impls, timings)
    print(text)
    if args.markdown:
        write_report(args.markdown, text)
    return 0


def merge_verbose(results):
    results = list(results)
    total = results[0]["primitives"].copy()
    for r in results[1:]:
        total.update(r["primitives"])
    return {"primitives": total, "isa": results[0]["isa"]}


def format_report(header, args, verbose, reference_impls, timings):
    note = (f"Step time (median; s), bare step on a fixed batch; `ALL` = oneDNN's default (what runs with "
            f"ONEDNN_MAX_CPU_ISA unset). Ratio = time / the fastest setting's. Output: largest relative difference "
            f"of the loss (training) or features (extraction) to `{args.settings[0]}`.")
    lines = [header, "", note, ""]
    head = ["setting", "oneDNN ISA", "reference kernels"] + [f"{r}" for r in args.runs]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    best = {run: min(timings[(run, s)][0] for s in args.settings) for run in args.runs}
    for setting in args.settings:
        cells = [setting, verbose[setting]["isa"], ", ".join(reference_impls[setting]) or "none"]
        for run in args.runs:
            t, n, diff = timings[(run, setting)]
            cells.append(f"{t:.3f} s ({t / best[run]:.1f}x; output {diff:.0e})")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"oneDNN primitives executed by one training step + one extraction at {args.verbose_size}², "
                  "batch 6 (ONEDNN_VERBOSE=1): kind, implementation, pass: calls.", ""]
    seen = {}
    for setting in args.settings:
        key = tuple(sorted(verbose[setting]["primitives"].items()))
        seen.setdefault(key, []).append(setting)
    for key, settings in seen.items():
        lines.append(f"- {', '.join(settings)}:")
        for (kind, impl, prop), count in sorted(key, key=lambda item: (item[0][0], item[0][2], item[0][1])):
            mark = " **(reference)**" if runtime_env.is_reference_implementation(impl) else ""
            lines.append(f"  - {kind} `{impl}` {prop}: {count}{mark}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
