"""torchvision's ResNet-50 and its weight files without PyTorch, the reference for the weight converter's tests
(tests/models/test_convert_weights.py) and the start of parity_torch.py's runs (also tests/training/test_parity.py):

- `resnet50_forward`: torchvision's ResNet-50 (v1.5: the stride on the 3x3 convolution) in float64 numpy,
  eval mode, on a state dict with torchvision's names: convolution by im2col, BatchNorm from the running
  statistics, ReLU, 3x3/2 max pool, global average pool. `padding="symmetric"` pads as torchvision does
  (k // 2 each side, max pool 1); `padding="same"` pads as TensorFlow/MindSpore "same" (total
  max((ceil(H/s) - 1) * s + k - H, 0), the smaller half first).
- `random_state_dict`: torchvision-named random weights and BatchNorm statistics.
- `write_pth`: a state dict in torch.save's zip layout (archive/data.pkl with persistent storage ids,
  archive/data/<key>, version, byteorder), pickled with the globals torch itself writes.
- `write_safetensors`: the same tensors as a .safetensors file.
"""
import collections
import io
import json
import pickle
import struct
import zipfile

import numpy as np

LAYERS = (3, 4, 6, 3)
WIDTHS = (256, 512, 1024, 2048)
STRIDES = (1, 2, 2, 2)


# ---------------------------------------------------------------------------------------------------------
# The forward pass

def _pads(size, kernel, stride, padding):
    if padding == "symmetric":
        return kernel // 2, kernel // 2
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(x, weight, stride, padding):
    """x (N, C, H, W), weight (O, C, k, k) -> (N, O, H', W'), by im2col."""
    n, c, h, w = x.shape
    o, _, k, _ = weight.shape
    top, bottom = _pads(h, k, stride, padding)
    left, right = _pads(w, k, stride, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh = (h + top + bottom - k) // stride + 1
    ow = (w + left + right - k) // stride + 1
    cols = np.empty((n, c, k, k, oh, ow), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, :, i, j] = xp[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
    out = np.einsum("nckluv,ockl->nouv", cols, weight, optimize=True)
    return out


def max_pool(x, padding):
    n, c, h, w = x.shape
    top, bottom = _pads(h, 3, 2, padding)
    left, right = _pads(w, 3, 2, padding)
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    oh, ow = (h + top + bottom - 3) // 2 + 1, (w + left + right - 3) // 2 + 1
    windows = [xp[:, :, i:i + 2 * oh:2, j:j + 2 * ow:2] for i in range(3) for j in range(3)]
    return np.max(windows, axis=0)


def batch_norm(x, state, name, eps):
    scale = state[f"{name}.weight"] / np.sqrt(state[f"{name}.running_var"] + eps)
    shift = state[f"{name}.bias"] - state[f"{name}.running_mean"] * scale
    return x * scale[None, :, None, None] + shift[None, :, None, None]


def _relu(x):
    return np.maximum(x, 0)


def resnet50_forward(state, images, padding="symmetric", eps=1e-5):
    """(N, 2048) features of torchvision's ResNet-50 (eval mode) for NCHW images, float64."""
    s = {k: np.asarray(v, np.float64) for k, v in state.items()}
    x = np.asarray(images, np.float64)
    x = _relu(batch_norm(conv2d(x, s["conv1.weight"], 2, padding), s, "bn1", eps))
    x = max_pool(x, padding)
    for stage, (blocks, stride) in enumerate(zip(LAYERS, STRIDES, strict=True), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            step = stride if block == 0 else 1
            out = _relu(batch_norm(conv2d(x, s[f"{p}.conv1.weight"], 1, padding), s, f"{p}.bn1", eps))
            out = _relu(batch_norm(conv2d(out, s[f"{p}.conv2.weight"], step, padding), s, f"{p}.bn2", eps))
            out = batch_norm(conv2d(out, s[f"{p}.conv3.weight"], 1, padding), s, f"{p}.bn3", eps)
            if f"{p}.downsample.0.weight" in s:
                x = batch_norm(conv2d(x, s[f"{p}.downsample.0.weight"], step, padding), s, f"{p}.downsample.1", eps)
            x = _relu(out + x)
    return x.mean(axis=(2, 3))


# ---------------------------------------------------------------------------------------------------------
# Random weights with torchvision's names

def _conv_shapes():
    shapes = {"conv1.weight": (64, 3, 7, 7)}
    bns = {"bn1": 64}
    cin = 64
    for stage, (blocks, width) in enumerate(zip(LAYERS, WIDTHS, strict=True), start=1):
        mid = width // 4
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            shapes[f"{p}.conv1.weight"] = (mid, cin, 1, 1)
            shapes[f"{p}.conv2.weight"] = (mid, mid, 3, 3)
            shapes[f"{p}.conv3.weight"] = (width, mid, 1, 1)
            bns.update({f"{p}.bn1": mid, f"{p}.bn2": mid, f"{p}.bn3": width})
            if block == 0:
                shapes[f"{p}.downsample.0.weight"] = (width, cin, 1, 1)
                bns[f"{p}.downsample.1"] = width
            cin = width
    return shapes, bns


def random_state_dict(seed=0, classes=1000):
    """torchvision ResNet-50 state dict (float32, num_batches_tracked int64 scalars, fc) with random values
    scaled so that activations stay of order one through the 16 blocks."""
    rng = np.random.default_rng(seed)
    shapes, bns = _conv_shapes()
    state = collections.OrderedDict()
    for name, shape in shapes.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    for name, channels in bns.items():
        last = name.endswith("bn3") or name.endswith("downsample.1")
        state[f"{name}.weight"] = rng.uniform(0.2, 0.6 if last else 1.2, channels).astype(np.float32)
        state[f"{name}.bias"] = rng.uniform(-0.2, 0.2, channels).astype(np.float32)
        state[f"{name}.running_mean"] = rng.uniform(-0.3, 0.3, channels).astype(np.float32)
        state[f"{name}.running_var"] = rng.uniform(0.5, 2.0, channels).astype(np.float32)
        state[f"{name}.num_batches_tracked"] = np.array(1000, np.int64)
    state["fc.weight"] = (rng.standard_normal((classes, 2048)) * 0.02).astype(np.float32)
    state["fc.bias"] = np.zeros(classes, np.float32)
    return state


# ---------------------------------------------------------------------------------------------------------
# torch.save's file layout, without torch

class _Global:
    """A reference to a global by module and name, pickled as such (torch.FloatStorage, ...)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
                 np.dtype(np.float64): "DoubleStorage", np.dtype(np.int64): "LongStorage"}
REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
ORDERED_DICT = _Global("collections", "OrderedDict")


class _Tensor:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):
    """Writes what torch.save writes for a state dict: tensors as _rebuild_tensor_v2(storage, offset, size,
    stride, requires_grad, OrderedDict()) with the storage a persistent id ('storage', torch.<T>Storage, key,
    'cpu', numel). `extra_globals`: more {value: (module, name)} to pickle as globals (for refusal tests)."""

    def __init__(self, file, extra_globals=None):
        super().__init__(file, protocol=2)
        self.extra_globals = extra_globals or {}

    def persistent_id(self, obj):
        if isinstance(obj, tuple) and len(obj) == 2 and obj[0] == "__storage__":
            tensor = obj[1]
            return ("storage", _Global("torch", STORAGE_NAMES[tensor.array.dtype]), tensor.key, "cpu",
                    tensor.array.size)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            if id(obj) in self.memo:  # written before: a memo reference, as pickle does for globals
                self.write(self.get(self.memo[id(obj)][0]))
                return
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            self.memoize(obj)
            return
        if isinstance(obj, _Tensor):
            a = obj.array
            strides = tuple(s // a.itemsize for s in a.strides) if a.ndim else ()
            self.save_reduce(REBUILD, (("__storage__", obj), 0, a.shape, strides, False,
                                       _Reduce(ORDERED_DICT, ())), obj=obj)
            return
        if isinstance(obj, _Reduce):
            self.save_reduce(obj.func, obj.args, obj=obj)
            return
        super().save(obj, save_persistent_id)

    def save_reduce(self, func, args, *rest, obj=None, **kwargs):
        # func may be a _Global marker: write it through save().
        self.save(func)
        self.save(args)
        self.write(pickle.REDUCE)
        if obj is not None:
            self.memoize(obj)


class _Reduce:
    def __init__(self, func, args):
        self.func, self.args = func, args


def write_pth(path, state, archive="archive", extra=None):
    """Write `state` ({name: numpy array}) as torch.save would (zip format). `extra`: an object pickled
    after the state dict entries under the key "extra" (to build malicious or odd files)."""
    tensors = collections.OrderedDict((name, _Tensor(str(i), np.array(value, order="C")))
                                      for i, (name, value) in enumerate(state.items()))
    body = io.BytesIO()
    pickler = _TorchPickler(body)
    items = list(tensors.items()) + ([("extra", extra)] if extra is not None else [])
    # As torch.save writes an OrderedDict: PROTO 2, OrderedDict(), then the items in one SETITEMS.
    pickler.write(pickle.PROTO + bytes([2]))
    pickler.save(ORDERED_DICT)
    pickler.write(pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.MARK)
    for key, value in items:
        pickler.save(key)
        pickler.save(value)
    pickler.write(pickle.SETITEMS + pickle.STOP)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", body.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for tensor in tensors.values():
            z.writestr(f"{archive}/data/{tensor.key}", tensor.array.tobytes())
        z.writestr(f"{archive}/version", "3\n")


def global_call(module, name, *args):
    """An object pickled as `module.name(*args)` (for write_pth's `extra`)."""
    return _Reduce(_Global(module, name), args)


def write_safetensors(path, state):
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int64): "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in state.items():
        raw = np.asarray(value).tobytes()
        header[name] = {"dtype": codes[np.asarray(value).dtype], "shape": list(np.shape(value)),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
