"""Search images with a trained backbone: build an index of a folder or a list (index), find the nearest indexed
images of query images (search), the pairs and groups of indexed images above a similarity threshold (match), and
a web page to search the index from a browser (serve). The pieces live in src/retrieval/."""
import src.runtime.env  # noqa: F401  (first: CPU dispatch and BLAS kernel, before numpy and mindspore load)

# isort: split
import argparse
import json
import os

from src.deploy.calibration import add_calibration_arguments
from src.deploy.engines import add_engine_arguments, check_backend, check_threads
from src.losses.registry import LOSS_NAMES
from src.retrieval.search import ANN_CHOICES, check_ann, check_top_k
from src.runtime.atomic_file import write_atomic
from src.runtime.cli import add_common_arguments, load_stage_config, make_parser, parse_with_overrides, run
from src.runtime.config import DEVICES
from src.runtime.log import get_logger

logger = get_logger()


def add_ann_argument(parser, what):
    parser.add_argument("--ann", default="auto", metavar="{" + ",".join(ANN_CHOICES) + "}", help=what)


def add_search_arguments(parser, precision=True):
    """What search, match and serve share: the index, where its checkpoint is, the backend (and `precision`, which
    match does not take: its --precision is the threshold's) and device."""
    parser.add_argument("--index_dir", required=True, help="the index folder (retrieve.py index)")
    parser.add_argument("--ckpt_path", default=None,
                        help="the index's checkpoint, if it has moved (default: the path its manifest records); "
                             "another checkpoint is refused")
    parser.add_argument("--device_target", default="CPU", choices=DEVICES, help="device to run on")
    add_engine_arguments(parser, "what extracts the query features (default: the backend the index was built with)",
                         precision)
    parser.set_defaults(backend=None)
    if precision:
        parser.set_defaults(precision=None)  # the index's


def add_command(commands, name, summary, description, ann_help, searches=True, precision=True):
    """A subcommand's parser: its --ann, and (searches) the index it searches with add_search_arguments."""
    parser = commands.add_parser(name, help=summary, description=description, allow_abbrev=False,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_ann_argument(parser, ann_help)
    if searches:
        add_search_arguments(parser, precision)
    return parser


def parse_args(argv=None):
    parser = make_parser("Search images with a trained backbone: index a folder or list, search it by image, find "
                         "matching pairs and groups.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{index,search,match,serve}")
    index = add_command(commands, "index", "extract the features of a folder's or a list's images into an index",
                        "Build (or, with --add, extend) an index folder. Any config key can be overridden with "
                        "--<key> <value> (see src/configs/*.yaml).",
                        "also store an approximate (faiss IVF) index: auto from the size where it pays "
                        "(src/retrieval/search.py), faiss always, exact never", searches=False)
    add_common_arguments(index)
    index.add_argument("--ckpt_path", required=True, help="checkpoint of any stage (its backbone is used)")
    source = index.add_mutually_exclusive_group(required=True)
    source.add_argument("--image_dir", help="index every image under this folder (recursively; labels unknown)")
    source.add_argument("--list", help="index the images of this 'path label' list (inside --dataset_path): labels "
                                       "known")
    index.add_argument("--dataset_path", default=None, help="folder the --list paths are relative to")
    index.add_argument("--index_dir", required=True, help="the index folder to write (replaced atomically)")
    index.add_argument("--image_size", type=int, default=None, help="image size (default: the config's)")
    index.add_argument("--add", action="store_true",
                       help="add the images the index lacks (by path and content hash) instead of rebuilding it")
    index.add_argument("--loss_name", default="triplet", choices=LOSS_NAMES,
                       help="stage whose config supplies image_size / eval settings")
    add_engine_arguments(index, "what extracts the features on CPU: mindspore, or onnxruntime / openvino on its "
                                "ONNX export (as eval.py --backend)")
    add_calibration_arguments(index)

    search = add_command(commands, "search", "the nearest indexed images of query images",
                         "Each query image's top-k indexed images by cosine similarity, the query preprocessed as "
                         "the index's images were.",
                         "exact search, the index's stored approximate one (faiss), or auto: the stored one if there "
                         "is one")
    search.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    search.add_argument("--top_k", type=int, default=10, help="results per query")
    search.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    search.add_argument("--picture", default=None, metavar="PNG", help="draw the queries and their results")

    match = add_command(commands, "match", "pairs and groups of indexed images at least a threshold similar",
                        "Pairs of indexed images whose cosine similarity is at least a threshold, and their groups "
                        "(connected components); the index's images and any --calibrate_list are embedded in the "
                        "index's precision.", "as for search", precision=False)
    threshold = match.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--threshold", type=float, default=None, help="cosine similarity in [-1, 1]")
    threshold.add_argument("--calibrate_list", default=None,
                           help="a labelled 'path label' list held out of the index (never the test list): the "
                                "threshold is the lowest reaching --precision on its pairs")
    match.add_argument("--dataset_path", default=None,
                       help="folder the --calibrate_list paths are relative to (default: the list's folder)")
    match.add_argument("--precision", type=float, default=None, help="with --calibrate_list: precision to reach")
    match.add_argument("--max_neighbours", type=int, default=100, help="pairs are looked for among each image's "
                                                                      "nearest this many")
    match.add_argument("--csv", default=None, metavar="FILE", help="write the pairs with their group as CSV")

    serve = add_command(commands, "serve", "a web page (and its JSON API) to search the index from a browser",
                        "Serve a page where one drops or chooses an image, or clicks one of the index's, and sees its "
                        "nearest indexed images; the model and the index are loaded once. Listens on 127.0.0.1 "
                        "unless --host says otherwise.", "as for search")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (0.0.0.0: every interface, which opens the index's images to "
                            "the network)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free one; the log says)")
    serve.add_argument("--max_upload_mb", type=float, default=20.0,
                       help="uploads larger than this are refused (413), counted as they arrive")
    serve.add_argument("--max_batch", type=int, default=16,
                       help="queries searched together at most, when several wait (one model thread)")
    args = parse_with_overrides(parser, argv)
    if args.command != "index" and args.overrides:
        parser.error(f"unrecognized arguments for {args.command}: {' '.join(args.overrides)}")
    return args


def build(args):
    from src.data.decoding import drop_bad_images
    from src.deploy.calibration import read_calibration
    from src.deploy.quantize import check_precision
    from src.evaluation.features import read_eval_list
    from src.kernels import build as cpu_kernels
    from src.models.checkpoint import resolve_padding
    from src.models.resnet import CONVENTION_KEY
    from src.retrieval.embed import embedding_settings, open_embedder
    from src.retrieval.index import build_index, check_same_embedding, folder_images, read_manifest
    from src.retrieval.search import ann_builder

    if args.image_size is not None:
        args.overrides.append(f"image_size={args.image_size}")
    cfg = load_stage_config(args)
    check_precision(args.precision, check_backend(args.backend))
    check_ann(args.ann)
    threads = check_threads(args.threads)
    calibration = None
    if args.precision == "int8":  # checked before any image is read
        if not args.dataset_path or not os.path.isdir(args.dataset_path):
            raise NotADirectoryError(f"--dataset_path {args.dataset_path}: --precision int8 needs the folder of "
                                     f"--calibration_list")
        calibration = read_calibration(args.dataset_path, args.calibration_list, args.calibration_size,
                                       eval_resize=cfg.eval_resize)
    if args.list:
        if not args.dataset_path or not os.path.isdir(args.dataset_path):
            raise NotADirectoryError(f"--dataset_path {args.dataset_path}: --list needs the folder its paths are "
                                     f"relative to")
        images = read_eval_list(args.dataset_path, args.list, cfg)
    else:
        images = folder_images(args.image_dir)
        if cfg.skip_bad:
            images = drop_bad_images(images, cfg.num_parallel_workers)
    padding = resolve_padding(cfg[CONVENTION_KEY], [args.ckpt_path])
    kernels = cpu_kernels.resolve(cfg.cpu_kernels, args.device_target, threads) if args.backend == "mindspore" \
        else cpu_kernels.MINDSPORE
    settings = embedding_settings(cfg, args.ckpt_path, padding, kernels, args.backend, args.precision, calibration)
    if args.add and os.path.exists(args.index_dir):  # refused before the network is built
        check_same_embedding(read_manifest(args.index_dir), settings, "this build", args.index_dir)
    embedder = open_embedder(args.ckpt_path, settings, threads, args.device_target, cfg.eval_batch_size,
                             cfg.num_parallel_workers)
    build_index(args.index_dir, images, embedder, settings, add=args.add, ann=ann_builder(args.ann, threads))
    print(f"index: {os.path.abspath(args.index_dir)}")


def search(args):
    from src.data.decoding import load_image
    from src.evaluation.visualize import UNKNOWN_CLASS, draw_rows, read_image, save_image
    from src.retrieval.retriever import Retriever

    k = check_top_k(args.top_k)
    check_ann(args.ann)
    queries = [load_image(path) for path in args.images]  # a file that is not an image stops us here
    retriever = Retriever.open(args.index_dir, args.ckpt_path, args.backend, args.ann, args.threads,
                               args.device_target, precision=args.precision)
    results = retriever.search_images(queries, k)
    for path, hits in zip(args.images, results, strict=True):
        print(f"query {path}")
        for hit in hits:
            label = "" if hit.label is None else f"  label {hit.label}"
            print(f"  {hit.rank:3d}  {hit.similarity:.4f}  {hit.path}{label}")
    if args.json:
        write_atomic(args.json, json.dumps(
            {"index": retriever.index.folder, "root": retriever.index.root, "search": retriever.searcher.describe(),
             "queries": [{"image": path, "results": [hit.to_dict() for hit in hits]}
                         for path, hits in zip(args.images, results, strict=True)]}, indent=1))
        logger.info("results written to %s", args.json)
    if args.picture:
        rows = [(query, [(read_image(retriever.index.full_path(hit.id)), f"{hit.similarity:.2f}", UNKNOWN_CLASS)
                         for hit in hits]) for query, hits in zip(queries, results, strict=True)]
        save_image(args.picture, draw_rows(rows, "query | top-{k} indexed images, cosine similarity"))
        logger.info("results drawn to %s", args.picture)


def match(args):
    from src.data.image_list import read_image_list
    from src.retrieval.index import load_index
    from src.retrieval.match import (
        calibrate_on_index,
        check_precision,
        check_threshold,
        connected_groups,
        pairs_csv,
        similar_pairs,
    )

    check_ann(args.ann)
    threads = check_threads(args.threads)
    if args.max_neighbours < 1:
        raise ValueError(f"--max_neighbours must be >= 1, got {args.max_neighbours}")
    if args.calibrate_list is None:
        if args.precision is not None:
            raise ValueError("--precision goes with --calibrate_list (the threshold is then calibrated)")
        threshold = check_threshold(args.threshold)
        index = load_index(args.index_dir)
    else:
        if args.precision is None:
            raise ValueError("--calibrate_list needs --precision, the precision the threshold must reach")
        precision = check_precision(args.precision)
        images = read_image_list(args.calibrate_list, args.dataset_path)
        index = load_index(args.index_dir)
        if os.path.abspath(images.list_file) in index.manifest["sources"]:
            raise ValueError(f"--calibrate_list {args.calibrate_list} is the list the index was built from: calibrate "
                             f"on a labelled list held out of it (never the test list), e.g. train.txt")
        backend = check_backend(args.backend or index.manifest["backend"])
        calibration = calibrate_on_index(index, images, precision, backend, threads, args.ckpt_path,
                                         args.device_target)
        print(calibration.line(images.list_file))
        threshold = calibration.threshold
    searcher = index.searcher(args.ann, threads)
    first, second, sims = similar_pairs(searcher, index.features, threshold, args.max_neighbours)
    groups = connected_groups(len(index), first, second)
    print(f"{len(first)} pairs at cosine similarity >= {threshold:.4f}, in {len(groups)} groups of "
          f"{sum(len(g) for g in groups)} images")
    for number, group in enumerate(groups[:20], start=1):
        print(f"group {number} ({len(group)} images): " + " ".join(index.paths[i] for i in group[:10])
              + (" ..." if len(group) > 10 else ""))
    if args.csv:
        write_atomic(args.csv, pairs_csv(index, first, second, sims, groups))
        logger.info("pairs written to %s", args.csv)


def serve(args):
    from src.retrieval.batching import batch_sizes
    from src.retrieval.retriever import Retriever
    from src.retrieval.server import serve as serve_page

    check_ann(args.ann)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {args.port}")
    if not args.max_upload_mb > 0:
        raise ValueError(f"--max_upload_mb must be > 0, got {args.max_upload_mb}")
    batch_sizes(args.max_batch)
    retriever = Retriever.open(args.index_dir, args.ckpt_path, args.backend, args.ann, args.threads,
                               args.device_target, precision=args.precision)
    serve_page(retriever, args.host, args.port, int(args.max_upload_mb * 2 ** 20), args.max_batch)


COMMANDS = {"index": build, "search": search, "match": match, "serve": serve}


def main(argv=None):
    args = parse_args(argv)
    COMMANDS[args.command](args)


if __name__ == "__main__":
    run(main)
