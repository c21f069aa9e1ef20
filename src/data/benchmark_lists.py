"""List files for the retrieval benchmarks besides SOP: CUB-200-2011, Cars196 and In-Shop Clothes.

    python -m src.data.benchmark_lists {sop,cub,cars,inshop} ROOT [--check] [--subset] [--out-dir DIR]

Each writes our `path label` lists (paths relative to ROOT) from the download's own files, with the split of
the deep-metric-learning protocol (Song et al. 2016; Liu et al. 2016 for In-Shop):
  - cub:    images.txt (`id path`) + image_class_labels.txt (`id class`); classes 1-100 -> train.txt (5,864
            images), 101-200 -> test.txt (5,924); Recall@K leave-one-out over test.txt.
  - cars:   cars_annos.mat (annotations: relative_im_path, class, ...; read with scipy); classes 1-98 ->
            train.txt (8,054), 99-196 -> test.txt (8,131).
  - inshop: list_eval_partition.txt (a count line, a header line, then `image_name item_id evaluation_status`):
            train.txt (25,882), query.txt (14,218), gallery.txt (12,612); queries are ranked against the gallery.
  - sop:    src/data/sop_lists.py (the seed's lists).
A malformed line, a missing file, or a count that differs from the published one (unless --subset) is a one-line
error naming the file (and line). --check decodes every listed image.
"""
import argparse
import os
import sys
from dataclasses import dataclass

from src.runtime.log import get_logger, setup_logging

logger = get_logger()

DATASETS = ("sop", "cub", "cars", "inshop")
# Published image counts of each list.
COUNTS = {
    "cub": {"train.txt": 5864, "test.txt": 5924},
    "cars": {"train.txt": 8054, "test.txt": 8131},
    "inshop": {"train.txt": 25882, "query.txt": 14218, "gallery.txt": 12612},
}
CUB_TRAIN_CLASSES, CARS_TRAIN_CLASSES = 100, 98


class ListError(ValueError):
    """A benchmark's files are not what its download should contain."""


@dataclass
class Entry:
    path: str
    label: int


def _read_text_lines(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: is the folder the extracted dataset?")
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _id_table(path, value_type, what):
    """{id: value} of a `<id> <value>` file; a malformed or repeated line is a ListError naming it."""
    table = {}
    for number, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) != 2:
                raise ValueError
            key, value = int(fields[0]), value_type(fields[1])
        except ValueError:
            raise ListError(f"{path}:{number}: expected '<image id> <{what}>', got {line!r}") from None
        if key in table:
            raise ListError(f"{path}:{number}: image id {key} appears twice")
        table[key] = value
    return table


def cub_lists(root):
    """{list name: [Entry]} of CUB-200-2011 (root: the CUB_200_2011 folder)."""
    images_txt = os.path.join(root, "images.txt")
    labels_txt = os.path.join(root, "image_class_labels.txt")
    paths = _id_table(images_txt, str, "path")
    labels = _id_table(labels_txt, int, "class")
    if set(paths) != set(labels):
        missing = sorted(set(paths) ^ set(labels))[:5]
        raise ListError(f"{images_txt} and {labels_txt} list different image ids (e.g. {missing})")
    lists = {"train.txt": [], "test.txt": []}
    for image_id in sorted(paths):
        label = labels[image_id]
        if not 1 <= label <= 200:
            raise ListError(f"{labels_txt}: image {image_id} has class {label}, outside 1-200")
        name = "train.txt" if label <= CUB_TRAIN_CLASSES else "test.txt"
        lists[name].append(Entry(f"images/{paths[image_id]}", label))
    return lists


def cars_lists(root):
    """{list name: [Entry]} of Cars196 from cars_annos.mat (root: the folder holding it and car_ims/)."""
    import scipy.io

    mat_path = os.path.join(root, "cars_annos.mat")
    if not os.path.isfile(mat_path):
        raise FileNotFoundError(f"{mat_path} not found: is the folder the extracted Cars196 dataset?")
    try:
        annotations = scipy.io.loadmat(mat_path, squeeze_me=True)["annotations"]
        paths, labels = annotations["relative_im_path"], annotations["class"]
    except (KeyError, ValueError, IndexError, TypeError, NotImplementedError) as err:
        raise ListError(f"{mat_path}: no annotations with relative_im_path and class ({err})") from err
    lists = {"train.txt": [], "test.txt": []}
    for index, (path, label) in enumerate(zip(list(paths.reshape(-1)), list(labels.reshape(-1)), strict=True)):
        label = int(label)
        if not 1 <= label <= 196:
            raise ListError(f"{mat_path}: annotation {index + 1} ({path}) has class {label}, outside 1-196")
        lists["train.txt" if label <= CARS_TRAIN_CLASSES else "test.txt"].append(Entry(str(path), label))
    return lists


def inshop_lists(root):
    """{list name: [Entry]} of In-Shop Clothes Retrieval from list_eval_partition.txt (root: the folder holding
    it and img/); the label of `id_00000002` is 2."""
    path = os.path.join(root, "list_eval_partition.txt")
    lines = _read_text_lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise ListError(f"{path}:1: expected the image count, got {lines[0] if lines else ''!r}")
    if lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
        raise ListError(f"{path}:2: expected the header 'image_name item_id evaluation_status', got {lines[1]!r}")
    lists = {"train.txt": [], "query.txt": [], "gallery.txt": []}
    for number, line in enumerate(lines[2:], start=3):
        if not line.strip():
            continue
        fields = line.split()
        status = fields[2] if len(fields) == 3 else None
        if status not in ("train", "query", "gallery") or not fields[1].startswith("id_") or \
                not fields[1][3:].isdigit():
            raise ListError(f"{path}:{number}: expected 'image_name id_<number> train|query|gallery', got {line!r}")
        lists[f"{status}.txt"].append(Entry(fields[0], int(fields[1][3:])))
    listed = sum(len(v) for v in lists.values())
    if listed != int(lines[0]):
        raise ListError(f"{path}:1: says {int(lines[0])} images, the file lists {listed}")
    return lists


READERS = {"cub": cub_lists, "cars": cars_lists, "inshop": inshop_lists}


def check_counts(dataset, lists, root):
    for name, expected in COUNTS[dataset].items():
        if len(lists[name]) != expected:
            raise ListError(f"{root}: {len(lists[name])} images for {name}, the published {dataset} split has "
                            f"{expected} (an incomplete download? --subset accepts a part of it)")


def write_lists(dataset, root, out_dir=None, subset=False):
    """Write the lists of `dataset` into out_dir (default root); returns {name: number of images}."""
    lists = READERS[dataset](root)
    if not subset:
        check_counts(dataset, lists, root)
    out_dir = out_dir or root
    os.makedirs(out_dir, exist_ok=True)
    for name, entries in lists.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            f.writelines(f"{entry.path} {entry.label}\n" for entry in entries)
    return {name: len(entries) for name, entries in lists.items()}


def check_images(names, out_dir, root, num_workers=2):
    """Decode every image of the written lists; returns the failures (each naming the image and list line)."""
    from src.data.decoding import find_bad_images
    from src.data.image_list import read_image_list

    bad = []
    for name in names:
        images = read_image_list(os.path.join(out_dir, name), root)
        bad += [reason for _, reason in find_bad_images(images, num_workers, f"checking {name}")]
    return bad


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m src.data.benchmark_lists", description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("root", help="the extracted dataset folder")
    parser.add_argument("--out-dir", help="where to write the lists (default: root)")
    parser.add_argument("--check", action="store_true", help="also decode every listed image")
    parser.add_argument("--subset", action="store_true", help="a part of the dataset: skip the count check")
    parser.add_argument("--workers", type=int, default=2, help="threads for --check")
    args, rest = parser.parse_known_args(argv)
    if args.dataset == "sop":
        from src.data.sop_lists import main as sop_main

        return sop_main([args.root, *(["--out-dir", args.out_dir] if args.out_dir else []),
                         *(["--check"] if args.check else []), *rest])
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    setup_logging()
    try:
        written = write_lists(args.dataset, args.root, args.out_dir, args.subset)
        out_dir = args.out_dir or args.root
        from src.data.image_list import read_image_list

        for name in written:
            images = read_image_list(os.path.join(out_dir, name), args.root)
            logger.info("%s: %d images, %d classes", os.path.join(out_dir, name), len(images), images.num_classes)
        if args.check:
            bad = check_images(written, out_dir, args.root, args.workers)
            for reason in bad:
                logger.error("%s", reason)
            if bad:
                logger.error("%d listed images are missing or do not decode", len(bad))
                return 1
            logger.info("all listed images exist and decode")
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
