"""Shared command-line plumbing of the entry scripts: config overrides and one-line errors."""
import argparse
import re
import sys
import traceback

from src.runtime.config import DEVICES, load_config
from src.runtime.devices import DeviceUnavailableError
from src.runtime.log import get_logger, setup_logging

logger = get_logger()

# Errors a user can cause with their input (paths, lists, checkpoints, configs, diverging training):
# reported as one line and exit status 1. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, NotADirectoryError,
               PermissionError, DeviceUnavailableError)


# MindSpore wraps an exception raised in a dataset's Python code (our image loading) into a RuntimeError
# whose text holds the original traceback, then MindSpore's own sections and C++ lines.
PIPELINE_ERROR_MARK = "Exception thrown from user defined Python function in dataset"
_EXCEPTION_LINE = re.compile(r"^(?:\w+\.)*([A-Z]\w*(?:Error|Exception|Interrupt)): (.+)$", re.M)


def pipeline_error(err):
    """(exception type name, message) of the innermost exception inside a data-pipeline RuntimeError, or None
    when `err` is not one."""
    text = str(err)
    if PIPELINE_ERROR_MARK not in text:
        return None
    python_part = text.split("- Dataset Pipeline Error Message", 1)[0]
    found = _EXCEPTION_LINE.findall(python_part)
    return found[-1] if found else None


def add_common_arguments(parser):
    parser.add_argument("--device_target", default="CPU", choices=DEVICES, help="device to run on")
    parser.add_argument("--config", default=None, help="YAML config (default: src/configs/<loss_name>.yaml)")


def parse_ks(text):
    """Parse --recall_ks: "1,10" -> (1, 10)."""
    try:
        ks = tuple(int(k) for k in str(text).split(","))
    except ValueError:
        ks = ()
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, like 1,10, got {text!r}")
    return ks


def add_recall_ks_argument(parser):
    """--recall_ks (eval.py, postprocess.py): the K of Recall@K; None: the dataset's (config key recall_ks)."""
    parser.add_argument("--recall_ks", type=parse_ks, default=None, metavar="K,K,...",
                        help="the K of Recall@K (default: the dataset's, config recall_ks; K above the number of "
                             "other images is clipped with a warning)")


def config_ks(text, what="recall_ks"):
    """The K of a config's recall_ks string ("1,2,4,8"); ValueError naming the key if malformed."""
    try:
        return parse_ks(text)
    except argparse.ArgumentTypeError as err:
        raise ValueError(f"{what}: {err}") from None


def add_query_gallery_arguments(parser):
    """--query_list / --gallery_list: the query/gallery protocol (In-Shop) instead of leave-one-out."""
    parser.add_argument("--query_list", default=None, help="query list inside dataset_path (with --gallery_list: "
                        "each query ranks the whole gallery, no self-exclusion; In-Shop's protocol)")
    parser.add_argument("--gallery_list", default=None, help="gallery list inside dataset_path (with --query_list)")


def check_query_gallery(args):
    """True for the query/gallery protocol; an error if only one of the two lists is given."""
    if (args.query_list is None) != (args.gallery_list is None):
        raise ValueError("--query_list and --gallery_list go together (the query/gallery protocol); give both, or "
                         "neither for leave-one-out on --eval_list")
    return args.query_list is not None


def overrides_from_extra(parser, extra):
    """Turn leftover `--key value` / `--key=value` arguments into config overrides ["key=value", ...]."""
    overrides = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            parser.error(f"unexpected argument {token!r}")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if i + 1 >= len(extra) or extra[i + 1].startswith("--"):
                parser.error(f"config override --{key} needs a value")
            value = extra[i + 1]
            i += 1
        overrides.append(f"{key}={value}")
        i += 1
    return overrides


def parse_with_overrides(parser, argv=None):
    """parse_known_args, with the leftover `--key value` pairs as `args.overrides` (["key=value", ...])."""
    args, extra = parser.parse_known_args(argv)
    args.overrides = overrides_from_extra(parser, extra)
    return args


def load_stage_config(args):
    """The config of args.loss_name on args.device_target (or args.config), with args.overrides applied."""
    return load_config(args.loss_name, args.device_target, args.config, args.overrides)


def make_parser(description):
    return argparse.ArgumentParser(description=description + " Any config key can be overridden with "
                                   "--<key> <value> (see src/configs/*.yaml).",
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                   # --dataset (a config key) must not be taken for an abbreviated --dataset_path
                                   allow_abbrev=False)


def run(main, argv=None):
    """Call main(argv); a user error becomes one `ERROR` line and exit status 1, also when it was raised
    inside MindSpore's data pipeline (a missing or undecodable image)."""
    setup_logging()
    try:
        main(argv)
    except USER_ERRORS as err:
        logger.error("%s: %s", type(err).__name__, err)
        sys.exit(1)
    except RuntimeError as err:
        inner = pipeline_error(err)
        if inner is None:
            raise
        name, message = inner
        if name not in {cls.__name__ for cls in USER_ERRORS}:
            traceback.print_exc()  # a bug in the pipeline's code: keep where it happened
        logger.error("%s: %s", name, message)  # the message naming the image and its list line, last
        sys.exit(1)
    except KeyboardInterrupt:
        logger.error("interrupted")
        sys.exit(130)
