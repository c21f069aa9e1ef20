"""Evaluate a checkpoint: Recall@K and MAP@R on a list of images (leave-one-out retrieval), or of query images
against a gallery (--query_list / --gallery_list, In-Shop's protocol)."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import os

import mindspore as ms

from src.deploy.calibration import add_calibration_arguments, read_calibration
from src.deploy.engines import add_engine_arguments, check_backend, check_threads, extraction_engine
from src.deploy.quantize import check_precision
from src.evaluation.bootstrap import interval_lines, per_query_scores
from src.evaluation.features import (
    evaluate_backbone,
    evaluate_query_gallery,
    read_checked_list,
    read_checked_query_gallery,
    save_features,
)
from src.evaluation.metrics import format_metrics_table
from src.evaluation.visualize import draw_retrievals, save_image
from src.kernels import build as cpu_kernels
from src.losses.registry import LOSS_NAMES
from src.models.checkpoint import load_backbone_checkpoint, resolve_padding
from src.models.resnet import CONVENTION_KEY, backbone_from_config, head_options
from src.runtime.cli import (
    add_common_arguments,
    add_query_gallery_arguments,
    add_recall_ks_argument,
    check_query_gallery,
    config_ks,
    load_stage_config,
    make_parser,
    parse_with_overrides,
    run,
)
from src.runtime.context import init_context, set_cpu_threads
from src.runtime.log import get_logger

logger = get_logger()


def parse_args(argv=None):
    parser = make_parser("Evaluate image retrieval with a trained backbone.")
    add_common_arguments(parser)
    parser.add_argument("--device_id", type=int, default=None, help="device (default $DEVICE_ID or 0)")
    parser.add_argument("--dataset_path", required=True, help="folder the list paths are relative to")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt_path", help="checkpoint of any stage (its backbone is used)")
    source.add_argument("--random_init", action="store_true",
                        help="evaluate a randomly initialised backbone (config key seed): the untrained baseline")
    parser.add_argument("--eval_list", default="test_half.txt", help="evaluation list inside dataset_path")
    add_query_gallery_arguments(parser)
    parser.add_argument("--loss_name", default="triplet", choices=LOSS_NAMES,
                        help="stage whose config supplies image_size / eval settings (seed's optional argument)")
    parser.add_argument("--save_features", default=None, help="write features, labels and paths to this .npz")
    parser.add_argument("--save_retrievals", default=None, metavar="PNG",
                        help="draw 6 queries (fixed seed) with their top-5 neighbours, framed green (same class) "
                             "or red, with squared L2 distances, into this image")
    add_engine_arguments(parser, "what extracts the features on CPU: mindspore (the network itself), or onnxruntime "
                                 "/ openvino on its ONNX export (written once next to the checkpoint and reused)")
    add_calibration_arguments(parser)
    add_recall_ks_argument(parser)
    parser.add_argument("--ci", action="store_true",
                        help="also print Recall@1 and MAP@R with 95%% intervals from a bootstrap over the test classes "
                             "(src/evaluation/bootstrap.py)")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_stage_config(args)
    query_gallery = check_query_gallery(args)
    if query_gallery and args.save_retrievals:
        raise ValueError("--save_retrievals draws leave-one-out retrievals of --eval_list; it does not take "
                         "--query_list / --gallery_list")
    ks = args.recall_ks or config_ks(cfg.recall_ks)
    if not os.path.isdir(args.dataset_path):
        raise FileNotFoundError(f"--dataset_path {args.dataset_path} is not a folder")
    check_precision(args.precision, check_backend(args.backend))
    threads = check_threads(args.threads)
    if args.backend != "mindspore" and args.device_target != "CPU":
        raise ValueError(f"--backend {args.backend} runs on CPU; use --device_target CPU (got {args.device_target})")
    init_context(args.device_target, args.device_id)
    if args.device_target == "CPU":
        set_cpu_threads(threads)
    # The lists are read and checked before the network is built (and, for an engine, exported).
    if query_gallery:
        lists = read_checked_query_gallery(args.dataset_path, args.query_list, args.gallery_list, cfg)
    else:
        images = read_checked_list(args.dataset_path, args.eval_list, cfg)
    calibration = None
    if args.precision == "int8":  # never the images it is scored on
        scored = (args.query_list, args.gallery_list) if query_gallery else (args.eval_list,)
        calibration = read_calibration(args.dataset_path, args.calibration_list, args.calibration_size, scored,
                                       cfg.eval_resize)
    ms.set_seed(cfg.seed)
    padding = resolve_padding(cfg[CONVENTION_KEY], [args.ckpt_path])
    # The ONNX engines export the backbone, so it keeps MindSpore's ops for them.
    kernels = cpu_kernels.MINDSPORE
    if args.backend == "mindspore":
        kernels = cpu_kernels.resolve(cfg.cpu_kernels, args.device_target, threads)
    backbone = backbone_from_config(cfg, padding, kernels)
    if args.ckpt_path:
        load_backbone_checkpoint(backbone, args.ckpt_path)
    backbone = extraction_engine(args.backend, backbone, args.ckpt_path, cfg.image_size, cfg.eval_batch_size,
                                 threads, dict(head_options(cfg), padding=padding), args.precision, calibration)
    extra = {}
    if query_gallery:
        metrics, (features, labels, paths), gallery = evaluate_query_gallery(
            backbone, args.dataset_path, args.query_list, args.gallery_list, cfg, ks=ks, lists=lists)
        extra = dict(zip(("gallery_features", "gallery_labels", "gallery_paths"), gallery, strict=True))
    else:
        metrics, features, labels, paths = evaluate_backbone(backbone, args.dataset_path, args.eval_list, cfg, ks=ks,
                                                             images=images)
    if args.save_features:
        save_features(args.save_features, features, labels, paths, **extra)
        logger.info("features saved to %s", args.save_features)
    if args.save_retrievals:
        # evaluate_backbone's features are L2-normalised already
        picture = draw_retrievals(features, labels, paths, root=args.dataset_path, normalize=False)
        save_image(args.save_retrievals, picture)
        logger.info("retrievals drawn to %s", args.save_retrievals)
    print(format_metrics_table(metrics))
    if args.ci:
        gallery_features = (extra["gallery_features"], extra["gallery_labels"]) if query_gallery else ()
        scores = per_query_scores(features, labels, *gallery_features, normalize=False)  # unit rows already
        print("\n".join(interval_lines(scores, labels)))
    print(f"eval_recall: {metrics['recall@1']:.4f}")
    print(f"result: {{'acc': {metrics['recall@1']:.4f}}} ckpt={args.ckpt_path or 'random init'}")


if __name__ == "__main__":
    run(main)
