"""Reading PyTorch weight files without PyTorch: `torch.save` zip archives (.pth) and `.safetensors`.

A `.pth` written by `torch.save` (PyTorch >= 1.6) is a zip archive: `<name>/data.pkl`, a pickle of the state
dict whose tensors point, through pickle's persistent ids, at raw storages `<name>/data/<key>`. It is read here
with an unpickler that knows only the globals a state dict needs (the tensor and parameter rebuild functions, the
typed storage classes, OrderedDict) and refuses every other one, so a file cannot run code on load; tensors come
back as numpy arrays. A `.safetensors` file is an 8-byte header length, a JSON header (name -> dtype, shape,
byte range) and the raw data.
"""
import collections
import json
import os
import pickle
import struct
import zipfile

import numpy as np


class WeightFileError(ValueError):
    """A weight file is not a readable state dict."""


# torch.<Name>Storage -> numpy dtype (little-endian, as torch.save writes; byteorder is checked).
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_, "BFloat16Storage": "bfloat16",
}
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16",
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


def _decode(raw, dtype):
    """Little-endian bytes -> 1-D numpy array; bfloat16 becomes float32 (its upper 16 bits)."""
    if dtype == "bfloat16":
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32)
        return (halves << 16).view(np.float32)
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))


class _StorageType:
    """Stands for torch.<Name>Storage in a pickle: only its element type is needed."""

    def __init__(self, name):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2: a strided view of a storage (here a 1-D numpy array), copied."""
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[storage_offset])
    itemsize = storage.itemsize
    view = np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                           strides=tuple(s * itemsize for s in stride), writeable=False)
    return np.array(view)


def _rebuild_parameter(data, *_):
    """torch._utils._rebuild_parameter: a Parameter is its tensor here."""
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix, path):
        super().__init__(file)
        self.archive, self.prefix, self.path = archive, prefix, path
        self.storages = {}

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise WeightFileError(f"{self.path}: refused: its pickle asks for {module}.{name}, which a state "
                                  f"dict does not need (only tensor/storage rebuild functions are allowed)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise WeightFileError(f"{self.path}: unexpected persistent id {pid!r} in its pickle")
        storage_type, key = pid[1], str(pid[2])
        if key not in self.storages:
            entry = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(entry)
            except KeyError:
                raise WeightFileError(f"{self.path}: storage {entry} is missing from the archive") from None
            self.storages[key] = _decode(raw, storage_type.dtype)
        return self.storages[key]


def read_pth(path):
    """{name: numpy array} of a state dict saved by torch.save (zip format), without importing torch."""
    if not zipfile.is_zipfile(path):
        raise WeightFileError(f"{path}: not a zip archive: only the torch.save format of PyTorch >= 1.6 is read "
                              f"(re-save it with torch.save, or use the model's .safetensors file)")
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise WeightFileError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise WeightFileError(f"{path}: big-endian storages are not supported")
        with archive.open(pickles[0]) as f:
            try:
                state = _StateDictUnpickler(f, archive, prefix, path).load()
            except WeightFileError:
                raise
            except Exception as err:  # a corrupt pickle can fail in many ways
                raise WeightFileError(f"{path}: cannot read its pickle ({type(err).__name__}: {err})") from err
    return _as_state_dict(state, path)


def _as_state_dict(state, path):
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint {"state_dict": ..., "epoch": ...}
    if not isinstance(state, dict):
        raise WeightFileError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    bad = [str(name) for name, value in state.items() if not isinstance(value, np.ndarray)]
    if bad:
        raise WeightFileError(f"{path}: entries that are not tensors: {', '.join(bad[:5])}")
    return {str(name): value for name, value in state.items()}


def read_safetensors(path):
    """{name: numpy array} of a .safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise WeightFileError(f"{path}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > os.path.getsize(path) - 8:
            raise WeightFileError(f"{path}: header length {length} exceeds the file")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise WeightFileError(f"{path}: its header is not JSON ({err})") from err
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(int(d) for d in info["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise WeightFileError(f"{path}: bad header entry for {name}: {info!r}") from err
        values = _decode(data[begin:end], dtype)
        if values.size != int(np.prod(shape)):
            raise WeightFileError(f"{path}: {name} has {values.size} values for shape {shape}")
        tensors[name] = np.array(values.reshape(shape))
    return tensors


def read_weights(path):
    """A .pth / .pt / .bin (torch.save) or .safetensors file -> {name: numpy array}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    return read_pth(path)
