"""Features of images the way an index's manifest says to make them: a checkpoint's backbone, its settings, the
evaluation preprocessing (image size, eval resize), the extraction backend and its precision.

An index is built through the data pipeline (`embed_list`: src.evaluation.features.list_features, as eval.py);
queries, from files or from the bytes of an upload, take the same decoding and transform (src.data.decoding,
src.data.transforms.eval_transform) in this process (`embed_files`, `embed_bytes`), so a query that is an indexed
image gets that image's features.
"""
import os
from types import SimpleNamespace

import numpy as np

from src.data.decoding import decode_image, load_image
from src.data.transforms import eval_transform
from src.evaluation.features import list_features
from src.evaluation.metrics import l2_normalize_rows
from src.retrieval.index import file_sha256
from src.runtime.log import get_logger

logger = get_logger()
DEFAULT_BATCH = 64  # queries of an index that does not record its build's batch


def checkpoint_sha256(ckpt_path):
    """The SHA-256 of a checkpoint file (FileNotFoundError naming it if it is not there)."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"checkpoint not found: {ckpt_path}")
    return file_sha256(ckpt_path)


def embedding_settings(cfg, ckpt_path, padding, kernels, backend, precision="fp32", calibration=None):
    """What an index records of how its features were made (the manifest's keys; see src.retrieval.index); an int8
    index also its calibration (src.deploy.calibration.Calibration.record)."""
    settings = {"checkpoint": os.path.abspath(ckpt_path), "checkpoint_sha256": checkpoint_sha256(ckpt_path),
                "backbone": {"backbone_padding": padding, "pooling": cfg.pooling,
                             "embedding_size": int(cfg.embedding_size),
                             "embedding_normalize": bool(cfg.embedding_normalize), "cpu_kernels": kernels},
                "image_size": int(cfg.image_size), "eval_resize": cfg.eval_resize, "backend": backend,
                "precision": precision, "batch_size": int(cfg.eval_batch_size)}
    if calibration is not None:
        settings["calibration"] = calibration.record()
    return settings


def query_settings(manifest, backend=None, precision=None):
    """An index's settings for embedding queries: its backend and precision, or `backend` / `precision` (checked:
    int8 needs the calibration of an int8 index)."""
    from src.deploy.engines import check_backend
    from src.deploy.quantize import check_precision

    backend = check_backend(backend or manifest["backend"])
    precision = check_precision(precision or manifest.get("precision", "fp32"), backend)
    if precision == "int8" and "calibration" not in manifest:
        raise ValueError("--precision int8 takes the calibration of an index built with --precision int8; this one "
                         f"was built in {manifest.get('precision', 'fp32')}")
    return dict(manifest, backend=backend, precision=precision)


def checkpoint_for(manifest, ckpt_path=None):
    """The checkpoint to embed queries with: `ckpt_path` (a copy elsewhere) or the manifest's own; ValueError if its
    SHA-256 is not the manifest's (another checkpoint, or the file changed since the build)."""
    path = ckpt_path or manifest["checkpoint"]
    if ckpt_path is None and not os.path.isfile(path):
        raise FileNotFoundError(f"the index's checkpoint {path} is not there any more: give its new place with "
                                f"--ckpt_path")
    digest = checkpoint_sha256(path)
    if digest != manifest["checkpoint_sha256"]:
        raise ValueError(f"checkpoint {path} (SHA-256 {digest[:12]}...) is not the one the index was built with "
                         f"({manifest['checkpoint']}, SHA-256 {manifest['checkpoint_sha256'][:12]}...): its features "
                         f"would not be comparable; search with that checkpoint, or build a new index")
    return path


class Embedder:
    """L2-normalised features of images with `settings`' preprocessing, by `network` (a MindSpore Cell or an engine
    of src.deploy.engines)."""

    def __init__(self, network, settings, batch_size=64, num_parallel_workers=2):
        self.network = network
        self.settings = settings
        self.batch_size = int(batch_size)
        self.pipeline = SimpleNamespace(eval_batch_size=self.batch_size, image_size=int(settings["image_size"]),
                                        eval_resize=settings["eval_resize"],
                                        num_parallel_workers=int(num_parallel_workers))

    def embed_list(self, images):
        """Features of an ImageList, in list order, through the data pipeline."""
        return list_features(self.network, images.root, images, self.pipeline)[0]

    def embed_images(self, images):
        """Features of HxWx3 uint8 RGB arrays (as src.data.decoding decodes them)."""
        size, resize = self.pipeline.image_size, self.pipeline.eval_resize
        out = []
        numpy_io = getattr(self.network, "numpy_io", False)
        self.network.set_train(False)
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([eval_transform(image, size, resize) for image in images[start:start + self.batch_size]])
            if numpy_io:
                out.append(self.network(batch))
            else:
                import mindspore as ms

                out.append(self.network(ms.Tensor(batch)).asnumpy())
        return l2_normalize_rows(np.concatenate(out))

    def embed_files(self, paths):
        """Features of image files (each decoded first: one that does not decode is a ValueError naming it)."""
        return self.embed_images([load_image(path) for path in paths])

    def embed_bytes(self, data, name="upload"):
        """Features of one image file's bytes (an upload)."""
        return self.embed_images([decode_image(data, name)])


def open_embedder(ckpt_path, settings, threads, device_target="CPU", batch_size=None, num_parallel_workers=2):
    """The Embedder of `settings` (embedding_settings or an index's manifest) on `ckpt_path`: the backbone built,
    the checkpoint loaded strictly, and wrapped in the settings' backend (src.deploy.engines.extraction_engine);
    `batch_size` None: the settings' (an engine's exported model then is the index build's, reused), else 64."""
    batch_size = int(batch_size or settings.get("batch_size", DEFAULT_BATCH))
    from src.deploy.calibration import calibration_from_record
    from src.deploy.engines import extraction_engine
    from src.kernels import build as cpu_kernels
    from src.models.checkpoint import load_backbone_checkpoint
    from src.models.resnet import ResNet50
    from src.runtime.context import init_context, set_cpu_threads

    backend = settings["backend"]
    precision = settings.get("precision", "fp32")
    if backend != "mindspore" and device_target != "CPU":
        raise ValueError(f"--backend {backend} runs on CPU; use --device_target CPU (got {device_target})")
    init_context(device_target)
    if device_target == "CPU":
        set_cpu_threads(threads)
    head = dict(settings["backbone"])
    padding = head.pop("backbone_padding")
    kernels = head.pop("cpu_kernels")
    kernels = (cpu_kernels.resolve(kernels, device_target, threads) if backend == "mindspore"
               else cpu_kernels.MINDSPORE)  # an engine exports the backbone: MindSpore's own ops
    backbone = ResNet50(padding, kernels=kernels, **head)
    load_backbone_checkpoint(backbone, ckpt_path)
    calibration = calibration_from_record(settings["calibration"]) if precision == "int8" else None
    network = extraction_engine(backend, backbone, ckpt_path, settings["image_size"], batch_size, threads,
                                dict(head, padding=padding), precision, calibration)
    return Embedder(network, settings, batch_size, num_parallel_workers)
