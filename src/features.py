"""Feature extraction for retrieval evaluation (eval.py, the in-training eval, the inference chain)."""
import os
import tempfile

import numpy as np

from src.dataset import create_dataset, drop_bad_images, read_image_list
from src.log import Progress, get_logger
from src.metrics import check_positives, retrieval_metrics

logger = get_logger(__name__)


def l2_normalize_rows(features, eps=1e-12):
    """Numpy twin of src.resnet.l2_normalize: x / sqrt(sum(x^2) + eps), row-wise, float32."""
    features = np.asarray(features, np.float32)
    return features / np.sqrt((features.astype(np.float64) ** 2).sum(1, keepdims=True) + eps).astype(np.float32)


def extract_features(backbone, dataset, total, what="extracting features"):
    """Run `backbone` in inference mode over a batched (image, label) dataset.

    Returns (features float32 (N, 2048), labels int32 (N,)), in dataset order, not normalised.
    """
    was_training = backbone.training
    backbone.set_train(False)
    progress = Progress(total, what, logger)
    feats, labels = [], []
    try:
        for image, label in dataset.create_tuple_iterator(num_epochs=1):
            feats.append(backbone(image).asnumpy())
            labels.append(label.asnumpy())
            progress.update(len(labels[-1]))
    finally:
        backbone.set_train(was_training)
    if not feats:
        raise ValueError("the evaluation dataset produced no images")
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels).astype(np.int32)


def evaluate_backbone(backbone, dataset_path, eval_list, cfg, ks=(1, 10, 100, 1000)):
    """Extract L2-normalised features for `eval_list` and compute the retrieval metrics.

    Returns (metrics dict, features (N, 2048) normalised, labels, paths).
    """
    images = read_image_list(os.path.join(dataset_path, eval_list), dataset_path)
    if cfg.skip_bad:
        images = drop_bad_images(images, cfg.num_parallel_workers)
    check_positives(images.labels, images.list_file, logger)  # before the expensive part
    dataset = create_dataset(dataset_path, images, cfg.eval_batch_size, cfg.image_size, "eval",
                             num_parallel_workers=cfg.num_parallel_workers, eval_resize=cfg.eval_resize)
    features, labels = extract_features(backbone, dataset, len(images))
    features = l2_normalize_rows(features)
    metrics = retrieval_metrics(features, labels, ks=ks, logger=logger)
    return metrics, features, labels, images.paths


def save_features(path, features, labels, paths):
    """Write features, labels and image paths to an .npz file, atomically."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".features-", suffix=".npz", dir=directory)
    os.close(fd)
    try:
        np.savez(tmp, features=features, labels=labels, paths=np.asarray(paths))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
