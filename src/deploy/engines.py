"""CPU inference engines for feature extraction: ONNX Runtime and OpenVINO run the ONNX file export.py writes.

    engine = open_engine("openvino", "resnet50.onnx", threads=2)
    features = engine(images)           # float32 (N, 3, S, S) numpy -> float32 (N, D) numpy

An exported model has a fixed batch (export.py's --batch_size); an engine runs any number of images through
it, padding the last short batch with zeros and dropping their rows (inference mode: rows are independent).
Both engines compute in the precision asked (src.deploy.quantize: fp32, bf16 in OpenVINO, int8 on an int8 file),
float32 by default: OpenVINO's CPU plugin would otherwise pick bf16 on CPUs that have it (AVX512_BF16, AMX).
OpenVINO's oneDNN runs uncapped (src.runtime.env.onednn_uncapped): our AVX2 cap on AVX-512
CPUs is for MindSpore's convolutions; OpenVINO's own blocked-layout kernels are faster without it.

`onnx_for_checkpoint` writes the ONNX of a checkpoint's backbone once, next to the checkpoint, and reuses it
while the checkpoint and the export settings are unchanged (eval.py --backend onnxruntime|openvino); its int8 model
is cached beside it (src.deploy.quantize.int8_for_onnx); a cached file that does not load (e.g. truncated) is made
again.
"""
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np

from src.deploy.quantize import PRECISIONS, check_model_precision, check_precision, int8_for_onnx
from src.runtime.env import onednn_uncapped
from src.runtime.log import get_logger

logger = get_logger()

BACKENDS = ("mindspore", "onnxruntime", "openvino")
ENGINE_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


class EngineUnavailableError(ValueError):
    """The package of the chosen --backend is not installed."""


class ModelLoadError(ValueError):
    """An ONNX model just exported does not load in the engine."""


def check_backend(name):
    """`name` if it is one of BACKENDS, else ValueError naming --backend and the choices."""
    if name not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def add_engine_arguments(parser, backend_help, precision=True):
    """--backend (default mindspore; checked by check_backend, so a bad value is a one-line error), --threads and
    (`precision`) --precision (checked by src.deploy.quantize.check_precision)."""
    parser.add_argument("--backend", default="mindspore", metavar="{" + ",".join(BACKENDS) + "}", help=backend_help)
    parser.add_argument("--threads", type=int, default=None,
                        help="inference threads (default: every core this process may use)")
    if precision:
        parser.add_argument("--precision", default="fp32", metavar="{" + ",".join(PRECISIONS) + "}",
                            help="what the engine computes in: fp32; bf16 (openvino, on CPUs with AVX512_BF16 or "
                                 "AMX); int8 (onnxruntime / openvino: the model quantized after training, calibrated "
                                 "on --calibration_list where the model is exported here)")


def default_threads():
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_threads(threads):
    """`threads` as an int >= 1 (None: default_threads()); ValueError naming --threads otherwise."""
    if threads is None:
        return default_threads()
    if int(threads) < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    return int(threads)


def _import_engine(backend):
    try:
        return __import__(ENGINE_PACKAGES[backend])
    except ImportError as err:
        raise EngineUnavailableError(f"--backend {backend} needs the {ENGINE_PACKAGES[backend]} package: "
                                     f"pip install {ENGINE_PACKAGES[backend]} ({err})") from err


class _FixedBatchEngine:
    """Runs a fixed-batch model over any number of images (numpy in, numpy out)."""

    numpy_io = True  # src.evaluation.features.extract_features feeds numpy batches
    training = False

    def __init__(self, model_path, input_shape):
        self.model_path = model_path
        self.input_shape = tuple(int(d) for d in input_shape)
        if len(self.input_shape) != 4 or min(self.input_shape) < 1:
            raise ValueError(f"{model_path}: expected a fixed (N, 3, S, S) input, found {input_shape}")
        self.batch = self.input_shape[0]

    def set_train(self, mode=True):
        if mode:
            raise ValueError("an inference engine cannot train")

    def _run(self, images):
        raise NotImplementedError

    def __call__(self, images):
        images = np.ascontiguousarray(images, np.float32)
        if images.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"{self.model_path} takes images of shape {self.input_shape[1:]}, got "
                             f"{images.shape[1:]}: extract with the image_size it was exported for")
        out = []
        for start in range(0, len(images), self.batch):
            chunk = images[start:start + self.batch]
            if len(chunk) < self.batch:
                pad = np.zeros((self.batch - len(chunk),) + chunk.shape[1:], np.float32)
                out.append(self._run(np.concatenate([chunk, pad]))[:len(chunk)])
            else:
                out.append(self._run(chunk))
        return np.concatenate(out).astype(np.float32, copy=False)


class OnnxRuntimeEngine(_FixedBatchEngine):
    """An ONNX model in ONNX Runtime's CPU execution provider, all graph optimisations on (an int8 file's QDQ pairs
    become int8 operators)."""

    def __init__(self, model_path, threads=None, precision="fp32"):
        check_precision(precision, "onnxruntime")
        check_model_precision(model_path, precision)
        ort = _import_engine("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = check_threads(threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{model_path}: expected a model with one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        super().__init__(model_path, inputs[0].shape)

    def _run(self, images):
        return self.session.run(None, {self.input_name: images})[0]


class OpenVinoEngine(_FixedBatchEngine):
    """An ONNX model compiled by OpenVINO for its CPU plugin, `threads` inference threads: float32, or bfloat16
    (bf16), or an int8 file's quantized operators in int8 and the rest in float32 (int8)."""

    def __init__(self, model_path, threads=None, precision="fp32"):
        check_precision(precision, "openvino")
        check_model_precision(model_path, precision)
        ov = _import_engine("openvino")
        core = ov.Core()
        if precision == "bf16":
            check_bf16_cpu(core)
        model = core.read_model(model_path)
        if len(model.inputs) != 1:
            raise ValueError(f"{model_path}: expected a model with one input, found {len(model.inputs)}")
        shape = model.inputs[0].get_partial_shape()
        if shape.is_dynamic:
            raise ValueError(f"{model_path}: expected a fixed input shape, found {shape}")
        config = {"INFERENCE_NUM_THREADS": check_threads(threads),
                  "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        with onednn_uncapped():  # its oneDNN reads the cap when it first compiles
            self.compiled = core.compile_model(model, "CPU", config)
            self.request = self.compiled.create_infer_request()
            self.request.infer([np.zeros(shape.to_shape(), np.float32)])
        super().__init__(model_path, shape.to_shape())

    def _run(self, images):
        return self.request.infer([images])[0]


def check_bf16_cpu(core=None):
    """ValueError unless OpenVINO finds bfloat16 instructions (AVX512_BF16 or AMX) on this CPU."""
    with onednn_uncapped():  # the plugin's oneDNN reads the cap when it loads: capped, it has no bf16 kernels
        core = core or _import_engine("openvino").Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in capabilities:
        raise ValueError("--precision bf16: this CPU has no bfloat16 instructions (AVX512_BF16 or AMX); use "
                         "--precision fp32 or int8")


ENGINES = {"onnxruntime": OnnxRuntimeEngine, "openvino": OpenVinoEngine}


def open_engine(backend, model_path, threads=None, precision="fp32"):
    """The engine of `backend` (onnxruntime | openvino) on the ONNX file `model_path`, computing in `precision`
    (int8: `model_path` must be an int8 file)."""
    check_backend(backend)
    if backend not in ENGINES:
        raise ValueError(f"--backend {backend} runs the network itself, not an exported file")
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"ONNX model not found: {model_path}")
    if not model_path.lower().endswith(".onnx"):
        raise ValueError(f"--backend {backend} runs an ONNX file (export.py --file_format ONNX), got {model_path}")
    return ENGINES[backend](model_path, threads, precision)


def onnx_cache_path(ckpt_path, image_size, batch_size, settings=None):
    """<checkpoint>.<image_size>px-b<batch_size>-<key>.onnx, the key 10 hex digits of a hash of the checkpoint's
    path, size and modification time, the input shape and `settings`."""
    stat = os.stat(ckpt_path)
    key = dict(settings or {}, checkpoint=os.path.abspath(ckpt_path), size=stat.st_size, mtime_ns=stat.st_mtime_ns,
               image_size=int(image_size), batch_size=int(batch_size))
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    return f"{os.path.abspath(ckpt_path)}.{int(image_size)}px-b{int(batch_size)}-{digest}.onnx"


def onnx_for_checkpoint(backbone, ckpt_path, image_size, batch_size, settings=None, reuse=True):
    """The ONNX file of `backbone` (loaded from `ckpt_path`, features not normalised) for a fixed
    (batch_size, 3, image_size, image_size) input.

    Cached next to the checkpoint (onnx_cache_path; `settings`: the backbone's padding and head): a changed
    checkpoint or setting, or reuse=False, is exported again. Where the checkpoint's folder is not writable, the
    file goes to a temporary folder (a warning says so). `ckpt_path` None (a random init): always a temporary file.
    Returns (path, how): how "reused" (the cached file), "exported" (written to the cache now) or "temporary"
    (a temporary folder's file, which the caller removes when done with it).
    """
    name = None
    if ckpt_path is not None:
        name = onnx_cache_path(ckpt_path, image_size, batch_size, settings)
        if reuse and os.path.isfile(name):
            logger.info("ONNX model: reusing %s (same checkpoint and settings)", name)
            return name, "reused"
        if not os.access(os.path.dirname(name), os.W_OK):
            logger.warning("%s is not writable: the ONNX model goes to a temporary folder (exported again "
                           "next time)", os.path.dirname(name))
            name = None
    how = "exported" if name is not None else "temporary"
    if how == "temporary":
        name = os.path.join(tempfile.mkdtemp(prefix="metric_learn_onnx_"), "backbone.onnx")
    from src.deploy.export import FeatureNet, export_network

    was_training = backbone.training
    backbone.set_train(False)
    try:
        net = FeatureNet(backbone)
        net.set_train(False)
        logger.info("ONNX model: exporting the backbone (%d px, batch %d) to %s", image_size, batch_size, name)
        path = export_network(net, name, "ONNX", batch_size=batch_size, image_size=image_size)
    except BaseException:
        if how == "temporary":
            shutil.rmtree(os.path.dirname(name), ignore_errors=True)
        raise
    finally:
        backbone.set_train(was_training)
    return path, how


def _load_error(err):
    """An engine's load error in one line: its type and its last line (ONNX Runtime's has one line; OpenVINO's
    start with the C++ places it passed through and end with what went wrong)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1]}" if lines else type(err).__name__


def _model_file(backend, backbone, ckpt_path, image_size, batch_size, settings, calibration, reuse=True):
    """(path, how) of the file `backend` runs: the float32 export (onnx_for_checkpoint), or with a `calibration`
    its int8 model by the engine's own tool beside it (int8_for_onnx; how "reused" when that file was)."""
    path, how = onnx_for_checkpoint(backbone, ckpt_path, image_size, batch_size, settings, reuse)
    if calibration is None:
        return path, how
    try:
        int8_path, int8_how = int8_for_onnx(path, calibration, image_size, backend, reuse)
    except BaseException:
        if how == "temporary":
            shutil.rmtree(os.path.dirname(path), ignore_errors=True)
        raise
    return int8_path, ("temporary" if how == "temporary" else int8_how)


def extraction_engine(backend, backbone, ckpt_path, image_size, batch_size, threads=None, settings=None,
                      precision="fp32", calibration=None):
    """What extracts features for `backend`: `backbone` itself for mindspore, else the engine on its ONNX export
    (onnx_for_checkpoint: cached next to `ckpt_path`) in `precision`; int8 needs `calibration`
    (src.deploy.calibration.read_calibration) and runs the export's int8 model by the engine's own quantizer
    (cached beside it).

    A cached model that does not load in the engine (a damaged file) is made again, with a warning naming it; a
    model that does not load right after it was written is a ModelLoadError naming the file.
    """
    check_precision(precision, check_backend(backend))
    if precision == "int8" and calibration is None:
        raise ValueError("--precision int8 needs --calibration_list: a list of training images to calibrate on")
    if backend == "mindspore":
        return backbone
    _import_engine(backend)  # a missing package or CPU feature fails before the export
    if precision == "bf16":
        check_bf16_cpu()
    calibration = calibration if precision == "int8" else None
    path, how = _model_file(backend, backbone, ckpt_path, image_size, batch_size, settings, calibration)
    engine = None
    if how == "reused":
        try:
            engine = open_engine(backend, path, threads, precision)
        except Exception as err:  # whatever the engine makes of a damaged file: export it again
            logger.warning("ONNX model: the cached %s does not load in %s (%s); exporting it again", path, backend,
                           _load_error(err))
            path, how = _model_file(backend, backbone, ckpt_path, image_size, batch_size, settings, calibration,
                                    reuse=False)
    if engine is None:
        try:
            engine = open_engine(backend, path, threads, precision)
        except Exception as err:
            raise ModelLoadError(f"{path}: the ONNX model just exported does not load in {backend} "
                                 f"({_load_error(err)})") from err
        finally:
            if how == "temporary":  # the engine holds the model now
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)
    logger.info("features by %s on %s, %d thread(s), %s", backend, path, check_threads(threads), precision)
    return engine
