"""Read an output layer from a file: ``.npz``, ``.npy``, ``.safetensors`` or ``.pt``.

Every failure is an :class:`InputError` naming the file and the array at
fault, and listing what the file holds when an array is missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..domains import Unbounded
from ..errors import InputError
from ..layer import OutputLayer, as_float64
from .base import LoadedLayer, SourceRequest
from .norms import fold_norm

DEFAULT_WEIGHT = "weight"
DEFAULT_BIAS = "bias"
DEFAULT_NAMES = ("tokens", "names")


@dataclass(frozen=True)
class ArraySpec:
    """Which arrays of a file make the layer.

    ``bias=None`` takes an array named ``bias`` when there is one;
    ``no_bias`` ignores any bias. ``transpose`` reads a [dim, num_classes] weight.
    """

    weight: str = DEFAULT_WEIGHT
    bias: str | None = None
    names: str | None = None
    transpose: bool = False
    no_bias: bool = False


def _open(path: Path):
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder without config.json; give a checkpoint folder or a"
                         " .npz, .npy, .safetensors or .pt file")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise InputError(f"{path}: unsupported file type '{suffix}' (expected .npz, .npy, .safetensors, .pt)")
    return _READERS[suffix](path)


def load_vector(path: str | os.PathLike, name: str, length: int) -> np.ndarray:
    """One named 1-D array of ``length`` finite numbers (e.g. a norm's weight), as float64."""
    path = Path(path)
    source = _open(path)
    if name not in source.names():
        raise InputError(f"{path}: no array named '{name}'; it has: {_listing(source)}")
    value = source.get(name)
    arr = as_float64(value)
    if arr.shape != (length,):
        raise InputError(f"{path}: '{name}' has shape {arr.shape}, expected ({length},)")
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: '{name}' has non-finite values")
    return arr


def load_layer(path: str | os.PathLike, spec: ArraySpec = ArraySpec()) -> OutputLayer:
    """Load and validate the output layer stored at ``path``."""
    path = Path(path)
    source = _open(path)
    suffix = path.suffix.lower()
    available = source.names()
    weight_name = spec.weight
    if suffix == ".npy":
        weight_name = available[0]
    if weight_name not in available:
        raise InputError(f"{path}: no array named '{weight_name}'; it has: {_listing(source)}"
                         f" (pick one with --weight NAME)")
    weight = source.get(weight_name)
    if spec.transpose:
        if weight.ndim != 2:
            raise InputError(f"{path}: '{weight_name}' has shape {weight.shape}; --transpose needs a 2-D array")
        weight = weight.T
    bias = None
    bias_name = spec.bias or DEFAULT_BIAS
    if not spec.no_bias:
        if spec.bias is not None and spec.bias not in available:
            raise InputError(f"{path}: no array named '{spec.bias}'; it has: {_listing(source)}")
        if bias_name in available and bias_name != weight_name:
            bias = source.get(bias_name)
    names = None
    name_key = spec.names or next((n for n in DEFAULT_NAMES if n in available), None)
    if spec.names is not None and spec.names not in available:
        raise InputError(f"{path}: no array named '{spec.names}'; it has: {_listing(source)}")
    if name_key is not None and name_key in available:
        raw = source.get(name_key, text=True)
        if raw.ndim != 1:
            raise InputError(f"{path}: token names '{name_key}' must be 1-D, got shape {raw.shape}")
        names = [str(t) for t in raw.tolist()]
    try:
        return OutputLayer.from_arrays(weight, bias, names, name=f"{path.name}:{weight_name}",
                                       bias_name=f"{path.name}:{bias_name}")
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


class _ArrayFileSource:
    """The registry entry and fallback: a plain array file, with an optional final norm given by name."""

    name = "arrays"

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.suffix.lower() in _READERS

    def load(self, path: Path, request: SourceRequest) -> LoadedLayer:
        layer = load_layer(path, ArraySpec(weight=request.weight or DEFAULT_WEIGHT, bias=request.bias,
                                           names=request.names, transpose=request.transpose,
                                           no_bias=request.no_bias))
        if request.norm is None:
            if request.norm_weight or request.norm_bias:
                raise InputError("--norm-weight/--norm-bias need --norm layernorm|rmsnorm|rmsnorm1p")
            return LoadedLayer(layer, Unbounded(), {}, layer)
        if request.norm_weight is None:
            raise InputError(f"--norm {request.norm} needs --norm-weight NAME")
        if request.norm_bias is not None and request.norm != "layernorm":
            raise InputError("--norm-bias only applies to --norm layernorm")
        gamma = load_vector(path, request.norm_weight, layer.dim)
        beta = load_vector(path, request.norm_bias, layer.dim) if request.norm_bias else None
        folded = fold_norm(layer, request.norm, gamma, beta, layer.bias)
        info = {**folded.info, "norm_weight": request.norm_weight, "norm_bias": request.norm_bias}
        return LoadedLayer(folded.layer, folded.domain, info, folded.raw, folded.norm, folded.basis, folded.eps)


SOURCE = _ArrayFileSource()


def _listing(source) -> str:
    parts = [f"{n} {source.describe(n)}" for n in source.names()]
    return ", ".join(parts) if parts else "(no arrays)"


class _NpzFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = np.load(path, allow_pickle=False)
            self.keys = list(self.data.files)
        except Exception as exc:  # numpy raises several types for a bad archive
            raise InputError(f"{path}: not a readable .npz archive ({exc})") from None

    def names(self):
        return self.keys

    def describe(self, name):
        try:
            arr = self.data[name]
        except Exception:
            return "(unreadable)"
        return f"{arr.dtype}{list(arr.shape)}"

    def get(self, name, text=False):
        try:
            arr = self.data[name]
        except ValueError as exc:
            raise InputError(f"{self.path}: array '{name}' cannot be read without pickle ({exc})") from None
        except Exception as exc:
            raise InputError(f"{self.path}: array '{name}' is corrupt ({exc})") from None
        if text and arr.dtype.kind not in "US":
            raise InputError(f"{self.path}: '{name}' should hold token strings, has dtype {arr.dtype}")
        return arr


class _NpyFile(_NpzFile):
    def __init__(self, path: Path):
        self.path = path
        try:
            self.array = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise InputError(f"{path}: not a readable .npy file ({exc})") from None
        self.data = {"weight": self.array}
        self.keys = ["weight"]


# dtype codes of the safetensors format (its spec: an 8-byte little-endian header length,
# a JSON header of {name: {dtype, shape, data_offsets}}, then the raw little-endian data).
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}


def value_dtype_name(value) -> str:
    """The dtype of a numpy array or torch tensor as numpy spells it (``float16``, ``bfloat16``)."""
    return str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.")


class _SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise ValueError("file is shorter than its 8-byte header length")
                n = int.from_bytes(head, "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit a file of {size} bytes")
                header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a valid safetensors file ({exc})") from None
        if not isinstance(header, dict):
            raise InputError(f"{path}: not a valid safetensors file (header is not a JSON object)")
        header.pop("__metadata__", None)
        self.header, self.data_start = header, 8 + n
        for name, info in header.items():
            try:
                start, end = info["data_offsets"]
                shape = info["shape"]
                dtype = info["dtype"]
            except (KeyError, TypeError, ValueError):
                raise InputError(f"{path}: tensor '{name}' has a malformed header entry") from None
            if self.data_start + end > size:
                raise InputError(f"{path}: tensor '{name}' runs past the end of the file (truncated?)")
            if dtype in _ST_DTYPES and dtype != "BOOL":
                itemsize = 2 if dtype == "BF16" else np.dtype(_ST_DTYPES[dtype]).itemsize
                if end - start != itemsize * int(np.prod(shape, dtype=np.int64)):
                    raise InputError(f"{path}: tensor '{name}' has {end - start} bytes, not what"
                                     f" {dtype}{shape} needs")

    def names(self):
        return list(self.header)

    def describe(self, name):
        info = self.header[name]
        return f"{info['dtype']}{info['shape']}"

    def dtype_name(self, name) -> str:
        """numpy's name of the stored dtype (``bfloat16`` for BF16), or the safetensors code."""
        code = self.header[name]["dtype"]
        if code == "BF16":
            return "bfloat16"
        return np.dtype(_ST_DTYPES[code]).name if code in _ST_DTYPES else code

    def get(self, name, text=False):
        if text:
            raise InputError(f"{self.path}: safetensors files hold no token strings; '{name}' is a tensor")
        info = self.header[name]
        dtype = info["dtype"]
        if dtype not in _ST_DTYPES:
            raise InputError(f"{self.path}: tensor '{name}' has unsupported dtype {dtype}")
        start, end = info["data_offsets"]
        if dtype == "BF16":
            # numpy has no bfloat16: widen the 16 stored bits to float32 (exact).
            raw = np.fromfile(self.path, dtype="<u2", count=(end - start) // 2, offset=self.data_start + start)
            arr = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
            return _Tagged(arr, "bfloat16")
        from safetensors import safe_open  # noqa: PLC0415 - reads only the tensor asked for

        try:
            with safe_open(str(self.path), framework="numpy") as fh:
                return fh.get_tensor(name)
        except Exception as exc:
            raise InputError(f"{self.path}: tensor '{name}' cannot be read ({exc})") from None


class _Tagged(np.ndarray):
    """A float32 array that remembers it was stored in a narrower dtype."""

    def __new__(cls, arr, source_dtype):
        obj = np.asarray(arr).view(cls)
        obj.source_dtype = source_dtype
        return obj


class _TorchFile:
    def __init__(self, path: Path):
        self.path = path
        try:
            import torch  # noqa: PLC0415 - .pt files need torch
        except ImportError:
            raise InputError(f"{path}: reading .pt files needs torch (pip install 'argmaxcheck[torch]')") from None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: cannot be read by torch.load(weights_only=True) ({exc})") from None
        if isinstance(obj, torch.Tensor):
            obj = {"weight": obj}
        if not isinstance(obj, dict):
            raise InputError(f"{path}: expected a tensor or a dict of tensors, got {type(obj).__name__}")
        self.items = {str(k): v for k, v in obj.items()}

    def names(self):
        return list(self.items)

    def describe(self, name):
        v = self.items[name]
        return f"{self.dtype_name(name)}{list(getattr(v, 'shape', []))}"

    def dtype_name(self, name) -> str:
        return value_dtype_name(self.items[name])

    def get(self, name, text=False):
        v = self.items[name]
        if text:
            if isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v):
                return np.array(v)
            raise InputError(f"{self.path}: '{name}' should be a list of token strings")
        import torch  # noqa: PLC0415

        if not isinstance(v, torch.Tensor):
            raise InputError(f"{self.path}: '{name}' is a {type(v).__name__}, not a tensor")
        return v


_READERS = {".npz": _NpzFile, ".npy": _NpyFile, ".safetensors": _SafetensorsFile, ".pt": _TorchFile,
            ".pth": _TorchFile, ".bin": _TorchFile}
