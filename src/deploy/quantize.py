"""Numeric precision of CPU inference: float32, bfloat16 or int8, and the int8 ONNX model that runs the last.

    check_precision("int8", "openvino")                  # ValueError for a value or engine that cannot run it
    quantize_onnx("backbone.onnx", "backbone.int8.onnx", batches, tool="openvino")          # NNCF
    path, how = int8_for_onnx("backbone.onnx", calibration, 224, "onnxruntime")   # cached next to it

- fp32: the exported model as it is (both engines).
- bf16: the float32 model, computed by OpenVINO in bfloat16 (INFERENCE_PRECISION_HINT) on CPUs that have it
  (AVX512_BF16 or AMX); ONNX Runtime's CPU provider has no bfloat16 convolutions, so it is OpenVINO only.
- int8: post-training static quantization of the float32 ONNX export by the engine's own tool (openvino: NNCF;
  onnxruntime: onnxruntime.quantization.quantize_static), after BatchNorm is folded into the convolutions (ONNX
  Runtime's quant_pre_process) at opset 13 (per-channel weights), calibrated on training images
  (src.deploy.calibration). Each tool writes a QDQ ONNX file that both engines run in int8; each engine runs its own
  tool's file with the smaller loss in Recall (docs/speed.md "Quantized extraction").

The int8 model is cached next to the float32 export it came from, keyed on the tool, the calibration (its list's
SHA-256 and size) and the tool's versions, as the float32 export is keyed on its checkpoint.
"""
import hashlib
import json
import mmap
import os
import shutil
import tempfile

from src.deploy.calibration import Calibration
from src.runtime.atomic_file import atomic_path
from src.runtime.log import get_logger

logger = get_logger()

PRECISIONS = ("fp32", "bf16", "int8")
PRECISION_ENGINES = {"fp32": ("mindspore", "onnxruntime", "openvino"), "bf16": ("openvino",),
                     "int8": ("onnxruntime", "openvino")}
OPSET = 13  # per-channel QuantizeLinear / DequantizeLinear
# Each engine's own post-training quantizer, by the packages it needs.
TOOLS = {"openvino": ("nncf", "onnx", "onnxruntime"), "onnxruntime": ("onnx", "onnxruntime")}
# An ONNX NodeProto's op_type (field 4, length-delimited) of 14 bytes: the QDQ node every int8 model has.
_QUANTIZE_NODE = b'"\x0eQuantizeLinear'
METADATA_KEY = "metric_learn.quantization"
# Pixels per calibration batch: the tools hold every activation of a batch at once (7.3-8.5 GB of memory at 32
# images of 224 px), and NNCF's activation ranges are means over batches of each batch's extremes, so the batch
# must not be small either (8 images of 32 px clipped more: the demo's model lost 0.0053 Recall@1, 64 none).
CALIBRATION_PIXELS = 16 * 224 * 224
MAX_CALIBRATION_BATCH = 64


def calibration_batch(image_size):
    """Images per calibration batch at `image_size`: 64 up to 112 px, 16 at 224 px, at least 1."""
    return int(max(1, min(MAX_CALIBRATION_BATCH, CALIBRATION_PIXELS // (int(image_size) ** 2))))


def check_precision(precision, backend):
    """`precision` if `backend` runs it, else ValueError naming --precision (and what to use instead)."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if backend not in PRECISION_ENGINES[precision]:
        engines = " or ".join(PRECISION_ENGINES[precision])
        why = {"bf16": " (ONNX Runtime's CPU provider has no bfloat16 convolutions)"}.get(precision, "")
        raise ValueError(f"--precision {precision} runs on --backend {engines}, not {backend}{why}")
    return precision


def is_quantized(model_path):
    """Whether the ONNX file holds QuantizeLinear nodes (an int8 model), without parsing it."""
    with open(model_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(_QUANTIZE_NODE) >= 0


def check_model_precision(model_path, precision):
    """ValueError when an int8 file is run as fp32/bf16 or a float file as int8 (they would silently differ)."""
    quantized = is_quantized(model_path)
    if precision == "int8" and not quantized:
        raise ValueError(f"--precision int8: {model_path} is a float32 model; export an int8 one with export.py "
                         f"--file_format ONNX --quantize int8 --calibration_list LIST")
    if precision != "int8" and quantized:
        raise ValueError(f"{model_path} is an int8 model: run it with --precision int8 (got {precision})")


def _import(names):
    try:
        return [__import__(name) for name in names]
    except ImportError as err:
        raise ValueError(f"int8 quantization needs the packages {', '.join(names)}: pip install {' '.join(names)} "
                         f"({err})") from err


def check_tool(tool):
    if tool not in TOOLS:
        raise ValueError(f"the int8 tool must be one of {', '.join(TOOLS)} (the engine it is for), got {tool!r}")
    return tool


def tool_versions(tool):
    """The versions of what makes `tool`'s int8 model (part of its cache key)."""
    return {name: module.__version__ for name, module in zip(TOOLS[check_tool(tool)], _import(TOOLS[tool]),
                                                             strict=True)}


class _Batches:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input batches."""

    def __init__(self, batches, input_name):
        self.batches = iter(batches)
        self.input_name = input_name

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def _quantize(tool, folded_path, out_path, batches, input_name):
    """Write `folded_path` (opset 13, BatchNorm folded) quantized by `tool` to `out_path`; returns nothing."""
    import onnx

    if tool == "openvino":  # NNCF: per-channel symmetric weights, per-tensor activations, fast bias correction
        import nncf

        quantized = nncf.quantize(onnx.load(folded_path), nncf.Dataset(batches, lambda x: {input_name: x}),
                                  subset_size=len(batches))
        onnx.save(quantized, out_path)
    else:  # ONNX Runtime: per-channel int8 weights, uint8 activations, min-max ranges, QDQ format
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        quantize_static(folded_path, out_path, _Batches(batches, input_name), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def _set_batch(model, batch):
    """Set the batch dimension of an ONNX model's input and output to `batch` (an int, or a name: any batch) and
    drop its inferred shapes; returns the input's batch before. Our exports hold no other batch-sized shape."""
    before = model.graph.input[0].type.tensor_type.shape.dim[0]
    before = before.dim_value or before.dim_param
    for value in list(model.graph.input) + list(model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if isinstance(batch, int):
            dim.dim_value = batch
        else:
            dim.dim_param = batch
    del model.graph.value_info[:]
    return before


def quantize_onnx(fp32_path, out_path, batches, metadata=None, tool="openvino"):
    """Quantize the float32 ONNX model `fp32_path` to int8 with the tool of the engine `tool` (openvino: NNCF;
    onnxruntime: onnxruntime.quantization), calibrated on `batches` (float32 (n, 3, S, S) arrays, any n: the model
    is calibrated with its batch dimension free, then fixed again);
    write it to `out_path` atomically, with `metadata` (JSON-able) and the tool in its metadata_props. Returns
    out_path."""
    onnx, _ = _import(("onnx", "onnxruntime"))
    versions = tool_versions(tool)
    from onnx import version_converter
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = list(batches)
    if not batches:
        raise ValueError("int8 quantization needs at least one calibration batch")
    work = tempfile.mkdtemp(prefix="metric_learn_int8_")
    try:
        model = onnx.load(fp32_path)
        if model.opset_import[0].version < OPSET:
            model = version_converter.convert_version(model, OPSET)
        batch = _set_batch(model, "N")  # calibrated in small batches: a full batch's activations take gigabytes
        upgraded, folded = os.path.join(work, "opset.onnx"), os.path.join(work, "folded.onnx")
        quantized = os.path.join(work, "int8.onnx")
        onnx.save(model, upgraded)
        # BatchNorm folded into the convolutions: each convolution then quantizes as one int8 op.
        quant_pre_process(upgraded, folded, skip_symbolic_shape=True)
        input_name = model.graph.input[0].name
        logger.info("int8: calibrating %s on %d batch(es) of %s (%s's tool)", fp32_path, len(batches),
                    "x".join(map(str, batches[0].shape)), tool)
        _quantize(tool, folded, quantized, batches, input_name)
        model = onnx.load(quantized)
        _set_batch(model, batch)
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(dict(metadata or {}, tool=versions), sort_keys=True)
        with atomic_path(out_path, suffix=".tmp.onnx") as tmp:
            onnx.save(model, tmp)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_path


def int8_cache_path(fp32_path, calibration, tool, image_size):
    """<float32 export without .onnx>.int8-<tool>-<key>.onnx, the key 10 hex digits of a hash of the calibration
    and the tool's versions."""
    key = dict(calibration.key, source=os.path.abspath(fp32_path), tool=tool_versions(tool),
               calibration_batch=calibration_batch(image_size))
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    stem = fp32_path[:-len(".onnx")] if fp32_path.lower().endswith(".onnx") else fp32_path
    return f"{stem}.int8-{tool}-{digest}.onnx"


def int8_for_onnx(fp32_path, calibration: Calibration, image_size, tool, reuse=True):
    """The int8 model of the float32 export `fp32_path` (input N x 3 x image_size^2, N kept) made by the engine `tool`'s
    quantizer, calibrated on `calibration`: the cached file (int8_cache_path) when it is there and reuse, else
    quantized now. Returns (path, how), how "reused" or "quantized"."""
    path = int8_cache_path(fp32_path, calibration, tool, image_size)
    if reuse and os.path.isfile(path):
        logger.info("int8 model: reusing %s (same float32 model and calibration)", path)
        return path, "reused"
    batches = calibration.batches(calibration_batch(image_size), image_size)
    quantize_onnx(fp32_path, path, batches, calibration.key, tool)
    logger.info("int8 model: quantized to %s", path)
    return path, "quantized"
