"""Read an output layer from a file: ``.npz``, ``.npy``, ``.safetensors`` or ``.pt``.

Every failure is an :class:`InputError` naming the file and the array at
fault, and listing what the file holds when an array is missing.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._text import one_line, printable
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
    if path.is_dir():
        raise InputError(f"{path}: is a folder without config.json; give a checkpoint folder or a"
                         " .npz, .npy, .safetensors or .pt file")
    check_regular_file(path)
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
    arr = as_float64(source.get(name), f"{path}: '{name}'")
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


def _listing(source, limit: int = 20) -> str:
    """What a file holds, from its headers only (never by reading the arrays themselves)."""
    names = source.names()
    parts = [f"{printable(n)} {source.describe(n)}" for n in names[:limit]]
    if len(names) > limit:
        parts.append(f"... ({len(names) - limit} more)")
    return ", ".join(parts) if parts else "(no arrays)"


def check_regular_file(path: Path) -> os.stat_result:
    """The file's status, or an InputError if it is missing, a folder, or not a regular file.

    Checked before anything opens the path: opening a FIFO blocks forever, a device never ends.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({printable(exc.strerror or exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, expected a file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is not a regular file (a FIFO, device or socket)")
    return st


def read_json(path: Path, limit: int):
    """The JSON value in ``path``, a regular file of at most ``limit`` bytes; InputError otherwise."""
    size = check_regular_file(path).st_size
    if size > limit:
        raise InputError(f"{path}: {size} bytes of JSON, more than the {limit} this file type may have")
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read(limit + 1))
    except RecursionError:
        raise InputError(f"{path}: JSON nested too deeply to be a real file of this kind") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text") from None
    except ValueError as exc:  # JSONDecodeError names the place, never the content
        raise InputError(f"{path}: not valid JSON ({printable(exc)})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({printable(exc.strerror or exc)})") from None


# An archive member may expand to at most this many bytes, or this many times its compressed size,
# whichever is larger: real weights barely compress, a zip bomb expands a thousandfold.
NPZ_EXPAND_FLOOR = 256 * 2**20
NPZ_EXPAND_RATIO = 100


def _npy_header(fh, where: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """dtype, shape and data size in bytes of a .npy stream, read from its header alone."""
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:  # numpy raises several types for a bad header
        raise InputError(f"{where}: not a readable .npy header ({printable(exc)})") from None
    if dtype.hasobject:
        raise InputError(f"{where}: holds Python objects, which cannot be read without pickle")
    return dtype, shape, math.prod(shape) * dtype.itemsize


def _check_text(arr: np.ndarray, where: str, text: bool) -> np.ndarray:
    if text and arr.dtype.kind not in "US":
        raise InputError(f"{where} should hold token strings, has dtype {arr.dtype}")
    return arr


class _NpzFile:
    """A .npz archive, read lazily: its directory at once, a member's header to describe it, and only
    the members asked for, after their declared sizes were checked against the headers and the archive."""

    def __init__(self, path: Path):
        self.path = path
        self.size = check_regular_file(path).st_size
        try:
            self.zip = zipfile.ZipFile(path)  # reads the central directory only
        except Exception as exc:  # zipfile raises several types for a bad archive
            raise InputError(f"{path}: not a readable .npz archive ({printable(exc)})") from None
        self.members = {}
        for info in self.zip.infolist():
            self.members[info.filename.removesuffix(".npy")] = info

    def names(self):
        return list(self.members)

    def describe(self, name):
        try:
            with self.zip.open(self.members[name]) as fh:
                dtype, shape, _ = _npy_header(fh, "")
        except Exception:  # a listing describes what it can
            return "(unreadable)"
        return f"{dtype}{list(shape)}"

    def get(self, name, text=False):
        where = f"{self.path}: array '{printable(name)}'"
        info = self.members[name]
        if info.compress_size > self.size or (info.compress_type == zipfile.ZIP_STORED
                                              and info.file_size != info.compress_size):
            raise InputError(f"{where} declares more bytes than the archive holds (corrupt archive)")
        if info.file_size > max(NPZ_EXPAND_FLOOR, NPZ_EXPAND_RATIO * info.compress_size):
            raise InputError(f"{where} would expand from {info.compress_size} to {info.file_size} bytes;"
                             " refusing a likely zip bomb (save real weights with np.savez)")
        try:
            with self.zip.open(info) as fh:
                dtype, shape, nbytes = _npy_header(fh, where)
                if fh.tell() + nbytes != info.file_size:
                    raise InputError(f"{where} declares {dtype}{list(shape)} ({nbytes} bytes) but its archive"
                                     f" entry holds {info.file_size - fh.tell()} bytes of data")
            with self.zip.open(info) as fh:
                arr = np.lib.format.read_array(fh, allow_pickle=False)
        except InputError:
            raise
        except Exception as exc:  # zipfile and numpy raise several types for corrupt data
            raise InputError(f"{where} is corrupt ({printable(exc)})") from None
        return _check_text(arr, where, text)


class _NpyFile:
    """A .npy file: one array, its header checked against the file's size before it is read."""

    def __init__(self, path: Path):
        self.path = path
        size = check_regular_file(path).st_size
        try:
            with open(path, "rb") as fh:
                self.dtype, self.shape, nbytes = _npy_header(fh, f"{path}")
                if fh.tell() + nbytes != size:
                    raise InputError(f"{path}: declares {self.dtype}{list(self.shape)} ({nbytes} bytes) but holds"
                                     f" {size - fh.tell()} bytes of data")
        except OSError as exc:
            raise InputError(f"{path}: cannot be read ({printable(exc.strerror or exc)})") from None

    def names(self):
        return ["weight"]

    def describe(self, name):
        return f"{self.dtype}{list(self.shape)}"

    def get(self, name, text=False):
        try:
            with open(self.path, "rb") as fh:
                arr = np.lib.format.read_array(fh, allow_pickle=False)
        except Exception as exc:  # the file changed since its header was checked
            raise InputError(f"{self.path}: not a readable .npy file ({printable(exc)})") from None
        return _check_text(arr, f"{self.path}: '{name}'", text)


# safetensors dtype codes -> numpy names, for the codes that hold real numbers.
_ST_REAL = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
            "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64", "U32": "uint32", "U16": "uint16",
            "U8": "uint8"}
# Bits per element, only to say which header entry the library rejected.
_ST_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
            "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}
_ST_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def value_dtype_name(value) -> str:
    """The dtype of a numpy array or torch tensor as numpy spells it (``float16``, ``bfloat16``)."""
    return str(getattr(value, "dtype", type(value).__name__)).removeprefix("torch.")


class _SafetensorsFile:
    """A .safetensors file read through the ``safetensors`` library.

    The library validates the header (offsets, shapes, dtypes, overlaps, and that the data exactly
    covers the file) before any tensor is read, and reads only the tensor asked for. numpy has no
    bfloat16, so BF16 tensors are read as raw 16-bit words at the offsets of that validated header and
    widened exactly (a bfloat16 is the top half of a float32).
    """

    def __init__(self, path: Path):
        self.path = path
        check_regular_file(path)
        try:
            with self._open() as fh:
                self.info = {}
                for name in fh.keys():
                    piece = fh.get_slice(name)
                    self.info[name] = (piece.get_dtype(), list(piece.get_shape()))
        except Exception as exc:  # SafetensorError, OSError
            reason = printable(str(exc).removeprefix("Error while deserializing header: "))
            blame = _blame_safetensors(path)
            raise InputError(f"{path}: not a valid safetensors file ({blame + '; ' if blame else ''}{reason})"
                             ) from None

    def _open(self):
        from safetensors import safe_open  # noqa: PLC0415 - imported when a safetensors file is read

        return safe_open(str(self.path), framework="numpy")

    def names(self):
        return list(self.info)

    def describe(self, name):
        dtype, shape = self.info[name]
        return f"{dtype}{shape}"

    def dtype_name(self, name) -> str:
        """numpy's name of the stored dtype (``bfloat16`` for BF16), or the safetensors code."""
        code = self.info[name][0]
        return _ST_REAL.get(code, code)

    def get(self, name, text=False):
        where = f"{self.path}: tensor '{printable(name)}'"
        if text:
            raise InputError(f"{where} is a tensor; safetensors files hold no token strings")
        dtype, shape = self.info[name]
        if dtype not in _ST_REAL:
            raise InputError(f"{where} has dtype {dtype}, expected real numbers")
        try:
            if dtype == "BF16":
                return _Tagged(self._bfloat16(name, shape), "bfloat16")
            with self._open() as fh:
                return fh.get_tensor(name)
        except InputError:
            raise
        except Exception as exc:  # the file changed since its header was validated
            raise InputError(f"{where} cannot be read ({printable(exc)})") from None

    def _bfloat16(self, name: str, shape: list[int]) -> np.ndarray:
        with self._open():  # the library re-validates the header as it is now
            with open(self.path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                entry = json.loads(fh.read(n))[name]
        if entry["dtype"] != "BF16" or list(entry["shape"]) != shape:
            raise ValueError("the header changed while it was read")
        count = math.prod(shape)
        raw = np.fromfile(self.path, dtype="<u2", count=count, offset=8 + n + entry["data_offsets"][0])
        if raw.size != count:
            raise ValueError("the file is shorter than its validated header says")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)


def _blame_safetensors(path: Path) -> str | None:
    """Which tensor's header entry is wrong, in words, for the message only (the library decides)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n > min(_ST_MAX_HEADER, size - 8):
                return None
            header = json.loads(fh.read(n))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    data_len = size - 8 - n
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        what = f"tensor '{printable(name)}'"
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and isinstance(shape, list)
                and all(type(v) is int for v in [*offsets, *shape])):
            return f"{what} has a malformed header entry"
        if min(offsets) < 0:
            return f"{what} has a negative data offset"
        if any(v < 0 for v in shape):
            return f"{what} has a negative dimension in shape {shape}"
        if offsets[1] < offsets[0]:
            return f"{what} ends before it starts"
        if offsets[1] > data_len:
            return f"{what} runs past the end of the file (truncated?)"
        bits = _ST_BITS.get(entry.get("dtype"))
        if bits and (offsets[1] - offsets[0]) * 8 != math.prod(shape) * bits:
            return f"{what} has {offsets[1] - offsets[0]} bytes, not what {entry['dtype']}{shape} needs"
        spans.append((offsets[0], offsets[1], what))
    spans.sort()
    for (_, end, before), (start, _, what) in itertools.pairwise(spans):
        if start < end:
            return f"{what} overlaps {before}"
        if start > end:
            return f"{what} starts after a gap in the data"
    return None


class _Tagged(np.ndarray):
    """A float32 array that remembers it was stored in a narrower dtype."""

    def __new__(cls, arr, source_dtype):
        obj = np.asarray(arr).view(cls)
        obj.source_dtype = source_dtype
        return obj

    def __array_finalize__(self, obj):  # views (a transpose) keep the tag
        self.source_dtype = getattr(obj, "source_dtype", None)


_TORCH_FLOOR = (2, 6)  # torch.load(weights_only=True) can be bypassed before 2.6 (CVE-2025-32434)


class _TorchFile:
    """A torch.save file, read with weights_only=True (no code runs) and memory-mapped when it can be."""

    def __init__(self, path: Path):
        self.path = path
        check_regular_file(path)
        try:
            import torch  # noqa: PLC0415 - .pt files need torch
        except ImportError:
            raise InputError(f"{path}: reading .pt files needs torch (pip install 'argmaxcheck[torch]')") from None
        if torch.__version__ < _TORCH_FLOOR:
            raise InputError(f"{path}: torch {torch.__version__} can be made to run code from a .pt file"
                             " (CVE-2025-32434); install torch>=2.6 to read it")
        try:
            # mmap reads only the tensors used; the legacy (non-zip) format cannot be mapped.
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as exc:  # torch raises many types, with multi-line messages
            raise InputError(f"{path}: {_torch_load_error(exc)}") from None
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
        where = f"{self.path}: '{printable(name)}'"
        if text:
            if isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v):
                return np.array(v)
            raise InputError(f"{where} should be a list of token strings")
        import torch  # noqa: PLC0415

        if not isinstance(v, torch.Tensor):
            raise InputError(f"{where} is a {type(v).__name__}, not a tensor")
        return v


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")  # torch colours its errors


def _torch_load_error(exc: Exception) -> str:
    """torch.load's multi-line, ANSI-coloured refusal as one short line."""
    text = _ANSI.sub("", str(exc))
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ", 1)[0]
        return (f"holds pickled Python objects, not only tensors ({one_line(detail, 120)}); torch.load"
                " (weights_only=True) refuses them: save a state_dict() of tensors instead")
    first = next((line for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"cannot be read by torch.load(weights_only=True) ({one_line(first, 200)})"


_READERS = {".npz": _NpzFile, ".npy": _NpyFile, ".safetensors": _SafetensorsFile, ".pt": _TorchFile,
            ".pth": _TorchFile, ".bin": _TorchFile}
