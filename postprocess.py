"""Retrieval metrics of offline-inference results: result_Files/sop_<i>_0.bin paired with label/sop_<i>.bin."""
import src.runtime_env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import argparse
import os

from src.atomic_file import write_atomic
from src.cli import add_recall_ks_argument, run
from src.infer_data import evaluate_results, load_results
from src.log import get_logger
from src.metrics import check_positives
from src.resnet import FEATURE_DIM

logger = get_logger("postprocess")


def parse_args(argv=None):
    # No config here, so not src.cli.make_parser (whose help offers config overrides).
    parser = argparse.ArgumentParser(description="Compute Recall@K / MAP@R from the runner's result files.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--result_path", default="./result_Files", help="the runner's sop_<i>_0.bin files")
    parser.add_argument("--label_path", default="./preprocess_Result/label", help="preprocess's label folder")
    parser.add_argument("--output", default="acc.log", help="report file (metrics table and eval_recall line)")
    parser.add_argument("--feature_dim", type=int, default=FEATURE_DIM, help="float32 values per result file")
    add_recall_ks_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    features, labels, _ = load_results(args.result_path, args.label_path, args.feature_dim)
    logger.info("%d results, %d classes", len(labels), len(set(labels.tolist())))
    check_positives(labels, f"the labels in {args.label_path}", logger)
    _, report = evaluate_results(features, labels, logger, ks=args.recall_ks)
    write_atomic(args.output, report)
    print(report, end="")
    print(f"report: {os.path.abspath(args.output)}")


if __name__ == "__main__":
    run(main)
