"""Training-step and feature-extraction speed of our MindSpore pipeline next to an equivalent PyTorch one.

Usage:
  python bench/bench_train.py --quick                        # tiny sizes, 2 steps: does it all run?
  python bench/bench_train.py [--rounds 3] [--steps 8] [--configs train224b9 ...] [--variants ms torch ...]
                              [--json results.json] [--markdown table.md] [--data-dir DIR]

Ours is what train.py runs for the triplet stage on CPU: `src.training.trainer.train` with
`load_config("triplet", "CPU")` (ResNet-50 v1.5 backbone, Tripletloss, Momentum, Model with the
config's amp_level and FixedLossScaleManager) fed by `create_dataset(..., layout="triplets")`; step
times are those TrainMonitor records (compile step excluded). Feature extraction is
`extract_features` over `create_dataset(..., layout="eval")`.

The reference is written here in PyTorch: the same ResNet-50 v1.5 (23,508,032 parameters), the
triplet loss on L2-normalised embeddings with sum reduction, SGD momentum 0.9 with weight decay
1e-4 (not on BN, as MindSpore's Momentum), fed by a DataLoader over src.data.dataset.ImageSource, that
is the same decoding and transforms, with the same worker count.

Triplet batches must be a multiple of 3 (consecutive anchor, positive, negative rows): the
configurations use batch 9, 15 and 33 where the issue measured 8, 16 and 32, in both frameworks.

Each measurement is a subprocess (so LD_PRELOAD=jemalloc applies to it alone); variants alternate
within a round, their order reversed every other round. A variant is a base and `+` modifiers:
  ms | torch
  +jemalloc          LD_PRELOAD jemalloc with the tuned MALLOC_CONF (bench/common.py)
  +jemalloc-default  LD_PRELOAD jemalloc with its default settings
  +jit=O0|O1|O2      (ms) set_context(jit_config={"jit_level": ...})
  +threads=N         (ms) device_context.cpu.op_tuning.threads_num(N) (src.runtime.context.set_cpu_threads; an
                     extraction sets every core without it, as eval.py);
                     (torch) torch.set_num_threads(N)
  +interop=N         (ms) mindspore.runtime.dispatch_threads_num(N); (torch) torch.set_num_interop_threads(N)
  +workers=N         data-pipeline workers (config num_parallel_workers / DataLoader num_workers)
  +threadworkers     (ms) pipeline workers as threads (python_multiprocessing=False)
  +prefetch=N        (ms) mindspore.dataset.config.set_prefetch_size(N); (torch) prefetch_factor=N
  +passive           OMP_WAIT_POLICY=PASSIVE (OpenMP threads sleep instead of spinning: matters on a busy machine)
  +env:KEY=VALUE     any environment variable for the measured process, as a user would export it
  +isa=X             ONEDNN_MAX_CPU_ISA=X as a user would export it (src/runtime/env.py keeps it); ALL is
                     oneDNN's default, i.e. MindSpore without our setting
  +conv=native|mindspore  (ms) config cpu_kernels: our CPU kernels or MindSpore's ops (default: the config's, native)
  +steps=N           timed steps (eval: batches, at least 2) for this variant, instead of --steps (for slow variants)
  +onnxruntime       (ms, extraction only) eval.py --backend onnxruntime: the backbone's ONNX export in ONNX Runtime
  +openvino          (ms, extraction only) eval.py --backend openvino: the same ONNX file in OpenVINO
                     (both fed by our data pipeline, threads from +threads=N or every core, as eval.py --threads;
                     the export is made before the warm-up batch and not timed)
  +precision=P       (with an engine) eval.py --precision bf16|int8: int8 calibrated on two batches of the
                     generated JPEGs (the quantization is not timed)
The extraction configurations end with a table of precisions: the fastest fp32, bf16 and int8 variant, their
ratios to each other, to the fastest torch variant and to the CPU's float32 peak (bench/cpu_peak.py).
Step time = from the batch being handed to the step until its loss is on the host (data waiting
excluded, as TrainMonitor does); cycle = time between consecutive step ends (data waiting included).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import functools
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np

from bench.common import JEMALLOC, measurement_env, print_result, read_result, run_script, write_json, write_report
from bench.cpu_peak import fp32_peak_gflops, peak_images_per_second
from bench.synthetic_images import make_jpegs
from bench.torch_models import torch_resnet50, torch_sgd, torch_triplet_loss
from src.deploy import engines  # noqa: E402
from src.deploy.quantize import PRECISIONS
from src.kernels import build as cpu_kernels  # noqa: E402

NUM_CLASSES = 20

# name: (kind, image size, batch). Triplet batches are multiples of 3 (the 8, 16, 32 -> 9, 15, 33).
CONFIGS = {
    "train224b9": ("train", 224, 9),
    "train224b15": ("train", 224, 15),
    "train64b33": ("train", 64, 33),
    "eval64b32": ("eval", 64, 32),
    "eval224b32": ("eval", 224, 32),
}
QUICK_SIZES = {"train": (32, 6), "eval": (32, 8)}
# ms: train.py as it runs (src/runtime/env.py's CPU dispatch); ms+isa=ALL: MindSpore's own default (oneDNN
# uncapped, reference convolutions on AVX-512 CPUs: one timed step, it is 15-50x slower there).
DEFAULT_VARIANTS = ("ms", "ms+onnxruntime", "ms+openvino", "ms+isa=ALL+steps=1", "torch", "torch+jemalloc")
ENGINES = tuple(engines.ENGINES)  # eval.py's other --backend values
BACKEND_VARIANTS = ("ms",) + tuple(f"ms+{engine}" for engine in ENGINES)


# ----------------------------------------------------------------------------------------------
# Variants and data

def parse_variant(name):
    """'ms+jemalloc+jit=O1' -> {"framework": "ms", "jemalloc": "tuned", "jit": "O1", ...}."""
    base, *mods = name.split("+")
    if base not in ("ms", "torch"):
        raise ValueError(f"variant {name!r}: must start with 'ms' or 'torch'")
    spec = {"framework": base, "jemalloc": None, "jit": None, "threads": None, "interop": None, "workers": None,
            "prefetch": None, "thread_workers": False, "env": {}, "steps": None, "engine": None, "conv": None,
            "precision": "fp32"}
    for mod in mods:
        key, sep, value = mod.partition("=")
        if key in ("jemalloc", "jemalloc-default") and not sep:
            spec["jemalloc"] = "tuned" if key == "jemalloc" else "default"
        elif key == "passive" and not sep:
            spec["env"]["OMP_WAIT_POLICY"] = "PASSIVE"
        elif key.startswith("env:") and sep:
            spec["env"][key[4:]] = value
        elif key == "isa" and value:
            spec["env"]["ONEDNN_MAX_CPU_ISA"] = value
        elif key in ENGINES and not sep and base == "ms":
            spec["engine"] = key
        elif key == "threadworkers" and not sep and base == "ms":
            spec["thread_workers"] = True
        elif key == "conv" and value in cpu_kernels.IMPLEMENTATIONS and base == "ms":
            spec["conv"] = value
        elif key == "precision" and value in PRECISIONS and base == "ms":
            spec["precision"] = value
        elif key == "jit" and value in ("O0", "O1", "O2") and base == "ms":
            spec["jit"] = value
        elif key in ("threads", "interop", "workers", "prefetch", "steps") and value.isdigit():
            spec[key] = int(value)
        else:
            raise ValueError(f"variant {name!r}: unknown or malformed modifier {mod!r} (see --help)")
    if spec["precision"] != "fp32" and not spec["engine"]:
        raise ValueError(f"variant {name!r}: +precision={spec['precision']} needs an engine (+onnxruntime or "
                         f"+openvino)")
    return spec


def write_list(folder, name, entries, pool):
    """A "path label" list of `entries` lines cycling over the `pool` generated files; file j has label j % C,
    C = 20 or fewer, so that every class has >= 3 images (triplets need two classes with >= 2)."""
    classes = max(2, min(NUM_CLASSES, min(entries, pool) // 3))
    with open(os.path.join(folder, name), "w") as f:
        for i in range(entries):
            j = i % pool
            f.write(f"{j}.jpg {j % classes}\n")
    return name


# ----------------------------------------------------------------------------------------------
# Worker: one measurement in this process

def _median(values):
    return float(np.median(values)) if len(values) else float("nan")


def run_ms_train(job):
    import mindspore as ms
    import mindspore.dataset as mds

    from src.runtime.config import load_config
    from src.runtime.context import init_context
    from src.training import trainer
    from src.training.callbacks import TrainMonitor

    spec, size, batch, steps = job["spec"], job["image_size"], job["batch"], job["steps"]
    overrides = [f"batch_size={batch}", f"image_size={size}", "epoch_size=1", "save_checkpoint=false",
                 "log_interval=100000"]
    if spec["workers"] is not None:
        overrides.append(f"num_parallel_workers={spec['workers']}")
    if spec["conv"]:
        overrides.append(f"cpu_kernels={spec['conv']}")
    cfg = load_config("triplet", "CPU", overrides=overrides)
    init_context("CPU")
    _apply_ms_options(ms, mds, spec)
    # One compile step (excluded by TrainMonitor) + `steps` timed ones, in one epoch.
    list_name = write_list(job["data_dir"], f"train_{os.getpid()}.txt", (steps + 1) * batch, job["pool"])

    monitors = []

    class RecordingMonitor(TrainMonitor):
        """TrainMonitor that also keeps the step-end times (for the cycle time, data waiting included)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.step_ends = []
            self.step_cpu = []
            self._cpu_start = 0.0
            monitors.append(self)

        def on_train_step_begin(self, run_context):
            super().on_train_step_begin(run_context)
            self._cpu_start = time.process_time()

        def on_train_step_end(self, run_context):
            super().on_train_step_end(run_context)
            self.step_ends.append(time.monotonic())
            self.step_cpu.append(time.process_time() - self._cpu_start)

    if spec["thread_workers"]:
        _use_thread_workers(trainer)
    # train() builds its own TrainMonitor; substituting the recording subclass keeps train() itself unchanged.
    trainer.TrainMonitor = RecordingMonitor
    out = tempfile.mkdtemp(prefix="bench_train_out_")
    try:
        result = trainer.train(trainer.TrainRequest("triplet", job["data_dir"], list_name, out), cfg)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        os.remove(os.path.join(job["data_dir"], list_name))
    monitor = monitors[0]
    cycles = np.diff(monitor.step_ends).tolist()
    return {"step_times": monitor.step_times, "cycle_times": cycles, "cpu_times": monitor.step_cpu[1:],
            "losses": result["losses"],
            "threads": spec["threads"] or "MindSpore's default", "workers": cfg.num_parallel_workers}


def _apply_ms_options(ms, mds, spec):
    from src.runtime.context import set_cpu_threads

    if spec["jit"]:
        ms.set_context(jit_config={"jit_level": spec["jit"]})
    if spec["threads"] is not None:
        set_cpu_threads(spec["threads"])
    if spec["interop"] is not None:
        ms.runtime.dispatch_threads_num(spec["interop"])
    if spec["prefetch"] is not None:
        mds.config.set_prefetch_size(spec["prefetch"])


def _use_thread_workers(module):
    """Make `module.create_dataset` use thread workers (python_multiprocessing=False)."""
    original = module.create_dataset

    def create_dataset(*args, **kwargs):
        kwargs["python_multiprocessing"] = False
        return original(*args, **kwargs)

    module.create_dataset = create_dataset


class _TimedBackbone:
    """Forwards to a Cell and records when each call starts (extract_features calls it once per batch)."""

    def __init__(self, cell):
        self.cell = cell
        self.starts = []
        self.cpu = []
        self.numpy_io = getattr(cell, "numpy_io", False)  # an engine of src.deploy.engines

    @property
    def training(self):
        return self.cell.training

    def set_train(self, mode=True):
        return self.cell.set_train(mode)

    def __call__(self, x):
        self.starts.append(time.monotonic())
        self.cpu.append(time.process_time())
        return self.cell(x)


def run_ms_eval(job):
    import mindspore as ms
    import mindspore.dataset as mds

    from src.data.dataset import create_dataset
    from src.deploy.calibration import read_calibration
    from src.deploy.engines import check_threads, extraction_engine
    from src.evaluation import features
    from src.models.resnet import ResNet50
    from src.runtime.config import load_config
    from src.runtime.context import init_context, set_cpu_threads

    spec, size, batch, steps = job["spec"], job["image_size"], job["batch"], job["steps"]
    cfg = load_config("triplet", "CPU")
    workers = cfg.num_parallel_workers if spec["workers"] is None else spec["workers"]
    init_context("CPU")
    _apply_ms_options(ms, mds, spec)
    make = functools.partial(create_dataset, python_multiprocessing=not spec["thread_workers"])
    ms.set_seed(cfg.seed)
    threads = check_threads(spec["threads"])  # as eval.py --threads: every core the process may use by default
    set_cpu_threads(threads)
    # As eval.py: the config's kernels for the mindspore backend, MindSpore's for an engine's export.
    kernels = "mindspore" if spec["engine"] else cpu_kernels.resolve(spec["conv"] or cfg.cpu_kernels, "CPU", threads)
    backbone = ResNet50(kernels=kernels)
    if spec["engine"]:
        calibration = None
        if spec["precision"] == "int8":
            name = write_list(job["data_dir"], f"calibration_{os.getpid()}.txt", 2 * batch, job["pool"])
            calibration = read_calibration(job["data_dir"], name, 2 * batch, eval_resize=cfg.eval_resize)
        try:
            backbone = extraction_engine(spec["engine"], backbone, None, size, batch, threads,
                                         precision=spec["precision"], calibration=calibration)
        finally:
            if calibration is not None:
                os.remove(calibration.list_file)
    lists = {}
    for what, count in (("warmup", batch), ("timed", steps * batch)):
        lists[what] = write_list(job["data_dir"], f"eval_{what}_{os.getpid()}.txt", count, job["pool"])
    try:
        # The first call compiles the graph: one batch, untimed. Every timed batch is full (same shape).
        warm = make(job["data_dir"], lists["warmup"], batch, size, "eval", num_parallel_workers=workers,
                    eval_resize=cfg.eval_resize)
        features.extract_features(backbone, warm, batch)
        timed = _TimedBackbone(backbone)
        dataset = make(job["data_dir"], lists["timed"], batch, size, "eval", num_parallel_workers=workers,
                       eval_resize=cfg.eval_resize)
        start = time.monotonic()
        feats, _ = features.extract_features(timed, dataset, steps * batch)
        total = time.monotonic() - start
    finally:
        for name in lists.values():
            os.remove(os.path.join(job["data_dir"], name))
    if feats.shape != (steps * batch, 2048):
        raise RuntimeError(f"extract_features returned {feats.shape}")
    return {"cycle_times": np.diff(timed.starts).tolist(), "cpu_times": np.diff(timed.cpu).tolist(),
            "total_s": total, "images": steps * batch, "batch": batch, "threads": threads, "workers": workers}


class _TokenDataset:
    """A torch map-style dataset over src.data.dataset.ImageSource: same decoding and transforms as ours."""

    def __init__(self, source, tokens):
        self.source = source
        self.tokens = list(tokens)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, i):
        return self.source[self.tokens[i]]


def _torch_setup(spec):
    import torch

    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    if spec["interop"] is not None:
        torch.set_num_interop_threads(spec["interop"])
    torch.manual_seed(1)
    return torch


def _torch_loader(torch, source, tokens, batch, spec, workers, drop_last):
    kwargs = {}
    if workers > 0 and spec["prefetch"] is not None:
        kwargs["prefetch_factor"] = spec["prefetch"]
    return torch.utils.data.DataLoader(_TokenDataset(source, tokens), batch_size=batch, shuffle=False,
                                       num_workers=workers, drop_last=drop_last, **kwargs)


def run_torch_train(job):
    torch = _torch_setup(job["spec"])  # before src (which imports mindspore.dataset)
    from src.data.dataset import ImageSource
    from src.data.image_list import read_image_list
    from src.data.samplers import TripletSampler
    from src.runtime.config import load_config

    spec, size, batch, steps = job["spec"], job["image_size"], job["batch"], job["steps"]
    cfg = load_config("triplet", "CPU")
    workers = cfg.num_parallel_workers if spec["workers"] is None else spec["workers"]
    list_name = write_list(job["data_dir"], f"train_{os.getpid()}.txt", (steps + 1) * batch, job["pool"])
    try:
        images = read_image_list(os.path.join(job["data_dir"], list_name), job["data_dir"])
    finally:
        os.remove(os.path.join(job["data_dir"], list_name))
    tokens = TripletSampler(images.labels, batch // 3, cfg.seed).epoch_tokens(0)
    source = ImageSource(images, size, train=True, hflip=cfg.hflip)
    loader = _torch_loader(torch, source, tokens, batch, spec, workers, drop_last=True)

    model = torch_resnet50()
    model.train()
    optimizer = torch_sgd(torch, model, cfg)

    step_times, ends, losses, cpu_times = [], [], [], []
    for image, _ in loader:
        start, cpu_start = time.monotonic(), time.process_time()
        loss = torch_triplet_loss(torch, model(image), cfg.margin)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        ends.append(time.monotonic())
        step_times.append(ends[-1] - start)
        cpu_times.append(time.process_time() - cpu_start)
    if len(losses) != steps + 1:
        raise RuntimeError(f"torch loader gave {len(losses)} batches, expected {steps + 1}")
    # The first step warms up (allocations, oneDNN primitive creation), as our compile step: not a sample.
    return {"step_times": step_times[1:], "cycle_times": np.diff(ends).tolist(), "cpu_times": cpu_times[1:],
            "losses": losses,
            "threads": torch.get_num_threads(), "workers": workers,
            "parameters": sum(p.numel() for p in model.parameters())}


def run_torch_eval(job):
    torch = _torch_setup(job["spec"])
    from src.data.dataset import ImageSource
    from src.data.image_list import read_image_list
    from src.runtime.config import load_config

    spec, size, batch, steps = job["spec"], job["image_size"], job["batch"], job["steps"]
    cfg = load_config("triplet", "CPU")
    workers = cfg.num_parallel_workers if spec["workers"] is None else spec["workers"]
    list_name = write_list(job["data_dir"], f"eval_{os.getpid()}.txt", steps * batch, job["pool"])
    try:
        images = read_image_list(os.path.join(job["data_dir"], list_name), job["data_dir"])
    finally:
        os.remove(os.path.join(job["data_dir"], list_name))
    source = ImageSource(images, size, train=False, eval_resize=cfg.eval_resize)
    model = torch_resnet50()
    model.eval()

    def extract(tokens):
        feats, starts, cpu = [], [], []
        with torch.inference_mode():
            for image, _ in _torch_loader(torch, source, tokens, batch, spec, workers, drop_last=False):
                starts.append(time.monotonic())
                cpu.append(time.process_time())
                feats.append(model(image).numpy())
        return np.concatenate(feats), starts, cpu

    extract(range(batch))  # warm-up batch, as our compile batch
    start = time.monotonic()
    feats, starts, cpu = extract(range(steps * batch))
    total = time.monotonic() - start
    if feats.shape != (steps * batch, 2048):
        raise RuntimeError(f"torch extraction returned {feats.shape}")
    return {"cycle_times": np.diff(starts).tolist(), "cpu_times": np.diff(cpu).tolist(), "total_s": total,
            "images": steps * batch, "batch": batch,
            "threads": torch.get_num_threads(), "workers": workers}


WORKERS = {("ms", "train"): run_ms_train, ("ms", "eval"): run_ms_eval,
           ("torch", "train"): run_torch_train, ("torch", "eval"): run_torch_eval}


def worker_main(job_json):
    from src.runtime.log import setup_logging

    setup_logging(logging.WARNING)
    job = json.loads(job_json)
    result = WORKERS[(job["spec"]["framework"], job["kind"])](job)
    result["maxrss_mb"] = _maxrss_mb()
    print_result(result)


def _maxrss_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------
# Orchestrator

def measure(variant, config, image_size, batch, steps, data_dir, pool, timeout):
    """Run one measurement in a subprocess; returns its result dict (with 'load' and 'wall_s')."""
    spec = parse_variant(variant)
    kind = CONFIGS[config][0]
    steps = spec["steps"] or steps
    if kind == "eval":
        steps = max(steps, 2)  # a batch time is the gap between two batches' starts
    job = {"spec": spec, "kind": kind, "image_size": image_size, "batch": batch, "steps": steps,
           "data_dir": data_dir, "pool": pool}
    env = measurement_env(spec["jemalloc"], spec["env"], spec["framework"])
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    proc = run_script(__file__, ["--worker", json.dumps(job)], f"{variant} / {config}", env=env, timeout=timeout)
    wall = time.monotonic() - start
    result = read_result(proc, f"{variant} / {config}")
    result.update(variant=variant, config=config, image_size=image_size, batch=batch, load=load_before, wall_s=wall)
    return result


METRICS = (("median_s", "Median step time", "median over all timed steps of all rounds (range of the per-round "
                                              "medians)"),
           ("min_s", "Fastest step", "the least-disturbed step: on a shared machine, the closest to quiet-machine "
                                     "speed"),
           ("cpu_s", "Median CPU time per step", "CPU seconds of all threads of the measured process (not its data "
                                                 "workers): the work done, whatever the contention"))


def summarize(results, configs, variants):
    """{config: {variant: {median_s, min_s, cpu_s, round_medians, ...}}}; eval times are per batch."""
    summary = {}
    for config in configs:
        kind = CONFIGS[config][0]
        key = "step_times" if kind == "train" else "cycle_times"
        summary[config] = {}
        for variant in variants:
            runs = [r for r in results if r["config"] == config and r["variant"] == variant]
            if not runs:
                continue
            samples = [t for r in runs for t in r[key]]
            summary[config][variant] = {
                "kind": kind, "image_size": runs[0]["image_size"], "batch": runs[0]["batch"], "runs": len(runs),
                "median_s": _median(samples), "min_s": float(min(samples)),
                "cpu_s": _median([t for r in runs for t in r["cpu_times"]]),
                "round_medians": [_median(r[key]) for r in runs],
                "cycle_s": _median([t for r in runs for t in r["cycle_times"]]),
            }
            if kind == "eval":
                summary[config][variant]["end_to_end_images_s"] = [r["images"] / r["total_s"] for r in runs]
    return summary


def format_tables(summary, variants):
    """One markdown table per metric: configs x variants, then ours / the best torch variant (time ratios)."""
    torch_variants = [v for v in variants if v.startswith("torch")]
    ms_variants = [v for v in variants if v.startswith("ms")] if torch_variants else []
    # What a user chooses with eval.py --backend: the best of them is "ours" in the target ratio.
    backends = [v for v in variants if v in BACKEND_VARIANTS] if torch_variants else []
    out = []
    for metric, title, note in METRICS:
        ms_alternatives = [v for v in variants if v.startswith("ms+")] if "ms" in variants else []
        head = (["configuration"] + variants + [f"{v} / best torch" for v in ms_variants] +
                (["best backend / best torch"] if len(backends) > 1 else []) +
                [f"{v} / ms" for v in ms_alternatives])
        lines = [f"{title}: {note}. Training: seconds per step; extraction: images/s.", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for per_variant in summary.values():
            if not per_variant:
                continue
            first = next(iter(per_variant.values()))
            kind, size, batch = first["kind"], first["image_size"], first["batch"]
            cells = [f"{'train' if kind == 'train' else 'extract'} {size}², batch {batch}"]
            for v in variants:
                s = per_variant.get(v)
                if s is None:
                    cells.append("—")
                    continue
                value = s[metric]
                cell = f"{value:.2f} s" if kind == "train" else f"{batch / value:.1f} img/s"
                if metric == "median_s" and s["runs"] > 1:
                    lo, hi = min(s["round_medians"]), max(s["round_medians"])
                    cell += f" ({lo:.2f}–{hi:.2f})" if kind == "train" else f" ({batch / hi:.1f}–{batch / lo:.1f})"
                cells.append(cell)
            torch_values = [per_variant[v][metric] for v in torch_variants if v in per_variant]
            best = min(torch_values) if torch_values else None
            for v in ms_variants:
                s = per_variant.get(v)
                cells.append(f"{s[metric] / best:.2f}" if s and best else "—")
            if len(backends) > 1:
                ours = [(per_variant[v][metric], v) for v in backends if v in per_variant]
                cells.append(f"{min(ours)[0] / best:.2f} ({min(ours)[1]})" if ours and best else "—")
            for v in ms_alternatives:
                s, ours = per_variant.get(v), per_variant.get("ms")
                cells.append(f"{s[metric] / ours[metric]:.2f}" if s and ours else "—")
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _fastest(per_variant, names):
    """(median images/s, name) of the fastest of `names` in a configuration's summary; (None, None) if none ran."""
    speeds = [(s["batch"] / s["median_s"], v) for v, s in per_variant.items() if v in names]
    return max(speeds) if speeds else (None, None)


def precision_table(summary, variants):
    """Per extraction configuration: the fastest fp32, bf16 and int8 variant (median images/s), and their ratios to
    the fastest fp32 one, to the fastest torch one and to the CPU's float32 peak ("" if nothing is in precision)."""
    by_precision = {p: [v for v in variants if v.startswith("ms") and parse_variant(v)["precision"] == p]
                    for p in PRECISIONS}
    if not by_precision["bf16"] and not by_precision["int8"]:
        return ""
    gflops, how = fp32_peak_gflops()
    lines = ["Precision: the fastest variant of each (median images/s) and its ratio to the fastest fp32 variant, to "
             f"the fastest torch variant and to the CPU's float32 peak ({how} = {gflops} GFLOP/s, over "
             "2 x bench/cpu_peak.resnet50_macs FLOPs per image).", "",
             "| configuration | precision | fastest variant | images/s | / fastest fp32 | / fastest torch | "
             "/ fp32 peak |", "|---|---|---|---|---|---|---|"]
    for per_variant in summary.values():
        first = next(iter(per_variant.values()), None)
        if first is None or first["kind"] != "eval":
            continue
        batch, size = first["batch"], first["image_size"]

        fp32 = _fastest(per_variant, by_precision["fp32"])[0]
        torch = _fastest(per_variant, [v for v in variants if v.startswith("torch")])[0]
        peak = peak_images_per_second(size)
        for precision in PRECISIONS:
            speed, name = _fastest(per_variant, by_precision[precision])
            if speed is None:
                continue
            ratios = [f"{speed / ref:.2f}" if ref else "—" for ref in (fp32, torch, peak)]
            lines.append(f"| extract {size}², batch {batch} | {precision} | {name} | {speed:.1f} | "
                         + " | ".join(ratios) + " |")
    return "\n".join(lines)


def wait_for_quiet(threshold, max_wait):
    """Poll the 1-minute load until it is below `threshold` or `max_wait` seconds passed; returns the load."""
    deadline = time.monotonic() + max_wait
    load = os.getloadavg()[0]
    while load >= threshold and time.monotonic() < deadline:
        print(f"1-minute load {load:.2f} >= {threshold}: waiting", file=sys.stderr, flush=True)
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (32², batch 6 / eval batch 8), 2 steps, 1 round: checks that it runs")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all variants (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (eval: batches) per measurement (default 5; quick 2)")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    parser.add_argument("--data-dir", default=None, help="folder for the generated JPEGs (default: a temporary one)")
    parser.add_argument("--pool", type=int, default=None, help="distinct generated JPEGs (default 200; quick 24)")
    parser.add_argument("--source-size", type=int, default=500, help="side of the generated JPEGs")
    parser.add_argument("--wait-quiet", type=float, default=0.0,
                        help="before starting, wait up to this many seconds for the 1-minute load < --quiet-load")
    parser.add_argument("--quiet-load", type=float, default=1.3)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--json", default=None, help="write every raw result here")
    parser.add_argument("--markdown", default=None, help="write the tables here")
    parser.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: print the tables of results saved earlier with --json (merged)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    for v in args.variants:
        parse_variant(v)
    if args.summarize:
        report_saved(args.summarize, args.configs, args.variants, args.markdown)
        return 0
    if any(parse_variant(v)["jemalloc"] for v in args.variants) and not os.path.exists(JEMALLOC):
        parser.error(f"{JEMALLOC} not found (apt-get install libjemalloc2)")
    rounds = args.rounds or (1 if args.quick else 3)
    steps = args.steps or (2 if args.quick else 5)
    pool = args.pool or (24 if args.quick else 200)
    source_size = 64 if args.quick else args.source_size
    if args.quick:  # every configuration of a kind shrinks to the same size: keep one of each kind
        args.configs = list({CONFIGS[c][0]: c for c in reversed(args.configs)}.values())[::-1]

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="bench_train_data_")
    try:
        t0 = time.monotonic()
        make_jpegs(data_dir, pool, source_size)
        print(f"{pool} JPEGs of {source_size}x{source_size} in {data_dir} ({time.monotonic() - t0:.1f} s)",
              file=sys.stderr, flush=True)
        if args.wait_quiet:
            wait_for_quiet(args.quiet_load, args.wait_quiet)
        loads = [os.getloadavg()]
        results = []
        for round_index in range(rounds):
            for config in args.configs:
                kind, size, batch = CONFIGS[config]
                if args.quick:
                    size, batch = QUICK_SIZES[kind]
                order = args.variants if round_index % 2 == 0 else args.variants[::-1]
                for variant in order:
                    if kind == "train" and parse_variant(variant)["engine"]:
                        continue  # an inference engine does not train
                    result = measure(variant, config, size, batch, steps, data_dir, pool, args.timeout)
                    results.append(result)
                    key = "step_times" if kind == "train" else "cycle_times"
                    print(f"round {round_index + 1}/{rounds} {config:12s} {variant:28s} median "
                          f"{_median(result[key]):.3f} s, cpu {_median(result['cpu_times']):.3f} s "
                          f"({len(result[key])} samples, threads "
                          f"{result['threads']}, workers {result['workers']}, load {result['load']:.2f}, "
                          f"wall {result['wall_s']:.0f} s, rss {result['maxrss_mb']:.0f} MB)",
                          file=sys.stderr, flush=True)
            loads.append(os.getloadavg())
    finally:
        if not args.data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)

    load_values = [x[0] for x in loads]
    note = (f"1-minute load average: start {load_values[0]:.2f}, after each round "
            f"{', '.join(f'{x:.2f}' for x in load_values[1:])}; {rounds} round(s) x {steps} timed steps.")
    if args.json:
        write_json(args.json, {"results": results, "loads": loads, "note": note, "argv": sys.argv})
    report(results, args.configs, args.variants, [note], args.markdown)
    return 0


def report(results, configs, variants, notes, markdown=None):
    """Print (and write to `markdown`) the tables of `results`, with `notes` below them."""
    summary = summarize(results, configs, variants)
    text = format_tables(summary, variants)
    precisions = precision_table(summary, variants)
    if precisions:
        text += "\n\n" + precisions
    text += "\n\nRatios: time per step (extraction: per image) of ours / the fastest torch variant on the same " \
            "metric; below 1 means ours is faster.\n" + "\n".join(notes)
    print(text)
    if markdown:
        write_report(markdown, text)


def report_saved(paths, configs, variants, markdown=None):
    """Tables over the results of earlier runs saved with --json (merged; rounds add up)."""
    results, notes = [], []
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        results += saved["results"]
        notes.append(f"{os.path.basename(path)}: {saved.get('note', '')}")
    present = {r["variant"] for r in results}
    variants = [v for v in variants if v in present] + sorted(present - set(variants))
    report(results, [c for c in configs if any(r["config"] == c for r in results)], variants, notes, markdown)


if __name__ == "__main__":
    sys.exit(main())
