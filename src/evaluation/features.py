"""Feature extraction for retrieval evaluation (eval.py, the in-training eval, the inference chain)."""
import os

import numpy as np

from src.data.dataset import create_dataset
from src.data.decoding import drop_bad_images
from src.data.image_list import read_image_list
from src.evaluation.metrics import (
    check_positives,
    check_query_positives,
    l2_normalize_rows,
    query_gallery_metrics,
    retrieval_metrics,
)
from src.runtime.atomic_file import atomic_path
from src.runtime.log import Progress, get_logger

logger = get_logger()


def extract_features(backbone, dataset, total, what="extracting features"):
    """Run `backbone` in inference mode over a batched (image, label) dataset.

    `backbone`: a MindSpore Cell, or an engine of src.deploy.engines (numpy in, numpy out: `numpy_io`).
    Returns (features float32 (N, 2048), labels int32 (N,)), in dataset order, not normalised.
    """
    numpy_io = getattr(backbone, "numpy_io", False)
    was_training = backbone.training
    backbone.set_train(False)
    progress = Progress(total, what, logger)
    feats, labels = [], []
    try:
        for image, label in dataset.create_tuple_iterator(num_epochs=1, output_numpy=numpy_io):
            feats.append(backbone(image) if numpy_io else backbone(image).asnumpy())
            labels.append(np.asarray(label) if numpy_io else label.asnumpy())
            progress.update(len(labels[-1]))
    finally:
        backbone.set_train(was_training)
    if not feats:
        raise ValueError("the evaluation dataset produced no images")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def read_eval_list(dataset_path, list_name, cfg):
    """The ImageList of an evaluation list (unreadable images dropped with skip_bad)."""
    images = read_image_list(os.path.join(dataset_path, list_name), dataset_path)
    return drop_bad_images(images, cfg.num_parallel_workers) if cfg.skip_bad else images


def read_checked_list(dataset_path, eval_list, cfg):
    """The ImageList of a leave-one-out evaluation, checked to have queries with positives (before any feature
    is extracted; NoPositivesError otherwise)."""
    images = read_eval_list(dataset_path, eval_list, cfg)
    check_positives(images.labels, images.list_file, logger)
    return images


def read_checked_query_gallery(dataset_path, query_list, gallery_list, cfg):
    """(queries, gallery) ImageLists of a query/gallery evaluation, checked to have queries with positives."""
    queries, gallery = (read_eval_list(dataset_path, name, cfg) for name in (query_list, gallery_list))
    check_query_positives(queries.ids, gallery.ids, f"{queries.list_file} against {gallery.list_file}", logger)
    return queries, gallery


def list_features(backbone, dataset_path, images, cfg):
    """(L2-normalised features, class ids as written in the list file) of an ImageList, in list order.

    The features are normalised here, once: the metrics and the pictures take them as they are (normalize=False).
    """
    dataset = create_dataset(dataset_path, images, cfg.eval_batch_size, cfg.image_size, "eval",
                             num_parallel_workers=cfg.num_parallel_workers, eval_resize=cfg.eval_resize)
    features, labels = extract_features(backbone, dataset, len(images))
    features = l2_normalize_rows(features, f"features of {images.list_file}")  # rows in list order
    return features, images.class_ids[labels]  # the dataset yields labels in list order


def evaluate_backbone(backbone, dataset_path, eval_list, cfg, ks=(1, 10, 100, 1000), images=None):
    """Extract L2-normalised features for `eval_list` and compute the leave-one-out retrieval metrics.

    `images`: the list as read_checked_list returned it (an in-training evaluation reads it once).
    Returns (metrics dict, features (N, D) normalised, labels (the list's class ids), paths).
    """
    if images is None:
        images = read_checked_list(dataset_path, eval_list, cfg)
    features, labels = list_features(backbone, dataset_path, images, cfg)
    metrics = retrieval_metrics(features, labels, ks=ks, logger=logger, normalize=False)
    return metrics, features, labels, images.paths


def evaluate_query_gallery(backbone, dataset_path, query_list, gallery_list, cfg, ks=(1, 10, 20, 30, 40),
                           lists=None):
    """Query/gallery retrieval (In-Shop's protocol): every query ranks the whole gallery, no self-exclusion.

    `lists`: (queries, gallery) as read_checked_query_gallery returned them.
    Returns (metrics, (query features, labels, paths), (gallery features, labels, paths)); labels are the lists'
    class ids, so the two lists share them.
    """
    if lists is None:
        lists = read_checked_query_gallery(dataset_path, query_list, gallery_list, cfg)
    queries, gallery = lists
    query_features, query_labels = list_features(backbone, dataset_path, queries, cfg)
    gallery_features, gallery_labels = list_features(backbone, dataset_path, gallery, cfg)
    metrics = query_gallery_metrics(query_features, query_labels, gallery_features, gallery_labels, ks=ks,
                                    logger=logger, normalize=False)
    return (metrics, (query_features, query_labels, queries.paths),
            (gallery_features, gallery_labels, gallery.paths))


def save_features(path, features, labels, paths, **extra):
    """Write features, labels and image paths (and `extra` arrays) to an .npz file, atomically."""
    # np.savez appends .npz to a name without it.
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, features=features, labels=labels, paths=np.asarray(paths), **extra)
