"""The files of the offline inference chain: preprocess -> runner (Ascend 310 C++ or infer_cpu.py) -> postprocess.

    <output_path>/img_data/sop_<i>.bin    float32 (1, 3, S, S): eval transform of entry i of the list
    <output_path>/label/sop_<i>.bin       int32 (1,): its label (0..C-1, numbered as eval.py does)
    result_Files/sop_<i>_<k>.bin          runner: float32 output k of input sop_<i>.bin ((1, 2048) for k=0)
    time_Result/test_perform_static.txt   runner: average latency per input

i follows the list order (after skip_bad, as eval.py), so postprocess ranks in eval.py's order and
its Recall@K equals eval.py's for the same features. Raw native-endian arrays, no header.
"""
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from src.data.decoding import check_files_exist, drop_bad_images, load_image
from src.data.image_list import read_image_list
from src.data.transforms import eval_transform
from src.evaluation.metrics import DEFAULT_KS, format_metrics_table, query_gallery_metrics, retrieval_metrics
from src.models.resnet import FEATURE_DIM
from src.runtime.atomic_file import atomic_path, write_atomic
from src.runtime.log import Progress

IMAGE_DIR = "img_data"
LABEL_DIR = "label"
RESULT_DIR = "result_Files"
TIME_DIR = "time_Result"
TIME_FILE = "test_perform_static.txt"
_SAMPLE = re.compile(r"sop_(\d+)\.bin")
_RESULT = re.compile(r"sop_(\d+)_0\.bin")
_LISTED = 5


def sample_name(index):
    return f"sop_{index}.bin"


def result_name(input_file, output_index=0):
    """result_Files name of output `output_index` for input `input_file` (sop_3.bin -> sop_3_0.bin)."""
    return f"{os.path.splitext(os.path.basename(input_file))[0]}_{output_index}.bin"


def _listed(names):
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "")


def _check_replaceable(dest):
    """Raise unless `dest` is absent or holds only sop_<i>.bin files (an earlier preprocess output)."""
    if not os.path.lexists(dest):
        return
    if not os.path.isdir(dest):
        raise NotADirectoryError(f"{dest} exists and is not a folder")
    foreign = sorted(name for name in os.listdir(dest) if not _SAMPLE.fullmatch(name))
    if foreign:
        raise ValueError(f"{dest} holds files preprocess did not write ({_listed(foreign)}); "
                         "refusing to replace it: choose another --output_path")


def preprocess_eval_list(dataset_path, eval_list, output_path, cfg, logger=None):
    """Write img_data/ and label/ for `eval_list` (inside dataset_path) with cfg's eval transform.

    cfg supplies image_size, eval_resize, skip_bad and num_parallel_workers, as for eval.py. Both
    folders are built in hidden folders under output_path and moved into place when complete, so
    an interrupted run leaves the previous output (or none), never half-written files or a partial
    list (only a crash between the two final renames would pair a new img_data/ with an old label/).
    An existing img_data/ or label/ holding anything but sop_<i>.bin files is an error, checked first
    and again before it is replaced.
    Returns the number of samples written.
    """
    images = read_image_list(os.path.join(dataset_path, eval_list), dataset_path)
    dests = [os.path.join(output_path, folder) for folder in (IMAGE_DIR, LABEL_DIR)]
    for dest in dests:
        _check_replaceable(dest)
    images = drop_bad_images(images, cfg.num_parallel_workers) if cfg.skip_bad else check_files_exist(images)
    with atomic_path(dests[0], folder=True) as image_dir, atomic_path(dests[1], folder=True) as label_dir:
        def write_sample(index):
            image = load_image(images.full_path(index), images.where(index))
            chw = eval_transform(image, cfg.image_size, cfg.eval_resize)
            chw[None].astype(np.float32, copy=False).tofile(os.path.join(image_dir, sample_name(index)))
            # The class id as written in the list, so that a query list and a gallery list agree.
            np.array([images.ids[index]], np.int32).tofile(
                os.path.join(label_dir, sample_name(index)))

        progress = Progress(len(images), "preprocessing", logger) if logger else None
        # Decoding and cv2.resize release the GIL: threads run them in parallel.
        pool = ThreadPoolExecutor(max(1, int(cfg.num_parallel_workers)))
        try:
            for _ in pool.map(write_sample, range(len(images))):
                if progress:
                    progress.update()
        finally:
            pool.shutdown(cancel_futures=True)  # after an error, do not decode the rest of the list
        for dest in dests:  # the folders may have changed during the run
            _check_replaceable(dest)
    return len(images)


def list_input_files(folder):
    """The *.bin files of `folder`, sorted by name (the order the C++ runner uses)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"input folder not found: {folder}")
    files = sorted(name for name in os.listdir(folder) if name.endswith(".bin"))
    if not files:
        raise ValueError(f"{folder}: no *.bin input files")
    return [os.path.join(folder, name) for name in files]


def read_array(path, dtype, count):
    """The `count` values of type `dtype` stored in `path`; ValueError naming the file if its size differs."""
    expected = count * np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size != expected:
        raise ValueError(f"{path}: expected {count} {np.dtype(dtype).name} values ({expected} bytes), "
                         f"got {size} bytes")
    return np.fromfile(path, dtype)


def write_latency(output_dir, mean_ms, count):
    path = os.path.join(output_dir, TIME_DIR, TIME_FILE)
    write_atomic(path, f"NN inference cost average time: {mean_ms:.3f} ms of infer_count {count}\n")
    return path


def _indexed(folder, pattern, what):
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    found = {}
    for name in os.listdir(folder):
        match = pattern.fullmatch(name)
        if match:
            found[int(match.group(1))] = os.path.join(folder, name)
    return found


def load_results(result_path, label_path, feature_dim=FEATURE_DIM):
    """Pair result_Files/sop_<i>_0.bin with label/sop_<i>.bin for every label.

    Returns (features float32 (N, feature_dim), labels int32 (N,), result file names), ordered by i.
    Raises FileNotFoundError naming missing results, ValueError naming results without a label
    and files of the wrong size.
    """
    labels_at = _indexed(label_path, _SAMPLE, "label")
    if not labels_at:
        raise ValueError(f"{label_path}: no label files sop_<i>.bin")
    results_at = _indexed(result_path, _RESULT, "result")
    indices = sorted(labels_at)
    missing = [result_name(sample_name(i)) for i in indices if i not in results_at]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(indices)} result files missing in {result_path}: "
                                f"{_listed(missing)}")
    extra = [os.path.basename(results_at[i]) for i in sorted(set(results_at) - set(labels_at))]
    if extra:
        raise ValueError(f"{len(extra)} result files in {result_path} have no label in {label_path}: {_listed(extra)}")
    features = np.stack([read_array(results_at[i], np.float32, feature_dim) for i in indices])
    labels = np.concatenate([read_array(labels_at[i], np.int32, 1) for i in indices])
    return features, labels, [os.path.basename(results_at[i]) for i in indices]


def evaluate_results(features, labels, logger=None, ks=DEFAULT_KS, gallery=None):
    """(metrics, report text): retrieval metrics (Recall@K for `ks`) of the features, L2-normalised by the metrics
    as eval.py's are, and the acc.log text; leave-one-out, or with `gallery` = (features, labels) the queries
    against that gallery."""
    if gallery is None:
        metrics = retrieval_metrics(features, labels, ks=ks, logger=logger)
    else:
        metrics = query_gallery_metrics(features, labels, gallery[0], gallery[1], ks=ks, logger=logger)
    report = f"{format_metrics_table(metrics)}\neval_recall: {metrics['recall@1']:.4f}\n"
    return metrics, report
