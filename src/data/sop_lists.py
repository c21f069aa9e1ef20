"""Write the Stanford Online Products list files (train.txt, test.txt and their half/tiny prefixes).

Usage: python -m src.data.sop_lists DATASET_PATH [--check] [--out-dir DIR] [--train-half N] ...

The output is byte-identical to the seed's shell commands, run inside Stanford_Online_Products/:
    sed '1d' Ebay_train.txt | awk -F' ' '{print $4" "$2}' > train.txt      (same for test)
    head -n 29437 train.txt > train_half.txt ; head -n 30003 test.txt > test_half.txt
    head -n 1012 train.txt > train_tiny.txt  ; head -n 1048 test.txt > test_tiny.txt
--check additionally decodes every listed image and lists the ones that fail (exit status 1).
"""
import argparse
import logging
import os
import re
import sys
from dataclasses import dataclass

from src.runtime.log import get_logger, setup_logging

logger = get_logger()

SOURCES = {"train.txt": "Ebay_train.txt", "test.txt": "Ebay_test.txt"}
# name -> (source list, default number of lines); the seed's sizes.
PREFIX_LISTS = {
    "train_half.txt": ("train.txt", 29437),
    "test_half.txt": ("test.txt", 30003),
    "train_tiny.txt": ("train.txt", 1012),
    "test_tiny.txt": ("test.txt", 1048),
}
# awk's default field splitting (-F' '): runs of blanks and newlines, leading/trailing ones ignored.
# Only space, tab and newline count as blanks (not \r, \v, \f), so Python's bytes.split() would differ.
_AWK_BLANKS = re.compile(rb"[ \t\n]+")


@dataclass
class WrittenList:
    name: str
    lines: int
    requested: int | None = None  # head count, for prefix lists

    @property
    def short(self):
        return self.requested is not None and self.lines < self.requested


def ebay_to_list(data):
    """`sed '1d' | awk -F' ' '{print $4" "$2}'` on the bytes of an Ebay_*.txt file."""
    records = data.split(b"\n")
    if records[-1] == b"":  # text after the last newline is a record only if non-empty
        records.pop()
    out = []
    for record in records[1:]:
        fields = [f for f in _AWK_BLANKS.split(record) if f]
        path = fields[3] if len(fields) > 3 else b""
        class_id = fields[1] if len(fields) > 1 else b""
        out.append(path + b" " + class_id + b"\n")
    return b"".join(out)


def head_lines(data, count):
    """`head -n count`: the first `count` lines (all of them if there are fewer); returns (bytes, lines)."""
    end, lines = 0, 0
    while lines < count and end < len(data):
        newline = data.find(b"\n", end)
        end = len(data) if newline < 0 else newline + 1
        lines += 1
    return data[:end], lines


def prepare_lists(dataset_path, out_dir=None, sizes=None):
    """Write train.txt, test.txt and the prefix lists into out_dir (default dataset_path).

    sizes: {prefix list name: line count} overriding PREFIX_LISTS' defaults. Returns [WrittenList].
    """
    out_dir = dataset_path if out_dir is None else out_dir
    sizes = {name: default for name, (_, default) in PREFIX_LISTS.items()} | dict(sizes or {})
    written, contents = [], {}
    for name, source in SOURCES.items():
        source_path = os.path.join(dataset_path, source)
        if not os.path.isfile(source_path):
            raise FileNotFoundError(f"{source_path} not found; is {dataset_path} an extracted "
                                    f"Stanford_Online_Products folder?")
        with open(source_path, "rb") as f:
            data = f.read()
        if not data.startswith(b"image_id"):
            logger.warning("%s: first line is not the 'image_id ...' header, deleting it anyway "
                           "(as the seed's sed '1d' does)", source_path)
        contents[name] = ebay_to_list(data)
        written.append(WrittenList(name, contents[name].count(b"\n")))
    for name, (source, _) in PREFIX_LISTS.items():
        contents[name], lines = head_lines(contents[source], sizes[name])
        written.append(WrittenList(name, lines, sizes[name]))
    os.makedirs(out_dir, exist_ok=True)
    for name, data in contents.items():
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(data)
    return written


def report_lists(out_dir, written, dataset_path):
    """Log images and classes of each written list; False if one of them is not a valid list."""
    from src.data.image_list import read_image_list  # imports MindSpore; only needed here

    ok = True
    for item in written:
        path = os.path.join(out_dir, item.name)
        note = (f" (its source has only {item.lines} lines, fewer than the {item.requested} asked for: "
                f"took all)" if item.short else "")
        try:
            images = read_image_list(path, dataset_path)
        except ValueError as error:
            logger.error("%s: %d lines, not a valid list: %s", path, item.lines, error)
            ok = False
            continue
        level = logging.WARNING if item.short else logging.INFO
        logger.log(level, "%s: %d images, %d classes%s", path, len(images), images.num_classes, note)
    return ok


def check_images(out_dir, dataset_path, num_workers=2):
    """Decode every image of train.txt and test.txt (the prefix lists are subsets); returns the failures."""
    from src.data.decoding import find_bad_images
    from src.data.image_list import read_image_list

    bad = []
    for name in SOURCES:
        images = read_image_list(os.path.join(out_dir, name), dataset_path)
        bad += [reason for _, reason in find_bad_images(images, num_workers, f"checking {name}")]
    return bad


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m src.data.sop_lists", description=__doc__.split("\n")[0])
    parser.add_argument("dataset_path", help="extracted Stanford_Online_Products folder")
    parser.add_argument("--out-dir", help="where to write the lists (default: dataset_path)")
    parser.add_argument("--check", action="store_true", help="also decode every listed image")
    parser.add_argument("--workers", type=int, default=2, help="threads for --check")
    for name, (_, default) in PREFIX_LISTS.items():
        flag = "--" + name.removesuffix(".txt").replace("_", "-")
        parser.add_argument(flag, type=int, default=default, metavar="N",
                            help=f"lines in {name} (default {default})")
    return parser.parse_args(argv)


def main(argv=None):
    setup_logging()
    args = parse_args(argv)
    out_dir = args.out_dir or args.dataset_path
    sizes = {name: getattr(args, name.removesuffix(".txt")) for name in PREFIX_LISTS}
    try:
        written = prepare_lists(args.dataset_path, out_dir, sizes)
        ok = report_lists(out_dir, written, args.dataset_path)
        if args.check and ok:
            bad = check_images(out_dir, args.dataset_path, args.workers)
            for reason in bad:
                logger.error("%s", reason)
            if bad:
                logger.error("%d listed images are missing or do not decode", len(bad))
                ok = False
            else:
                logger.info("all listed images exist and decode")
    except (OSError, ValueError) as error:
        logger.error("%s", error)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
