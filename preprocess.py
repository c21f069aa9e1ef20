"""Write an evaluation list as the offline runners' input: img_data/sop_<i>.bin and label/sop_<i>.bin."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import os

from src.deploy.infer_data import IMAGE_DIR, LABEL_DIR, preprocess_eval_list
from src.losses.registry import LOSS_NAMES
from src.runtime.cli import add_common_arguments, load_stage_config, make_parser, parse_with_overrides, run
from src.runtime.log import get_logger

logger = get_logger()


def parse_args(argv=None):
    parser = make_parser("Preprocess an evaluation list for offline inference (same transform as eval.py).")
    add_common_arguments(parser)
    parser.add_argument("--dataset_path", required=True, help="folder the list paths are relative to")
    parser.add_argument("--eval_list", default="test_half.txt", help="evaluation list inside dataset_path")
    parser.add_argument("--output_path", default="./preprocess_Result",
                        help=f"gets {IMAGE_DIR}/ and {LABEL_DIR}/ (an earlier output there is replaced)")
    parser.add_argument("--loss_name", default="triplet", choices=LOSS_NAMES,
                        help="stage whose config supplies image_size / eval_resize / skip_bad")
    return parse_with_overrides(parser, argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_stage_config(args)
    if not os.path.isdir(args.dataset_path):
        raise FileNotFoundError(f"--dataset_path {args.dataset_path} is not a folder")
    count = preprocess_eval_list(args.dataset_path, args.eval_list, args.output_path, cfg, logger)
    logger.info("wrote %d samples (%s/, %s/) of %s, image_size %d, eval_resize %s", count, IMAGE_DIR, LABEL_DIR,
                args.eval_list, cfg.image_size, cfg.eval_resize)
    print(f"preprocessed: {os.path.abspath(args.output_path)} ({count} samples)")


if __name__ == "__main__":
    run(main)
