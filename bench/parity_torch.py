"""Training parity with PyTorch: from the same start, on the same batches, does our training take PyTorch's steps?

    python bench/parity_torch.py [--steps 20] [--image-size 64] [--batch 60] [--stages softmax triplet ...]
                                 [--start trained|random|calm] [--pretrain-steps 200] [--pth resnet50.pth] [--new-fc]
                                 [--set KEY=VALUE ...] [--resync] [--json OUT]
                                 [--markdown bench/results/parity_results.md]
    python bench/parity_torch.py --write-fixture tests/fixtures/parity_reference.npz   (2 steps, 32 px, batch 12)

PyTorch (torch==2.13.0, pytorch-metric-learning==2.9.0) is a benchmark-only dependency, as in bench_train.py.

Start: torchvision's ResNet-50 layout with seeded random weights (bench/torchvision_reference.py's
random_state_dict, He-normal convolutions, BatchNorm statistics of order one, an fc layer over the training
classes), by default then trained by PyTorch for --pretrain-steps softmax steps on the demo photos (--start
trained: a stand-in for the ImageNet weights every stage of the seed starts from, which cannot be downloaded
here; cached beside the photos), or a given .pth; with --new-fc its fc layer drawn anew (the seed's softmax
stage puts a new classifier on its ImageNet backbone); written as a .pth and converted with
`python -m src.convert_weights --with_fc` (the user's path; the checkpoint records backbone_padding: symmetric,
i.e. torchvision's padding and BatchNorm eps). From the random weights themselves (--start random) the steps are
ill-conditioned: two correct float32 runs part after one or two steps (bench/results/parity_results.md has both). With
--start calm, the random weights with each residual branch's last BatchNorm scale a tenth as large
(calm_residuals), the first steps are well conditioned: the suite's fixture starts there (--write-fixture).
Batches: taken once from our data pipeline (create_dataset with the stage's sampler and augmentation, seed 1) on
the demo photos, saved, and fed to both sides in the same order. Hyper-parameters: the stage's CPU config
(momentum, weight decay, the per-step learning rates of get_lr over one epoch of `--steps` steps, label
smoothing, margins, the proxy learning-rate multiple), with batch_size, image_size and class_num set here.

Ours: src.training.trainer.build_training, the network, loss, optimizer (on CPU src/kernels/momentum.py's,
nn.Momentum's update bit for bit) and Model that train.py runs, in graph mode. PyTorch: the torchvision module
layout, the pytorch-metric-learning loss where the library has it
(TripletMarginLoss on the consecutive triplets with squared L2 on normalised embeddings and a sum;
MultiSimilarityLoss with MultiSimilarityMiner; ProxyAnchorLoss, its proxies set to ours' initial ones) and
torch code for the others (label-smoothed cross-entropy, the seed's quadruplet), and torch.optim.SGD set to do
what nn.Momentum does. Where the two conventions differ:
  - BatchNorm momentum: MindSpore's 0.9 is the weight of the old moving statistic, torch's 0.1 that of the batch:
    the same update, moving = 0.9 moving + 0.1 batch.
  - Weight decay: nn.Momentum adds weight_decay * w to the gradient of every parameter whose name has neither
    "gamma" nor "beta" (its default filter), i.e. not BatchNorm's scale and shift but the convolutions, the fc
    weight and bias and a loss's proxies; torch.optim.SGD decays what its param group says, so BatchNorm's
    weight and bias get a group with weight_decay 0.
  - Momentum: both v = momentum v + (g + wd w), w -= lr v, the first step from v = 0 (torch starts its buffer at
    g + wd w, the same); no dampening, no Nesterov (nn.Momentum's use_nesterov=False).
  - Loss scale: ours multiplies the loss by loss_scale and the optimizer divides the gradients by it (1 on CPU,
    the CPU config's, as train.py runs there); torch has none. Powers of two change no rounding.
  - Learning rate per step: ours indexes its lr array by the global step; torch's param groups are set to the
    same value before each step (proxies: times proxy_lr_multiplier).

Two floors run beside ours, each compared with PyTorch as ours is: PyTorch with its native convolution kernels
instead of oneDNN's (torch_native: the same steps, rounded otherwise), and PyTorch from the start with every
float moved by one float32 ulp (torch_ulp: how far rounding alone carries the stage's trajectory; where it parts
beyond the targets, no float32 implementation can be expected to stay within them).
--float64 adds a third (torch_f64): PyTorch computing in float64 from the same start (the float32 values, exactly),
compared with PyTorch in float32 as ours is: how far PyTorch's float32 run itself is from the computation's exact
trajectory, so how much of a target asks for PyTorch's float32 rounding rather than for its arithmetic.

--resync: each step from PyTorch's state. PyTorch runs first and keeps its state after every step (parameters,
moving statistics, momentum buffers); ours, and PyTorch with its native convolutions (the floor), set that state
before each of their steps (ours: the Parameters and the optimizer's moments), so each step's difference is that
step's alone and is not carried into the next. Where the default runs part because a trajectory amplifies
rounding (softmax at lr 0.3), this shows whether each step taken is still PyTorch's; the update compared is the
step's own (from PyTorch's state before it). The loading is checked by its effect: with the moments loaded at
half or none of their values the step's update differs by 0.6 or 1.2 (bench/results/parity_results.md).

Printed per stage: the loss of every step on both sides, the largest relative difference of the losses, of
every parameter and BatchNorm moving statistic after every step (max |ours - torch| / max |torch| per tensor)
and of their change from the start (the same measure on w_t - w_0, which is what training did), and the first
step at which the losses part by more than 1e-4 or a tensor by more than 1e-3, with the tensor. --json writes
{"stages": {name: {"max_rel_loss_diff", "max_rel_param_diff", "max_rel_update_diff", "steps", "per_step" (a row
per step), ..., "torch_native": {...}, "torch_ulp": {...}}}} (the floors' same keys, their own rows; with
--float64 "torch_f64" too).
"""
import _bootstrap  # noqa: F401  (first: the repository on sys.path, src.runtime.env before numpy loads)

# isort: split
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

from bench import common
from bench.torch_models import torchvision_resnet50
from src.runtime import env as runtime_env

STAGES = ("softmax", "triplet", "quadruplet", "multisimilarity", "proxyanchor")
PK_STAGES = ("quadruplet", "multisimilarity")
# ours, the reference, and the reference with its convolutions computed by other kernels: how far two correct
# float32 runs of the same steps drift apart (ReLU's kink turns rounding into a different gradient).
# And PyTorch itself from a start one float32 ulp away: how far rounding alone carries a stage's trajectory,
# whatever the kernels. The two floors are compared with PyTorch as ours is.
FLOORS = ("torch_native", "torch_ulp")
# --float64: PyTorch in float64 as one more floor of the free runs (a side takes 3-4x a float32 side's time).
FLOAT64 = "torch_f64"
FLOOR_NAMES = {"torch_native": "PyTorch with its native convolutions", "torch_ulp": "PyTorch from a start one ulp away",
               FLOAT64: "PyTorch in float64"}
# Each floor as a table's cell line names it (what it is, against PyTorch in float32 with oneDNN's kernels).
FLOOR_CELLS = {"torch_native": "PyTorch with its native convolutions against PyTorch (oneDNN's)",
               "torch_ulp": "PyTorch from the start moved by one float32 ulp against PyTorch",
               FLOAT64: "PyTorch in float64 against PyTorch (float32)"}
SIDES = ("ms", "torch") + FLOORS
# --resync: ours, and PyTorch with its native convolutions (the floor), take every step from PyTorch's state after
# the step before (parameters, moving statistics, momentum buffers): each step's difference alone, not carried on.
RESYNC = ("ms_resync", "torch_native_resync")
FLOOR_NAMES["torch_native_resync"] = FLOOR_NAMES["torch_native"]
LOSS_TOL, PARAM_TOL = 1e-4, 1e-3
DATA = {"grid": 4, "test_regions": 3, "views": 10, "rotation": 180.0, "flip": True}
# The suite's fixture: 2 steps at 32 px, batch 12, and a weight decay large enough (0.01) that a parameter decayed
# on one side only changes its update by far more than rounding does (at the stages' 1e-4 it is 0.1% of one).
# Its start: the seeded random weights with calm residual branches (calm_residuals, CALM_SCALE).
FIXTURE = {"steps": 2, "image_size": 32, "batch": 12, "weight_decay": 0.01}
CALM_SCALE = 0.1
# --start trained: the random weights after PyTorch softmax steps at a cosine lr from PRETRAIN["lr"], on batches
# drawn with another seed than the stages' (which use the config's, 1).
PRETRAIN = {"lr": 0.1, "seed": 2}
PROJECTIONS = 8  # sums of the count sketch per tensor in the fixture's digest of a training run


def log(message):
    print(message, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The shared start: data, batches, weights

def stage_config(stage, image_size, batch, class_num, steps, **overrides):
    """The stage's CPU config with this run's sizes (batch rounded down to the stage's layout)."""
    from src.runtime.config import load_config

    cfg = load_config(stage, "CPU", overrides=overrides)
    unit = 3 if stage == "triplet" else cfg.get("samples_each_class", 1) if stage in PK_STAGES else 1
    cfg.update(batch_size=batch - batch % unit, image_size=image_size, class_num=class_num, epoch_size=1,
               backbone_padding="symmetric", num_parallel_workers=1)
    cfg["steps"] = steps
    return cfg


def build_photos(path, image_size):
    """The demo photos at `image_size` px (built once at `path`); their training list."""
    from src.data.image_list import read_image_list

    common.build_photo_set(path, image_size, **DATA)
    return read_image_list(os.path.join(path, "train.txt"), path)


def pipeline_batches(data, images, cfg, stage):
    """The first cfg.steps batches our pipeline gives this stage ((images float32 NCHW, labels int32) each),
    continuing into the next epochs' orders when one epoch has fewer."""
    from src.data.dataset import create_dataset
    from src.losses.registry import get_stage

    batches, epoch = [], 0
    while len(batches) < cfg.steps:
        dataset = create_dataset(data, images, cfg.batch_size, cfg.image_size, get_stage(stage).layout, seed=cfg.seed,
                                 start_epoch=epoch, num_parallel_workers=1, hflip=cfg.hflip,
                                 samples_each_class=cfg.get("samples_each_class", 2),
                                 crop_scale_min=cfg.crop_scale_min)
        for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
            batches.append((row[0], row[1]))
            if len(batches) == cfg.steps:
                break
        epoch += 1
    return batches


def start_weights(pth, classes, seed=0, calm=False):
    """{torchvision name: array}: a given .pth (read without torch) or random_state_dict(seed, classes), with
    calm=True its residual branches calmed (calm_residuals)."""
    if pth:
        from src.models.torch_weights import read_weights

        return {name: np.asarray(value) for name, value in read_weights(pth).items()}
    from bench.torchvision_reference import random_state_dict

    state = random_state_dict(seed, classes=classes)
    return calm_residuals(state) if calm else state


def calm_residuals(state, scale=CALM_SCALE):
    """`state` with the scale (gamma) of every bottleneck's last BatchNorm times `scale`: each residual branch
    adds little to its shortcut at first, as torchvision's zero_init_residual (which zeroes them) starts a ResNet
    for large learning rates. The first steps from such random weights are well conditioned: two correct float32
    runs keep together through the fixture's 2 steps (bench/results/parity_results.md), where from random_state_dict's
    own scales they part by 10-50% at step 2. Not zero: a zero scale stops every gradient to the branch."""
    return {name: value * np.float32(scale) if name.endswith(".bn3.weight") else value
            for name, value in state.items()}


def with_new_fc(state, seed=0):
    """`state` with its fc layer drawn anew as torch.nn.Linear draws one (uniform within 1 / sqrt(fan_in)), seeded:
    the seed's softmax stage starts so, an ImageNet backbone under a new classifier for its classes."""
    rng = np.random.default_rng(seed)
    classes, features = state["fc.weight"].shape
    bound = 1.0 / np.sqrt(features)
    return dict(state, **{"fc.weight": rng.uniform(-bound, bound, (classes, features)).astype(np.float32),
                          "fc.bias": rng.uniform(-bound, bound, classes).astype(np.float32)})


def convert_in_process(state, ckpt):
    """The converter's own functions (what `python -m src.convert_weights --with_fc` runs), for the test."""
    from src.models.convert_weights import backbone_shapes, convert, save_converted

    save_converted(convert(state, backbone_shapes(), with_fc=True, source="random"), ckpt, "random")


# ---------------------------------------------------------------------------------------------------------
# Ours

def train_ours(stage, cfg, ckpt, batches, proxies=None, on_step=None, before_step=None):
    """Train build_training's Model on `batches` from `ckpt`; on_step(step, loss, {name: array}) after each step;
    before_step(step) -> {name: array} (parameters, moving statistics, "moments.<name>": the optimizer's moments)
    set before each step (--resync: each step from PyTorch's state). Returns the initial {name: array}
    (parameters, moving statistics, the loss's own)."""
    import mindspore as ms

    caller_mode = ms.get_context("mode")  # a test process calls this in-process: it gets its mode back
    ms.set_context(mode=ms.GRAPH_MODE)  # the device: the worker's init_context, or the test process's CPU
    try:
        return _train_ours(stage, cfg, ckpt, batches, proxies, on_step, before_step)
    finally:
        ms.set_context(mode=caller_mode)


def _train_ours(stage, cfg, ckpt, batches, proxies, on_step, before_step):
    import mindspore as ms
    import mindspore.dataset as mds
    from mindspore.train import Callback

    from src.models.checkpoint import load_strict
    from src.training.trainer import build_training

    ms.set_seed(cfg.seed)
    setup = build_training(stage, cfg, len(batches))
    load_strict(setup.network, ckpt)
    if proxies is not None:
        setup.loss.proxies.set_data(ms.Tensor(proxies))
    cells = (setup.network, setup.loss)

    params = {p.name: p for cell in cells for p in cell.get_parameters()}
    settable = params | {m.name: m for m in setup.optimizer.moments}

    def snapshot():
        return {name: p.asnumpy().copy() for name, p in params.items()}

    class Steps(Callback):
        def on_train_step_begin(self, run_context):
            if before_step:
                state = before_step(run_context.original_args().cur_step_num)
                for name, value in state.items():
                    settable[name].set_data(ms.Tensor(value))

        def on_train_step_end(self, run_context):
            args = run_context.original_args()
            out = args.net_outputs
            loss = float((out[0] if isinstance(out, (tuple, list)) else out).asnumpy())
            if on_step:
                on_step(args.cur_step_num, loss, snapshot())

    start = snapshot()
    source = [(np.asarray(x, np.float32), np.asarray(y, np.int32)) for x, y in batches]
    dataset = mds.GeneratorDataset(source, ["image", "label"], shuffle=False)
    setup.model.train(1, dataset, callbacks=[Steps()], dataset_sink_mode=False)
    return start


# ---------------------------------------------------------------------------------------------------------
# PyTorch

def torch_loss(torch, stage, cfg, proxies):
    """(loss(model, images, labels), the loss's own parameters) as PyTorch / pytorch-metric-learning compute it."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    if stage == "softmax":
        s = cfg.label_smooth_factor

        def softmax(model, x, y):
            logits = model.fc(model.features(x))
            target = torch.full_like(logits, s / (cfg.class_num - 1))
            target.scatter_(1, y[:, None], 1.0 - s)
            return -(target * torch.log_softmax(logits, 1)).sum(1).mean()
        return softmax, []
    if stage == "triplet":
        lib = losses.TripletMarginLoss(margin=cfg.margin, distance=distances.LpDistance(power=2),
                                       reducer=reducers.SumReducer())

        def triplet(model, x, y):
            rows = torch.arange(0, len(y), 3)
            return lib(model.features(x), y, (rows, rows + 1, rows + 2))
        return triplet, []
    if stage == "quadruplet":
        def quadruplet(model, x, y):  # the seed's margin sample mining; the library has no such loss
            e = torch.nn.functional.normalize(model.features(x), dim=1)
            d = torch.cdist(e, e) ** 2
            same = y[:, None] == y[None, :]
            pos = same & ~torch.eye(len(y), dtype=torch.bool)
            return torch.relu(d[pos].max() - d[~same].min() + cfg.margin)
        return quadruplet, []
    if stage == "multisimilarity":
        lib = losses.MultiSimilarityLoss(alpha=cfg.alpha, beta=cfg.beta, base=cfg.base)
        miner = miners.MultiSimilarityMiner(epsilon=cfg.miner_epsilon) if cfg.miner_epsilon >= 0 else None

        def multisimilarity(model, x, y):
            e = model.features(x)
            return lib(e, y, miner(e, y)) if miner else lib(e, y)
        return multisimilarity, []
    if stage == "proxyanchor":
        lib = losses.ProxyAnchorLoss(cfg.class_num, proxies.shape[1], margin=cfg.margin, alpha=cfg.alpha)
        lib.proxies.data = torch.tensor(proxies)

        def proxyanchor(model, x, y):
            return lib(model.features(x), y)
        return proxyanchor, [lib.proxies]
    raise ValueError(stage)


def train_torch(stage, cfg, state, batches, lr, proxies=None, on_step=None, native_conv=False, snapshots=True,
                moments=False, before_step=None, float64=False):
    """PyTorch's steps from `state` (torchvision names) on `batches`; on_step(step, loss, {our name: array}), the
    state None with snapshots=False (trained_start's 200 steps keep their losses only), with moments=True the
    momentum buffers in it too ("moments.<our name>", ours' names for them). before_step(step) -> {our name: array}
    as train_ours's, set before each step.
    native_conv: convolutions by PyTorch's own kernels instead of oneDNN's (the same steps, rounded otherwise).
    float64: every tensor, the batches and the loss's own in float64 (the start's float32 values, exactly); the
    snapshots stay float64.
    Returns ({our name: array} at the start, {torchvision name: array} at the end)."""
    import torch

    torch.backends.mkldnn.enabled = not native_conv
    from src.models.convert_weights import our_name

    torch.manual_seed(0)
    model = torchvision_resnet50(torch, cfg.class_num)
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state.items()})
    model.train()
    loss_fn, own = torch_loss(torch, stage, cfg, proxies)
    dtype = torch.float64 if float64 else torch.float32
    if float64:
        model.double()
        for p in own:
            p.data = p.data.double()
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    network = [p for p in model.parameters() if id(p) not in bn]
    if stage != "softmax":  # the metric stages train the backbone alone (no fc)
        network = [p for n, p in model.named_parameters() if id(p) not in bn and not n.startswith("fc.")]
    groups = [{"params": network, "weight_decay": cfg.weight_decay, "scale": 1.0},
              {"params": [p for p in model.parameters() if id(p) in bn], "weight_decay": 0.0, "scale": 1.0}]
    if own:
        groups.append({"params": own, "weight_decay": cfg.weight_decay, "scale": cfg.proxy_lr_multiplier})
    optimizer = torch.optim.SGD(groups, lr=float(lr[0]), momentum=cfg.momentum, dampening=0.0, nesterov=False)
    own_names = {"proxyanchor": "proxyanchor.proxies"}

    tensors = {}  # {our name: the tensor}, the state's (state_dict's share the parameters' memory)
    for name, value in model.state_dict().items():
        ours = our_name(name)
        if ours and (stage == "softmax" or not ours.startswith("fc.")):
            tensors[ours] = value
    own_named = {own_names[stage]: own[0]} if own else {}  # a loss's own: Proxy-Anchor's proxies alone
    tensors.update(own_named)
    trained = {id(p) for group in groups for p in group["params"]}
    params = {our_name(name): p for name, p in model.named_parameters()
              if id(p) in trained and our_name(name) in tensors} | own_named

    def snapshot():
        out = {name: value.detach().numpy().copy() for name, value in tensors.items()}
        if moments:
            out.update({f"moments.{name}": optimizer.state[p]["momentum_buffer"].numpy().copy()
                        for name, p in params.items() if "momentum_buffer" in optimizer.state[p]})
        return out

    def load(values):
        with torch.no_grad():
            for name, value in values.items():
                if name.startswith("moments."):
                    optimizer.state[params[name[len("moments."):]]]["momentum_buffer"] = torch.tensor(value)
                else:
                    tensors[name].copy_(torch.from_numpy(value))

    start = snapshot()
    for step, (x, y) in enumerate(batches):
        if before_step:
            load(before_step(step + 1))
        for group in optimizer.param_groups:
            group["lr"] = float(lr[step]) * group["scale"]
        optimizer.zero_grad()
        loss = loss_fn(model, torch.tensor(np.asarray(x, np.float32), dtype=dtype),
                       torch.tensor(np.asarray(y, np.int64)))
        loss.backward()
        optimizer.step()
        if on_step:
            on_step(step + 1, float(loss.detach()), snapshot() if snapshots else None)
    return start, {name: value.detach().numpy().copy() for name, value in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------
# Comparison

def max_rel(a, b):
    """max |a - b| / max |b| (0 where both are 0)."""
    scale = float(np.abs(b).max()) if b.size else 0.0
    diff = float(np.abs(a - b).max()) if a.size else 0.0
    return diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))


def compare_states(ours, theirs, ours0, theirs0):
    """(worst parameter diff, its tensor, worst update diff, its tensor) over the tensors both sides have."""
    if set(ours) != set(theirs):
        raise KeyError(f"tensors differ: ours only {sorted(set(ours) - set(theirs))[:5]}, "
                       f"torch only {sorted(set(theirs) - set(ours))[:5]}")
    params = {n: max_rel(ours[n], theirs[n]) for n in ours}
    updates = {n: max_rel(ours[n] - ours0[n], theirs[n] - theirs0[n]) for n in ours
               if np.abs(theirs[n] - theirs0[n]).max() > 0}
    worst_p = max(params, key=params.get)
    worst_u = max(updates, key=updates.get) if updates else None
    return params[worst_p], worst_p, (updates[worst_u] if worst_u else 0.0), worst_u


def rel_loss(a, b):
    return abs(a - b) / abs(b) if b != 0 else (0.0 if a == 0 else float("inf"))


def projection_digests(name, deltas, start):
    """A tensor's changes `deltas` (one per step) from `start`, each in PROJECTIONS + 3 numbers: a count sketch (a
    sparse random projection: each element added, with a random sign, to one of PROJECTIONS sums; as a dense
    Gaussian projection, the sketch of a difference has the squared norm of the difference in expectation, and it
    takes one pass instead of PROJECTIONS normal draws per element), seeded by the tensor's name and the same for
    every step (drawn once); |delta|; the component of delta along start (where weight decay acts:
    -lr wd |start|); |start|."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = np.asarray(start, np.float64).reshape(-1)
    code = rng.integers(0, 2 * PROJECTIONS, w.size, dtype=np.uint8)  # PROJECTIONS <= 128
    bucket, sign = code >> 1, np.where(code & 1, -1.0, 1.0)
    norm_w = np.linalg.norm(w)
    rows = []
    for delta in deltas:
        flat = np.asarray(delta, np.float64).reshape(-1)
        along = flat @ w / norm_w if norm_w > 0 else 0.0
        sketch = np.bincount(bucket, weights=sign * flat, minlength=PROJECTIONS)
        rows.append(np.concatenate([sketch, [np.linalg.norm(flat), along, norm_w]]))
    return rows


# ---------------------------------------------------------------------------------------------------------
# Workers (one process per framework and stage: torch and MindSpore each bring their own threads and oneDNN)

def worker(side, job_path):
    """One side's run of a job (run_stage's, or trained_start's: PyTorch alone, its final weights kept)."""
    with open(job_path) as f:
        job = json.load(f)
    from src.runtime.config import Config

    cfg = Config(job["cfg"])
    inputs = np.load(job["inputs"])
    batches = [(inputs[f"x{i}"], inputs[f"y{i}"]) for i in range(cfg.steps)]
    batches = [(from_uint8(x) if x.dtype == np.uint8 else x, y) for x, y in batches]
    proxies = inputs["proxies"] if "proxies" in inputs.files else None
    losses = []

    keep_moments = side == "torch" and bool(job.get("resync"))  # where the --resync sides take their steps from

    def on_step(step, loss, state):
        losses.append(loss)
        if state is not None:
            np.savez(os.path.join(job["out"], f"{side}_step{step:03d}.npz"),
                     **{k: v for k, v in state.items() if not k.startswith("moments.")})
            if keep_moments:
                np.savez(os.path.join(job["out"], f"torch_moments_step{step:03d}.npz"),
                         **{k: v for k, v in state.items() if k.startswith("moments.")})

    def torch_state(step):
        """PyTorch's state before `step` (after the step before): what a --resync side sets."""
        state = dict(np.load(os.path.join(job["out"], f"torch_step{step - 1:03d}.npz")))
        moments = os.path.join(job["out"], f"torch_moments_step{step - 1:03d}.npz")
        return state | dict(np.load(moments)) if step > 1 else state

    before_step = torch_state if side in RESYNC else None
    if side.startswith("ms"):
        from src.runtime.context import init_context

        init_context("CPU")
        start = train_ours(job["stage"], cfg, job["ckpt"], batches, proxies, on_step, before_step)
    else:
        state = dict(np.load(job["state"]))
        if side == "torch_ulp":
            state = one_ulp_away(state)
        start, final = train_torch(job["stage"], cfg, state, batches, inputs["lr"], proxies, on_step,
                                   native_conv=side.startswith("torch_native"), snapshots="final" not in job,
                                   moments=keep_moments, before_step=before_step, float64=side == FLOAT64)
        if "final" in job:
            np.savez(job["final"], **final)
    np.savez(os.path.join(job["out"], f"{side}_step000.npz"), **start)
    np.save(os.path.join(job["out"], f"{side}_losses.npy"), np.array(losses))


def one_ulp_away(state, seed=0):
    """`state` with every float element moved by one float32 ulp, up or down at random (seeded): a start that
    float32 cannot tell from `state` more closely, for the floor side torch_ulp."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, value in state.items():
        value = np.asarray(value)
        if value.dtype == np.float32:
            value = np.nextafter(value, np.where(rng.random(value.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
        out[name] = value
    return out


def run_job(out, stage, cfg, inputs, state_path, sides, **extra):
    """Write a job to `out` (its inputs, and job.json naming them, the start's weights and any `extra` key) and run
    it on each of `sides` in turn; {side: seconds}."""
    np.savez(os.path.join(out, "inputs.npz"), **inputs)
    job = {"stage": stage, "cfg": dict(cfg), "inputs": os.path.join(out, "inputs.npz"), "state": state_path,
           "out": out, **extra}
    with open(os.path.join(out, "job.json"), "w") as f:
        json.dump(job, f)
    timing = {}
    for side in sides:
        t0 = time.perf_counter()
        run_worker(side, os.path.join(out, "job.json"))
        timing[side] = time.perf_counter() - t0
    return timing


def run_worker(side, job_path):
    common.run_script(__file__, ["--worker", side, job_path], f"{side} worker")


def initial_proxies(cfg, seed=0):
    """Proxy-Anchor's initial proxies, given to both sides: He-normal (fan out), as ours draws them, but from numpy
    so that the suite's fixture needs only the seed."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((cfg.class_num, 2048)) * np.sqrt(2.0 / cfg.class_num)).astype(np.float32)


def trained_start(state, data, images, args, work):
    """The default start: `state` (torchvision names) after args.pretrain_steps PyTorch steps of the softmax stage's
    loss on the demo photos (batches of our pipeline with seed PRETRAIN["seed"], not the stages' seed, cosine lr
    from PRETRAIN["lr"]); cached in `data` (about 100 MB), as it takes about a second a step."""
    steps = args.pretrain_steps
    path = os.path.join(data, f"trained_start_{steps}steps_b{args.batch}_lr{PRETRAIN['lr']}_seed{PRETRAIN['seed']}.npz")
    if os.path.exists(path):
        log(f"start: {path} (cached)")
        return dict(np.load(path))
    from src.training.lr_generator import get_lr

    cfg = stage_config("softmax", args.image_size, args.batch, images.num_classes, steps, seed=PRETRAIN["seed"])
    out = os.path.join(work, "pretrain")
    os.makedirs(out, exist_ok=True)
    inputs = {"lr": get_lr(PRETRAIN["lr"], 0.0, PRETRAIN["lr"], 0, 1, steps, "cosine")}
    for i, (x, y) in enumerate(pipeline_batches(data, images, cfg, "softmax")):
        inputs[f"x{i}"], inputs[f"y{i}"] = to_uint8(x), y
    np.savez(os.path.join(out, "state.npz"), **state)
    partial = path[:-len(".npz")] + ".partial.npz"
    log(f"start: training the random weights for {steps} PyTorch softmax steps (batch {cfg.batch_size}, "
        f"{args.image_size} px), about a second each")
    timing = run_job(out, "softmax", cfg, inputs, os.path.join(out, "state.npz"), ["torch"], final=partial)
    losses = np.load(os.path.join(out, "torch_losses.npy"))
    os.replace(partial, path)
    shutil.rmtree(out)
    log(f"start: loss {losses[:10].mean():.3f} over the first 10 steps, {losses[-10:].mean():.3f} over the last "
        f"10 ({timing['torch']:.0f} s); cached as {path}")
    return dict(np.load(path))


def run_stage(stage, args, data, images, state, ckpt, work, sides=SIDES):
    classes = state["fc.weight"].shape[0]
    cfg = stage_config(stage, args.image_size, args.batch, classes, args.steps, **getattr(args, "overrides", {}))
    from src.training.lr_generator import get_lr

    lr = get_lr(cfg.lr_init, cfg.lr_end, cfg.lr_max, cfg.warmup_epochs, 1, cfg.steps, cfg.lr_decay_mode)
    batches = pipeline_batches(data, images, cfg, stage)
    out = os.path.join(work, stage)
    os.makedirs(out, exist_ok=True)
    inputs = {f"x{i}": x for i, (x, _) in enumerate(batches)} | {f"y{i}": y for i, (_, y) in enumerate(batches)}
    inputs["lr"] = lr
    if stage == "proxyanchor":
        inputs["proxies"] = initial_proxies(cfg)
    resync = any(side in RESYNC for side in sides)  # PyTorch keeps its momentum too (main runs it first)
    timing = run_job(out, stage, cfg, inputs, os.path.join(work, "state.npz"), sides, ckpt=ckpt, resync=resync)
    return cfg, inputs, out, timing


def compare_stage(stage, cfg, out, timing, sides=("ms",) + FLOORS):
    """{side: how that run of the stage compares with PyTorch's, step by step} (PyTorch's snapshots read once).
    A --resync side's update is its step's from PyTorch's state before it, against PyTorch's step from there."""
    torch_losses, torch0 = np.load(f"{out}/torch_losses.npy"), dict(np.load(f"{out}/torch_step000.npz"))
    runs = {side: {"losses": np.load(f"{out}/{side}_losses.npy"), "start": dict(np.load(f"{out}/{side}_step000.npz")),
                   "rows": [], "parted": None} for side in sides}
    before = torch0
    for step in range(1, cfg.steps + 1):
        theirs = dict(np.load(f"{out}/torch_step{step:03d}.npz"))
        for side, run in runs.items():
            ours = dict(np.load(f"{out}/{side}_step{step:03d}.npz"))
            ours0, theirs0 = (before, before) if side in RESYNC else (run["start"], torch0)
            p, p_name, u, u_name = compare_states(ours, theirs, ours0, theirs0)
            loss_diff = rel_loss(run["losses"][step - 1], torch_losses[step - 1])
            run["rows"].append({"step": step, "loss_ours": float(run["losses"][step - 1]),
                                "loss_torch": float(torch_losses[step - 1]), "rel_loss_diff": loss_diff,
                                "rel_param_diff": p, "param": p_name, "rel_update_diff": u, "update": u_name})
            if run["parted"] is None and (loss_diff > LOSS_TOL or p > PARAM_TOL):
                run["parted"] = {"step": step, "what": "loss" if loss_diff > LOSS_TOL else p_name}
        before = theirs
    results = {}
    for side, run in runs.items():
        rows, final = run["rows"], run["rows"][-1]
        results[side] = {
            "steps": cfg.steps, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
            "start_param_diff": compare_states(run["start"], torch0, run["start"], torch0)[0],
            "step1_rel_loss_diff": rows[0]["rel_loss_diff"], "step1_rel_param_diff": rows[0]["rel_param_diff"],
            "max_rel_loss_diff": max(r["rel_loss_diff"] for r in rows),
            "max_rel_param_diff": max(r["rel_param_diff"] for r in rows),
            "max_rel_param_diff_tensor": max(rows, key=lambda r: r["rel_param_diff"])["param"],
            "max_rel_update_diff": final["rel_update_diff"], "max_rel_update_diff_tensor": final["update"],
            "max_rel_step_update_diff": max(r["rel_update_diff"] for r in rows),
            "max_rel_step_update_diff_tensor": max(rows, key=lambda r: r["rel_update_diff"])["update"],
            "first_parting": run["parted"], "seconds": timing, "per_step": rows}
    return results


def summary(run):
    """One line of a side's comparison with PyTorch, for the log."""
    return (f"max rel loss diff {run['max_rel_loss_diff']:.2e}, max rel param diff {run['max_rel_param_diff']:.2e}, "
            f"first parting {run['first_parting']}")


def markdown(results, header, floors=FLOORS):
    """The table of `results` (ours' runs, each with its `floors`' under their names): the free runs', or with
    floors=RESYNC[1:] the --resync runs' (each step from PyTorch's state: the worst step's differences)."""
    def parted(r):
        return f"{r['first_parting']['step']} ({r['first_parting']['what']})" if r["first_parting"] else "none"

    if floors == RESYNC[1:]:
        cells = "ours against PyTorch / PyTorch with its native convolutions against PyTorch (oneDNN's), each step " \
                "taken from PyTorch's state after the step before (parameters, moving statistics, momentum)"
        columns = [("worst step: rel loss diff", "max_rel_loss_diff", None),
                   ("worst step: max rel param diff", "max_rel_param_diff", None),
                   ("worst step: max rel diff of the step's update (ours' worst tensor)", "max_rel_step_update_diff",
                    "max_rel_step_update_diff_tensor")]
    else:
        cells = " / ".join(["ours against PyTorch"] + [FLOOR_CELLS[side] for side in floors])
        columns = [("step 1: rel loss diff", "step1_rel_loss_diff", None),
                   ("step 1: max rel param diff", "step1_rel_param_diff", None),
                   ("all steps: max rel loss diff", "max_rel_loss_diff", None),
                   ("all steps: max rel param diff (ours' worst tensor)", "max_rel_param_diff",
                    "max_rel_param_diff_tensor")]
    lines = [header, "", f"Each cell: {cells}.", "",
             "| stage | steps | batch | " + " | ".join(title for title, _, _ in columns)
             + " | first step beyond 1e-4 / 1e-3 |", "|---" * (len(columns) + 4) + "|"]
    for stage, r in results.items():
        runs = [r] + [r[side] for side in floors]  # ours, then each floor
        row = [stage, str(r["steps"]), str(r["batch_size"])]
        row += [" / ".join(f"{run[key]:.1e}" for run in runs) + (f" ({r[tensor]})" if tensor else "")
                for _, key, tensor in columns]
        lines.append("| " + " | ".join(row + [" / ".join(parted(run) for run in runs)]) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# The fixture the suite checks without torch

def to_uint8(images):
    """The pipeline's uint8 pixels back from its normalised float32 batch (exact: checked by from_uint8)."""
    from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return np.rint(images * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]).astype(np.uint8)


def from_uint8(pixels):
    """normalize_chw's arithmetic on stored NCHW uint8 pixels: the pipeline's float32 batch, bit for bit."""
    from src.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    out = pixels.astype(np.float32)
    out -= IMAGENET_MEAN[:, None, None]
    out /= IMAGENET_STD[:, None, None]
    return out


def digests(states):
    """(tensor names, float32 array steps x tensors x (PROJECTIONS + 3)): the sketch digest of every tensor's
    change from step 0 after each step of a run's snapshots."""
    names = sorted(states[0])
    by_name = [projection_digests(name, [state[name] - states[0][name] for state in states[1:]], states[0][name])
               for name in names]
    return names, np.array(by_name, np.float32).transpose(1, 0, 2)


def write_fixture(path, work, data, images):
    """Run the FIXTURE sizes for every stage, and keep the batches (uint8), PyTorch's losses and a digest of its
    change of every tensor after each step: what tests/training/test_parity.py needs to train ours and compare,
    without torch."""
    state = start_weights(None, images.num_classes, calm=True)
    np.savez(os.path.join(work, "state.npz"), **state)
    ckpt = os.path.join(work, "start.ckpt")
    convert_in_process(state, ckpt)
    args = argparse.Namespace(steps=FIXTURE["steps"], image_size=FIXTURE["image_size"], batch=FIXTURE["batch"],
                              overrides={"weight_decay": FIXTURE["weight_decay"]})
    fixture = {"classes": np.int64(images.num_classes), "versions": np.array(versions())}
    for stage in STAGES:
        cfg, inputs, out, timing = run_stage(stage, args, data, images, state, ckpt, work)
        for side, r in compare_stage(stage, cfg, out, timing).items():
            diffs = ", ".join(f"{row['rel_loss_diff']:.1e}" for row in r["per_step"])
            log(f"{stage} {side} vs torch: relative loss differences per step {diffs}")
        for key, value in inputs.items():
            if key == "proxies":  # initial_proxies(cfg) draws them again
                continue
            if key.startswith("x"):
                value = to_uint8(value)
                assert np.array_equal(from_uint8(value), inputs[key]), "uint8 round trip is not exact"
            fixture[f"{stage}/{key}"] = value
        for side in SIDES:
            states = [dict(np.load(f"{out}/{side}_step{i:03d}.npz")) for i in range(cfg.steps + 1)]
            fixture[f"{stage}/{side}/losses"] = np.load(f"{out}/{side}_losses.npy")
            fixture[f"{stage}/names"], fixture[f"{stage}/{side}/digests"] = digests(states)
        shutil.rmtree(out)
    np.savez_compressed(path, **fixture)
    log(f"wrote {path} ({os.path.getsize(path)} bytes)")


def versions():
    import mindspore
    import pytorch_metric_learning
    import torch

    return [f"torch {torch.__version__}", f"pytorch-metric-learning {pytorch_metric_learning.__version__}",
            f"mindspore {mindspore.__version__}", f"cpu {runtime_env.cpu_class()}"]


# ---------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=60, help="batch size, rounded down to the stage's layout")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--start", choices=("trained", "random", "calm"), default="trained",
                        help="trained: the seeded random weights after --pretrain-steps PyTorch softmax steps on the "
                             "demo photos (a trained network, as the seed's stages start from); random: those "
                             "random weights themselves (ill-conditioned: two correct runs part within steps); "
                             "calm: those with each residual branch's last BatchNorm scale a tenth as large (the "
                             "suite fixture's start)")
    parser.add_argument("--pretrain-steps", type=int, default=200, help="softmax steps of --start trained")
    parser.add_argument("--pth", help="start from these torchvision weights (overrides --start)")
    parser.add_argument("--new-fc", action="store_true",
                        help="draw the start's fc layer anew (seeded), as the seed's softmax stage starts")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="change the stages' config (e.g. lr_max=0.03): to find what parts two runs")
    parser.add_argument("--resync", action="store_true",
                        help="ours and PyTorch with its native convolutions take each step from PyTorch's state "
                             "after the step before (parameters, moving statistics, momentum buffers): each step's "
                             "own difference, where the default runs carry every difference on")
    parser.add_argument("--float64", action="store_true",
                        help="one more floor: PyTorch in float64 against PyTorch in float32 (how far PyTorch's "
                             "float32 run is from the exact trajectory)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--markdown", help="write the table here (e.g. bench/results/parity_results.md)")
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "metric_learn_parity_data"))
    parser.add_argument("--work-dir", help="scratch folder (default: a temporary one, removed at the end)")
    parser.add_argument("--write-fixture", metavar="NPZ", help="write the suite's fixture (2 steps, 32 px, batch 12)")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return args
    if args.pretrain_steps < 1:
        parser.error(f"--pretrain-steps must be at least 1, got {args.pretrain_steps}")
    if args.resync and args.write_fixture:
        parser.error("--resync does not apply to --write-fixture (the fixture keeps the free runs)")
    if args.float64 and (args.resync or args.write_fixture):
        parser.error("--float64 is a floor of the free runs: not with --resync or --write-fixture")
    from src.runtime.config import ConfigError, parse_overrides

    try:  # a bad --set fails here, not after the start's training
        args.overrides = parse_overrides(args.set)
        for stage in args.stages:
            stage_config(stage, args.image_size, args.batch, 1, args.steps, **args.overrides)
    except ConfigError as err:
        parser.error(f"--set: {err}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(*args.worker)
    from src.runtime.log import setup_logging

    setup_logging()
    work = args.work_dir or tempfile.mkdtemp(prefix="parity_")
    os.makedirs(work, exist_ok=True)
    try:
        size = FIXTURE["image_size"] if args.write_fixture else args.image_size
        data = f"{args.data_dir}_{size}"
        images = build_photos(data, size)
        if args.write_fixture:
            return write_fixture(args.write_fixture, work, data, images)
        state = start_weights(args.pth, images.num_classes, calm=args.start == "calm")
        if not args.pth and args.start == "trained":
            state = trained_start(state, data, images, args, work)
        if args.new_fc:
            state = with_new_fc(state)
        np.savez(os.path.join(work, "state.npz"), **state)
        ckpt = os.path.join(work, "start.ckpt")
        pth = args.pth if args.pth and not args.new_fc else os.path.join(work, "start.pth")
        if pth != args.pth:
            from bench.torchvision_reference import write_pth

            write_pth(pth, state)
        subprocess.run([sys.executable, "-m", "src.convert_weights", pth, ckpt, "--with_fc"], cwd=common.ROOT,
                       check=True, env=common.child_env(), capture_output=True)
        # --resync: PyTorch's run first, its states (with momentum) are where the others take each step from
        sides, ours, floors = (("torch",) + RESYNC, RESYNC[0], RESYNC[1:]) if args.resync else (SIDES, "ms", FLOORS)
        if args.float64:
            sides, floors = sides + (FLOAT64,), floors + (FLOAT64,)
        results = {}
        for stage in args.stages:
            cfg, _, out, timing = run_stage(stage, args, data, images, state, ckpt, work, sides)
            compared = compare_stage(stage, cfg, out, timing, (ours,) + floors)
            results[stage] = r = compared[ours]
            for side in floors:  # each floor with its own per-step rows, as ours
                r[side] = compared[side]
            for row in r["per_step"]:
                log(f"{stage} step {row['step']:2d}: loss ours {row['loss_ours']:.7g} torch {row['loss_torch']:.7g} "
                    f"(rel {row['rel_loss_diff']:.1e}); params {row['rel_param_diff']:.1e} ({row['param']}); "
                    f"update {row['rel_update_diff']:.1e} ({row['update']})")
            log(f"{stage}: ours against PyTorch: {summary(r)}; "
                + "; ".join(f"{FLOOR_NAMES[side]} against PyTorch: {summary(r[side])}" for side in floors)
                + f"; {timing}")
            shutil.rmtree(out)
        start = f"--pth {os.path.basename(args.pth)}" if args.pth else {
            "random": "random weights", "calm": f"random weights, residual branches calmed (x{CALM_SCALE})",
            "trained": f"random weights + {args.pretrain_steps} PyTorch softmax steps"}[args.start]
        if args.new_fc:
            start += ", the fc layer drawn anew"
        if args.set:
            start += "; config changed: " + " ".join(args.set)
        if args.resync:
            start += "; each step from PyTorch's state (--resync)"
        header = (f"{common.machine_and_date()}; start: {start}; "
                  f"{args.steps} steps at {args.image_size} px, float32, CPU; " + "; ".join(versions()[:3]))
        table = markdown(results, header, floors)
        log(table)
        if args.markdown:
            common.write_report(args.markdown, table)
        if args.json:
            common.write_json(args.json, {"stages": results, "header": header})
        met = all(r["max_rel_loss_diff"] <= LOSS_TOL and r["max_rel_param_diff"] <= PARAM_TOL
                  for r in results.values())
        log("targets (loss <= 1e-4, params <= 1e-3): " + ("met" if met else "NOT met"))
        return 0 if met else 1
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
