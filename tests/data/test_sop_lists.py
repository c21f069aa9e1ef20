import os
import subprocess

import cv2
import numpy as np
import pytest

from src.data.sop_lists import ebay_to_list, head_lines, main, prepare_lists
from tests.paths import ROOT as REPO

HEADER = b"image_id class_id super_class_id path\n"
SIZES = {"train_half.txt": 4, "test_half.txt": 3, "train_tiny.txt": 2, "test_tiny.txt": 1}

# Blanks the way awk sees them: runs of spaces/tabs split, leading/trailing ones vanish,
# \r, \v and \f are field characters; empty and short lines still print " ".
TRICKY_TRAIN = (
    HEADER
    + b"1 1 1 bicycle_final/111_0.JPG\n"
    + b"2  1\t1   bicycle_final/111_1.JPG  \n"
    + b"\t 3 2 1 bicycle_final/222_0.JPG\n"
    + b"4 2 1 bicycle final/222_1.JPG\n"
    + b"\n"
    + b"5 3\n"
    + b"6 3 1 cabinet_final/333_0.JPG\r\n"
    + b"7 4\x0b 2 cabinet_final/444_0.JPG\n"
    + b"8 4\x0c 2 cabinet_final/444_1.JPG\n"
    + b"9 5 2 chair_final/555_0.JPG"
)
TEST = HEADER + b"".join(b"%d %d 3 sofa_final/%d_%d.JPG\n" % (i, 10 + i // 2, 10 + i // 2, i)
                         for i in range(1, 6))


def seed_commands(folder, sizes):
    """The seed's README commands, run with the real sed/awk/head."""
    script = (
        "sed '1d' Ebay_train.txt | awk -F' ' '{print $4\" \"$2}' > train.txt\n"
        "sed '1d' Ebay_test.txt | awk -F' ' '{print $4\" \"$2}' > test.txt\n"
        f"head -n {sizes['train_half.txt']} train.txt > train_half.txt\n"
        f"head -n {sizes['test_half.txt']} test.txt > test_half.txt\n"
        f"head -n {sizes['train_tiny.txt']} train.txt > train_tiny.txt\n"
        f"head -n {sizes['test_tiny.txt']} test.txt > test_tiny.txt\n"
    )
    subprocess.run(["bash", "-c", script], cwd=folder, check=True, env={**os.environ, "LC_ALL": "C"})


def write_ebay(folder, train, test):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Ebay_train.txt").write_bytes(train)
    (folder / "Ebay_test.txt").write_bytes(test)


@pytest.mark.parametrize("train", [TRICKY_TRAIN, TRICKY_TRAIN + b"\n", HEADER, b"", HEADER + b"1 2 3 a.jpg"],
                         ids=["tricky", "tricky-newline", "header-only", "empty", "no-newline"])
def test_lists_are_byte_identical_to_the_seed_commands(tmp_path, train):
    expected, ours = tmp_path / "seed", tmp_path / "ours"
    write_ebay(expected, train, TEST)
    write_ebay(ours, train, TEST)
    seed_commands(expected, SIZES)
    prepare_lists(str(ours), sizes=SIZES)
    for name in ["train.txt", "test.txt", *SIZES]:
        assert (ours / name).read_bytes() == (expected / name).read_bytes(), name


def test_ebay_to_list_and_head_directly():
    assert ebay_to_list(HEADER + b" 1  7 2 a/b.jpg \n") == b"a/b.jpg 7\n"
    assert head_lines(b"a\nb\nc\n", 2) == (b"a\nb\n", 2)
    assert head_lines(b"a\nb\n", 5) == (b"a\nb\n", 2)
    assert head_lines(b"a\nb", 5) == (b"a\nb", 2)


def test_default_sizes_are_the_seeds(tmp_path):
    write_ebay(tmp_path, TEST, TEST)
    written = {w.name: w for w in prepare_lists(str(tmp_path))}
    assert written["train_half.txt"].requested == 29437 and written["test_half.txt"].requested == 30003
    assert written["train_tiny.txt"].requested == 1012 and written["test_tiny.txt"].requested == 1048
    assert written["train_half.txt"].short and written["train_half.txt"].lines == 5


def make_sop_folder(folder, truncate=(), remove=()):
    """A tiny SOP-like folder: 6 training and 5 test images, some optionally truncated or removed."""
    train = HEADER + b"".join(b"%d %d 1 bike/%d.JPG\n" % (i, 1 + i // 2, i) for i in range(6))
    test = HEADER + b"".join(b"%d %d 2 sofa/%d.JPG\n" % (i, 7 + i // 2, i) for i in range(5))
    write_ebay(folder, train, test)
    for sub, count in [("bike", 6), ("sofa", 5)]:
        (folder / sub).mkdir()
        for i in range(count):
            cv2.imwrite(str(folder / sub / f"{i}.JPG"), np.full((8, 8, 3), 40 * i, np.uint8))
    for name in truncate:
        (folder / name).write_bytes((folder / name).read_bytes()[:50])
    for name in remove:
        os.remove(folder / name)


def size_args(sizes):
    return [arg for name, n in sizes.items() for arg in ("--" + name[:-4].replace("_", "-"), str(n))]


def test_main_reports_images_and_classes_and_short_lists(tmp_path, caplog):
    make_sop_folder(tmp_path)
    with caplog.at_level("INFO"):
        assert main([str(tmp_path), *size_args({**SIZES, "test_half.txt": 9})]) == 0
    assert f"{tmp_path / 'train.txt'}: 6 images, 3 classes" in caplog.text
    assert f"{tmp_path / 'train_tiny.txt'}: 2 images, 1 classes" in caplog.text
    assert "test_half.txt: 5 images, 3 classes (its source has only 5 lines, fewer than the 9" in caplog.text


def test_check_lists_missing_and_undecodable_images(tmp_path, caplog):
    make_sop_folder(tmp_path, truncate=["bike/2.JPG"], remove=["sofa/4.JPG"])
    with caplog.at_level("INFO"):
        assert main([str(tmp_path), "--check", *size_args(SIZES)]) == 1
    listed = f"(listed at {tmp_path / 'train.txt'}:3)"
    assert f"cannot decode image: {tmp_path / 'bike/2.JPG'} {listed}" in caplog.text
    assert f"image not found: {tmp_path / 'sofa/4.JPG'}" in caplog.text
    assert "2 listed images are missing or do not decode" in caplog.text


def test_missing_ebay_file_fails_with_a_clear_message(tmp_path, caplog):
    assert main([str(tmp_path)]) == 1
    assert "Ebay_train.txt not found" in caplog.text


def test_shell_wrapper_checks_a_good_folder(tmp_path):
    make_sop_folder(tmp_path)
    result = subprocess.run(["bash", os.path.join(REPO, "scripts/prepare_sop.sh"), str(tmp_path), "--check",
                             *size_args(SIZES)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all listed images exist and decode" in result.stderr
    assert (tmp_path / "test_tiny.txt").read_text() == "sofa/0.JPG 7\n"
