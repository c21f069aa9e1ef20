"""Train one stage of the recipe: softmax / arcmargin pre-training, triplet / quadruplet fine-tuning."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import os

from src.losses.registry import LOSS_NAMES, names_by_role
from src.runtime.cli import (
    add_common_arguments,
    add_query_gallery_arguments,
    check_query_gallery,
    load_stage_config,
    make_parser,
    parse_with_overrides,
    run,
)
from src.runtime.context import init_context
from src.runtime.log import get_logger
from src.training.trainer import TrainRequest, train

logger = get_logger()


def parse_args(argv=None):
    parser = make_parser("Train ResNet-50 for image retrieval on Stanford Online Products.")
    parser.add_argument("--loss_name", required=True, choices=LOSS_NAMES,
                        help="the stage, named by its loss: " + "; ".join(
                            f"{role} {', '.join(names)}" for role, names in names_by_role().items()))
    add_common_arguments(parser)
    parser.add_argument("--device_id", type=int, default=None, help="standalone device (default $DEVICE_ID or 0)")
    parser.add_argument("--dataset_path", required=True, help="folder the list paths are relative to")
    parser.add_argument("--train_list", default="train.txt", help="training list inside dataset_path")
    parser.add_argument("--ckpt_path", default=None,
                        help="backbone weights to start from (ImageNet ResNet-50 or a softmax-stage checkpoint)")
    parser.add_argument("--resume", default=None, help="checkpoint of an interrupted run of this stage to continue")
    parser.add_argument("--run_distribute", action="store_true", help="data-parallel over all launched processes")
    parser.add_argument("--run_eval", action="store_true", help="Recall@1 on --eval_list every eval_interval epochs")
    parser.add_argument("--eval_list", default="test_half.txt", help="evaluation list inside dataset_path")
    add_query_gallery_arguments(parser)
    parser.add_argument("--output_dir", default="./output", help="checkpoints, config.yaml")
    parser.add_argument("--seed", type=int, default=None, help="random seed (config key seed)")
    parser.add_argument("--save_rank_checkpoint", action="store_true",
                        help="also write every rank's final weights to output_dir/rank_<r>/ (debugging aid)")
    args = parse_with_overrides(parser, argv)
    if args.seed is not None:
        args.overrides.append(f"seed={args.seed}")
    return args


def main(argv=None):
    args = parse_args(argv)
    cfg = load_stage_config(args)
    check_query_gallery(args)
    for path, what in ((args.dataset_path, "--dataset_path"),):
        if not os.path.isdir(path):
            raise FileNotFoundError(f"{what} {path} is not a folder")
    rank, group_size = init_context(args.device_target, args.device_id, args.run_distribute)
    request = TrainRequest(loss_name=args.loss_name, dataset_path=args.dataset_path, train_list=args.train_list,
                           output_dir=args.output_dir, ckpt_path=args.ckpt_path, resume=args.resume,
                           run_eval=args.run_eval, eval_list=args.eval_list, query_list=args.query_list,
                           gallery_list=args.gallery_list, rank=rank, group_size=group_size,
                           save_rank_checkpoint=args.save_rank_checkpoint)
    result = train(request, cfg)
    if rank == 0:
        logger.info("final checkpoint: %s", result["checkpoint"])
        if result["best_recall"] is not None:
            logger.info("best eval_recall: %.4f", result["best_recall"])


if __name__ == "__main__":
    run(main)
