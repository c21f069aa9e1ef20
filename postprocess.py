"""Retrieval metrics of offline-inference results: result_Files/sop_<i>_0.bin paired with label/sop_<i>.bin."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import argparse
import os

from src.deploy.infer_data import evaluate_results, load_results
from src.evaluation.metrics import check_positives, check_query_positives
from src.models.resnet import FEATURE_DIM
from src.runtime.atomic_file import write_atomic
from src.runtime.cli import add_recall_ks_argument, config_ks, run
from src.runtime.config import DEFAULT_RECALL_KS, dataset_defaults
from src.runtime.log import get_logger

logger = get_logger()


def parse_args(argv=None):
    # No config here, so not src.runtime.cli.make_parser (whose help offers config overrides).
    parser = argparse.ArgumentParser(description="Compute Recall@K / MAP@R from the runner's result files.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--result_path", default="./result_Files", help="the runner's sop_<i>_0.bin files")
    parser.add_argument("--label_path", default="./preprocess_Result/label", help="preprocess's label folder")
    parser.add_argument("--output", default="acc.log", help="report file (metrics table and eval_recall line)")
    parser.add_argument("--feature_dim", type=int, default=FEATURE_DIM, help="float32 values per result file")
    parser.add_argument("--gallery_result_path", default=None,
                        help="with --gallery_label_path: the results of a gallery list; those of --result_path are "
                             "then its queries (query/gallery protocol, no self-exclusion)")
    parser.add_argument("--gallery_label_path", default=None, help="preprocess's label folder of the gallery list")
    parser.add_argument("--dataset", default="sop", choices=sorted(dataset_defaults()),
                        help="picks the default --recall_ks (the dataset's, as in src/configs/common.yaml)")
    add_recall_ks_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ks = args.recall_ks or config_ks(dataset_defaults()[args.dataset].get("recall_ks", DEFAULT_RECALL_KS))
    if (args.gallery_result_path is None) != (args.gallery_label_path is None):
        raise ValueError("--gallery_result_path and --gallery_label_path go together")
    features, labels, _ = load_results(args.result_path, args.label_path, args.feature_dim)
    logger.info("%d results, %d classes", len(labels), len(set(labels.tolist())))
    gallery = None
    if args.gallery_result_path:
        gallery = load_results(args.gallery_result_path, args.gallery_label_path, args.feature_dim)[:2]
        logger.info("%d gallery results, %d classes", len(gallery[1]), len(set(gallery[1].tolist())))
        check_query_positives(labels, gallery[1], f"the labels in {args.label_path} against "
                              f"{args.gallery_label_path}", logger)
    else:
        check_positives(labels, f"the labels in {args.label_path}", logger)
    _, report = evaluate_results(features, labels, logger, ks=ks, gallery=gallery)
    write_atomic(args.output, report)
    print(report, end="")
    print(f"report: {os.path.abspath(args.output)}")


if __name__ == "__main__":
    run(main)
