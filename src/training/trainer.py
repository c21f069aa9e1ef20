"""The training run: network and loss for a stage, optimizer, Model, resume, callbacks."""
import os
from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn
from mindspore.train import FixedLossScaleManager, Model

from src.data.dataset import create_dataset
from src.data.image_list import read_image_list
from src.evaluation.features import (
    evaluate_backbone,
    evaluate_query_gallery,
    read_checked_list,
    read_checked_query_gallery,
)
from src.kernels import build as cpu_kernels
from src.losses.factory import create_loss
from src.losses.registry import IN_NETWORK, LOSS_NAMES, STAGES, get_stage
from src.models.checkpoint import (
    load_backbone_checkpoint,
    load_strict,
    read_checkpoint_values,
    resolve_padding,
    save_checkpoint_atomic,
)
from src.models.resnet import CONVENTION_KEY, backbone_from_config, freeze_batchnorm, head_options, resnet50
from src.runtime.config import save_config
from src.runtime.log import get_logger
from src.training.callbacks import CheckpointSaver, EvalCallback, TrainMonitor
from src.training.history import FILE_NAME as HISTORY_FILE
from src.training.history import HistoryWriter
from src.training.lr_generator import get_lr
from src.training.optimizer import momentum_optimizer
from src.training.sink_mode import resolve_plan

logger = get_logger()

STAGE_KEY = "loss_name"  # checkpoint entry: the stage (its loss name) that wrote it


@dataclass
class TrainRequest:
    """What train.py asks for, besides the resolved config."""

    loss_name: str
    dataset_path: str
    train_list: str
    output_dir: str
    ckpt_path: str = None
    resume: str = None
    run_eval: bool = False
    eval_list: str = None
    query_list: str = None  # with gallery_list: the query/gallery protocol instead of eval_list
    gallery_list: str = None
    rank: int = 0
    group_size: int = 1
    save_rank_checkpoint: bool = False


def build_network(loss_name, cfg):
    """(network trained by Model, backbone inside it). A stage whose registry entry has its classes in the network
    (softmax) trains backbone + head; every other trains the backbone alone (the seed's net.backbone): class weights
    or proxies (arcmargin, ...) live in the loss.
    cfg.backbone_padding must be resolved (same or symmetric). The layers: our kernels on CPU where
    cfg.cpu_kernels asks for them (src/kernels/), MindSpore's elsewhere."""
    kernels = cpu_kernels.resolve(cfg.cpu_kernels, ms.get_context("device_target"))
    if get_stage(loss_name).classes == IN_NETWORK:
        net = resnet50(cfg.class_num, cfg.backbone_padding, kernels=kernels, **head_options(cfg))
        return net, net.backbone
    backbone = backbone_from_config(cfg, cfg.backbone_padding, kernels)
    return backbone, backbone


def decays(param):
    """Whether weight decay applies to `param`: not to BatchNorm's gamma and beta. This is the filter nn.Momentum
    applies by itself to an ungrouped parameter list (mindspore/nn/optim/optimizer.py)."""
    return "beta" not in param.name and "gamma" not in param.name


def parameter_groups(network, loss, lr, weight_decay, proxy_lr_multiplier=1.0):
    """The optimizer's parameters: the network's at the schedule `lr`, and a loss's own (class weights, proxies)
    at `proxy_lr_multiplier` times it (Proxy-Anchor trains its proxies 100 times faster). Weight decay applies to
    the same parameters either way: grouped, Momentum drops its gamma/beta filter and decays every parameter of
    a group with weight decay, so BatchNorm's parameters get a group of their own without."""
    own = loss.trainable_params()
    if not own or proxy_lr_multiplier == 1.0:
        return network.trainable_params() + own
    params = network.trainable_params()
    groups = [{"params": [p for p in params if decays(p)], "weight_decay": weight_decay},
              {"params": [p for p in params if not decays(p)], "weight_decay": 0.0},
              {"params": own, "weight_decay": weight_decay,
               "lr": ms.Tensor(np.asarray(lr, np.float32) * np.float32(proxy_lr_multiplier))}]
    return [group for group in groups if group["params"]]


def checkpoint_prefix(loss_name):
    return f"resnet50_{loss_name}"


def stage_from_file_name(ckpt_path):
    """The stage whose checkpoint_prefix starts the file's name (resnet50_<loss>-E_S.ckpt), or None."""
    name = os.path.basename(ckpt_path)
    return next((loss for loss in LOSS_NAMES if name.startswith(checkpoint_prefix(loss) + "-")), None)


def checkpoint_stage(ckpt_path, values):
    """The stage that wrote a checkpoint: its STAGE_KEY entry (in `values`, read from it), else, for checkpoints
    written before that entry, its file name's prefix; None when neither says."""
    return values.get(STAGE_KEY) or stage_from_file_name(ckpt_path)


def resume_point(ckpt_path, loss_name):
    """(epochs completed, global step) recorded by train.py in a checkpoint of the `loss_name` stage; a checkpoint
    of another stage is an error naming --ckpt_path, which starts a stage from another's weights."""
    values = read_checkpoint_values(ckpt_path, ("epoch_num", "step_num", STAGE_KEY))
    stage = checkpoint_stage(ckpt_path, values)
    if stage is not None and stage != loss_name:
        role = f" ({STAGES[stage].role})" if stage in STAGES else ""
        raise ValueError(f"{ckpt_path} is a checkpoint of the {stage} stage{role}, not of {loss_name}: --resume "
                         f"continues an interrupted run of the same stage; to start the {loss_name} stage from "
                         f"its weights, use --ckpt_path {ckpt_path}")
    if "epoch_num" not in values or "step_num" not in values:
        raise ValueError(f"{ckpt_path} holds no epoch_num/step_num: not a checkpoint written by train.py, so it "
                         f"cannot be resumed (use --ckpt_path to start from its weights)")
    return int(values["epoch_num"]), int(values["step_num"])


def _check_class_num(loss_name, cfg, images):
    if get_stage(loss_name).counts_classes and images.num_classes > cfg.class_num:
        raise ValueError(f"{images.list_file} has {images.num_classes} classes but class_num={cfg.class_num}; "
                         f"set class_num={images.num_classes}")


def existing_checkpoints(ckpt_dir, prefix):
    if not os.path.isdir(ckpt_dir):
        return []
    return sorted(name for name in os.listdir(ckpt_dir) if name.startswith(prefix + "-") and name.endswith(".ckpt"))


@dataclass
class TrainingSetup:
    """What one training step needs: the Model (network, loss, optimizer, loss scale), its per-step lr, and the
    optimizer itself (its moments: bench/parity_torch.py --resync sets them)."""

    model: Model
    network: nn.Cell
    backbone: nn.Cell
    loss: nn.Cell
    lr: np.ndarray
    optimizer: nn.Optimizer


def build_training(loss_name, cfg, steps_per_epoch, ckpt_path=None):
    """The network, loss, Momentum optimizer and Model of a stage, as train.py trains them (also what
    bench/parity_torch.py steps next to PyTorch). `ckpt_path`: initial backbone weights. On CPU with our kernels
    (cpu_kernels: native) the optimizer is src/kernels/momentum.py's FusedMomentum, elsewhere nn.Momentum."""
    network, backbone = build_network(loss_name, cfg)
    if ckpt_path:
        load_backbone_checkpoint(backbone, ckpt_path, new_head=True)
        logger.info("backbone initialised from %s", ckpt_path)
    if cfg.freeze_bn:
        logger.info("BatchNorm frozen: %d layers normalise with their moving statistics and keep them",
                    freeze_batchnorm(backbone))
    stage = get_stage(loss_name)
    loss = create_loss(loss_name, cfg)
    lr = get_lr(cfg.lr_init, cfg.lr_end, cfg.lr_max, cfg.warmup_epochs, cfg.epoch_size, steps_per_epoch,
                cfg.lr_decay_mode)
    if len(lr) < cfg.epoch_size * steps_per_epoch:
        raise ValueError(f"learning-rate array has {len(lr)} entries, needs {cfg.epoch_size * steps_per_epoch}")
    kernels = cpu_kernels.resolve(cfg.cpu_kernels, ms.get_context("device_target"))
    multiplier = getattr(cfg, stage.lr_multiplier_key) if stage.lr_multiplier_key else 1.0
    optimizer = momentum_optimizer(parameter_groups(network, loss, lr, cfg.weight_decay, multiplier),
                                   ms.Tensor(lr), cfg.momentum, cfg.weight_decay, float(cfg.loss_scale), kernels)
    model = Model(network, loss_fn=loss, optimizer=optimizer, amp_level=cfg.amp_level,
                  loss_scale_manager=FixedLossScaleManager(float(cfg.loss_scale), drop_overflow_update=False))
    return TrainingSetup(model, network, backbone, loss, lr, optimizer)


def train(request, cfg):
    """Run one training stage. Returns a dict with the final checkpoint path and the best Recall@1."""
    if cfg.epoch_size < 1:
        raise ValueError(f"epoch_size must be >= 1, got epoch_size={cfg.epoch_size}")
    is_writer = request.rank == 0
    ckpt_dir = os.path.join(request.output_dir, "ckpt")
    prefix = checkpoint_prefix(request.loss_name)
    earlier = existing_checkpoints(ckpt_dir, prefix)
    if earlier and not request.resume:
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints of an earlier {request.loss_name} run "
                              f"({', '.join(earlier[:3])}{', ...' if len(earlier) > 3 else ''}); choose another "
                              f"--output_dir, or continue that run with --resume")
    # A resumed run: its checkpoint's stage and epochs, checked before anything is written.
    start_epoch, start_step = resume_point(request.resume, request.loss_name) if request.resume else (0, 0)
    if start_epoch >= cfg.epoch_size:
        raise ValueError(f"{request.resume} already completed {start_epoch} epochs of epoch_size={cfg.epoch_size}")
    # The convention the weights being loaded were trained with; config.yaml records the resolved value.
    cfg[CONVENTION_KEY] = resolve_padding(cfg[CONVENTION_KEY], [request.ckpt_path, request.resume])
    if is_writer:
        save_config(cfg, os.path.join(request.output_dir, "config.yaml"))
    ms.set_seed(cfg.seed)

    images = read_image_list(os.path.join(request.dataset_path, request.train_list), request.dataset_path)
    _check_class_num(request.loss_name, cfg, images)
    eval_lists = None
    if request.run_eval:  # read and checked once: lists that cannot be evaluated fail now, not after an epoch
        eval_lists = (read_checked_query_gallery(request.dataset_path, request.query_list, request.gallery_list, cfg)
                      if request.query_list else read_checked_list(request.dataset_path, request.eval_list, cfg))
    # The stage's batch layout; a resumed run continues the data order at its epoch.
    layout = get_stage(request.loss_name).layout
    dataset = create_dataset(request.dataset_path, images, cfg.batch_size, cfg.image_size, layout, seed=cfg.seed,
                             start_epoch=start_epoch, rank=request.rank, group_size=request.group_size,
                             num_parallel_workers=cfg.num_parallel_workers,
                             samples_each_class=cfg.get("samples_each_class", 2), hflip=cfg.hflip,
                             skip_bad=cfg.skip_bad, crop_scale_min=cfg.crop_scale_min)
    steps_per_epoch = dataset.get_dataset_size()
    if start_step != start_epoch * steps_per_epoch:
        raise ValueError(f"{request.resume} was written at step {start_step} after {start_epoch} epochs, but this "
                         f"run has {steps_per_epoch} steps per epoch: batch size, list or device count differ")

    setup = build_training(request.loss_name, cfg, steps_per_epoch, request.ckpt_path)
    network, backbone, model, lr = setup.network, setup.backbone, setup.model, setup.lr
    # Written into every checkpoint of this run: its stage (what --resume checks), the network's padding convention
    # and head.
    marker = {STAGE_KEY: request.loss_name, CONVENTION_KEY: cfg[CONVENTION_KEY], **backbone.head_record()}
    if request.resume:
        # The per-step learning-rate array comes from this run's config (a resumed run may be given more
        # epochs); the global step restored with the rest indexes into it.
        schedules = tuple(p.name for p in model.train_network.get_parameters() if p.name.startswith("learning_rate"))
        load_strict(model.train_network, request.resume, what="training state", keep=schedules)
        logger.info("resumed from %s after epoch %d", request.resume, start_epoch)

    plan = resolve_plan(cfg, cfg.device_target, steps_per_epoch, logger)
    monitor = TrainMonitor(steps_per_epoch, cfg.epoch_size, cfg.batch_size * request.group_size, lr,
                           cfg.log_interval, plan=plan)
    saver = CheckpointSaver(ckpt_dir, prefix, cfg.save_checkpoint_epochs, cfg.keep_checkpoint_max, cfg.epoch_size,
                            steps_per_epoch, enabled=is_writer and cfg.save_checkpoint, plan=plan, marker=marker)
    callbacks = [monitor]
    evaluator = None
    if request.run_eval:
        def evaluate():
            if request.query_list:
                return evaluate_query_gallery(backbone, request.dataset_path, request.query_list,
                                              request.gallery_list, cfg, ks=(1, 10), lists=eval_lists)[0]
            return evaluate_backbone(backbone, request.dataset_path, request.eval_list, cfg, ks=(1, 10),
                                     images=eval_lists)[0]

        evaluator = EvalCallback(evaluate, cfg.eval_interval, ckpt_dir, prefix, cfg.epoch_size, enabled=is_writer,
                                 plan=plan, marker=marker)
        callbacks.append(evaluator)
    history_path = os.path.join(request.output_dir, HISTORY_FILE)
    callbacks.append(HistoryWriter(history_path, monitor, evaluator, start_epoch, enabled=is_writer, plan=plan))
    callbacks.append(saver)

    logger.info("training %s on %s: %d images, %d classes, %d steps per epoch x %d epochs (from epoch %d), "
                "batch %d per device x %d device(s), %s", request.loss_name, images.list_file, len(images),
                images.num_classes, steps_per_epoch, cfg.epoch_size, start_epoch + 1, cfg.batch_size,
                request.group_size, cfg.device_target)
    model.train(train_dataset=dataset, callbacks=callbacks, **plan.train_arguments(cfg.epoch_size, start_epoch))

    if is_writer:
        logger.info("per-epoch history: %s (python -m src.training.history %s draws it)", history_path, history_path)
    if request.save_rank_checkpoint:
        # Debugging aid for distributed runs: every rank's final weights, to compare across ranks.
        save_checkpoint_atomic(network, os.path.join(request.output_dir, f"rank_{request.rank}", "final.ckpt"),
                               marker)
    return {"checkpoint": saver.last_saved, "best_recall": evaluator.best if evaluator else None,
            "losses": list(monitor.losses)}
