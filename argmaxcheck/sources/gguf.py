"""GGUF files (llama.cpp, Ollama): the head, its final norm and the token table, read with the ``gguf`` package.

* **The head** is ``output.weight``, or the input embedding ``token_embd.weight``
  when the model ties them, dequantised by ``gguf.quants.dequantize`` from
  whatever ggml type it is stored in (F32, F16, BF16, Q8_0, Q4_K, Q6_K...).
* **The final norm** is ``output_norm.weight`` (and ``output_norm.bias``). The
  metadata decides its kind: ``{arch}.attention.layer_norm_rms_epsilon`` means
  RMSNorm, ``{arch}.attention.layer_norm_epsilon`` LayerNorm. llama.cpp's
  converter already stores Gemma's ``1 + w`` as the weight, so every RMSNorm
  here folds as a plain one. The norm is folded into the head (:mod:`.norms`):
  the audit runs on the features the model can really produce.
* **The token table** is ``tokenizer.ggml.tokens`` with
  ``tokenizer.ggml.token_type`` (control, user-defined, unused and byte tokens
  are marked; :mod:`.tokens` decodes the pieces).

Only architectures whose graph ends ``output_norm -> output`` (nothing but a
monotone soft-cap after it) are read; any other is refused by name rather
than audited on the wrong domain.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from importlib import metadata
from pathlib import Path

import numpy as np

from .._text import one_line, printable
from ..errors import InputError
from ..layer import OutputLayer
from .base import HeadSource, LoadedLayer
from .norms import fold_norm
from .tokens import TokenTable, bytes_text, gguf_table

# llama.cpp architectures whose logits are output(output_norm(h)), possibly soft-capped (monotone: the
# argmax is unchanged). Kept explicit: a new architecture may put something else between them.
ARCHITECTURES = frozenset({
    "llama", "mistral3", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "gemma", "gemma2", "gemma3", "phi2", "phi3",
    "gpt2", "gptneox", "starcoder", "starcoder2", "stablelm", "falcon", "bloom", "mpt", "olmo2", "internlm2",
    "deepseek", "deepseek2", "smollm3", "exaone",
})
_FLOAT_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def load_gguf(path: str | Path, head: str | None = None) -> LoadedLayer:
    """Read a GGUF file's head, fold its final norm, and attach its token table.

    ``head`` names the output-layer tensor when it is not ``output.weight`` or the tied ``token_embd.weight``.
    """
    path = Path(path)
    reader = _open(path)
    fields = reader.fields
    arch = _string(path, fields, "general.architecture")
    if arch is None:
        raise InputError(f"{path}: no general.architecture in the metadata")
    if arch not in ARCHITECTURES:
        raise InputError(f"{path}: architecture '{arch}' is not supported yet"
                         f" (supported: {', '.join(sorted(ARCHITECTURES))})")
    tensors = {t.name: t for t in reader.tensors}
    if head is not None and head not in tensors:
        raise InputError(f"{path}: no tensor named '{head}'; matrices: {_matrices(tensors)}")
    head = head or ("output.weight" if "output.weight" in tensors else "token_embd.weight")
    if head not in tensors:
        raise InputError(f"{path}: no output.weight or token_embd.weight; matrices: {_matrices(tensors)}"
                         " (pick one with --weight NAME)")
    weight = _matrix(path, tensors[head])
    rows, d = weight.shape

    rms_key, ln_key = f"{arch}.attention.layer_norm_rms_epsilon", f"{arch}.attention.layer_norm_epsilon"
    if rms_key in fields:
        norm, eps = "rmsnorm", _number(path, fields, rms_key)
    elif ln_key in fields:
        norm, eps = "layernorm", _number(path, fields, ln_key)
    else:
        raise InputError(f"{path}: neither {rms_key} nor {ln_key} is in the metadata, so the final norm is unknown")
    if "output_norm.weight" not in tensors:
        raise InputError(f"{path}: the final norm 'output_norm.weight' is missing")
    gamma = _vector(path, tensors["output_norm.weight"], d)
    beta = _vector(path, tensors["output_norm.bias"], d) if "output_norm.bias" in tensors else None
    if beta is not None and norm == "rmsnorm":
        raise InputError(f"{path}: 'output_norm.bias' next to an RMSNorm epsilon ({rms_key}): the norm is ambiguous")
    bias_name = head.removesuffix(".weight") + ".bias"
    head_bias = _vector(path, tensors[bias_name], rows) if head != "token_embd.weight" and bias_name in tensors \
        else None

    table = _token_table(path, fields, head, rows)
    source_dtype = _FLOAT_DTYPES.get(tensors[head].tensor_type.name, tensors[head].tensor_type.name)
    raw = OutputLayer.from_arrays(weight, None, None, name=f"{path.name}:{head}", source_dtype=source_dtype)
    folded = fold_norm(raw, norm, gamma, beta, head_bias, eps)
    info = {"format": "gguf", "architecture": arch, "head": head, "head_type": tensors[head].tensor_type.name,
            "tied": head == "token_embd.weight", "norm": norm, "norm_weight": "output_norm.weight",
            "norm_bias": "output_norm.bias" if beta is not None else None, "eps": eps,
            "tokenizer": _string(path, fields, "tokenizer.ggml.model"), "domain": folded.info["domain"]}
    if arch.startswith("gemma"):
        info["norm_note"] = "llama.cpp stores Gemma's norm weight as 1 + w: folded as stored"
    if f"{arch}.final_logit_softcapping" in fields:
        info["softcap_note"] = "final logits are soft-capped (monotone): same argmax, margins before the cap"
    loaded = LoadedLayer(folded.layer, folded.domain, info, folded.raw, norm, folded.basis, eps)
    return table.apply(loaded)


def _gguf():
    try:
        import gguf  # noqa: PLC0415 - only .gguf files need it
    except ImportError:
        raise InputError("reading .gguf files needs the gguf package (pip install gguf)") from None
    return gguf


def _open(path: Path):
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    gguf = _gguf()
    check_header(path)  # GGUFReader loops over whatever counts the header claims: bound them first
    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises ValueError, IndexError, KeyError... on a damaged file
        raise InputError(f"{path}: not a readable GGUF file (truncated or corrupt? {type(exc).__name__}:"
                         f" {one_line(exc, 160)})") from None


# What the header may claim before GGUFReader is let loose on it. The reader builds a few numpy views per
# metadata entry, array element and tensor, in a Python loop: a 1 GB file of empty strings would mean
# 10^8 iterations. Real files are far below these (SmolLM2: 147k entries, 272 tensors; Gemma 3: ~800k).
GGUF_MAX_ENTRIES = 1 << 22  # metadata keys plus array elements, all fields together
GGUF_MAX_TENSORS = 1 << 17
GGUF_MAX_DIMS = 4  # GGML_MAX_DIMS
GGUF_MAX_NESTING = 4  # arrays of arrays
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # GGUFValueType -> bytes
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_ENTRIES = f"{GGUF_MAX_ENTRIES} metadata entries and array elements in all"


class _Header:
    """A bounds-checked walk over a GGUF header (struct on a memory map): every count and length it
    meets is checked against the bytes left in the file before anything relies on it."""

    def __init__(self, path: Path, data, size: int):
        self.path, self.data, self.size, self.pos, self.order = path, data, size, 0, "<"
        self.entries = 0

    def fail(self, what: str):
        raise InputError(f"{self.path}: not a readable GGUF file ({what})")

    def need(self, n: int, what: str) -> int:
        """Reserve ``n`` bytes at the current position; returns where they start."""
        if n > self.size - self.pos:
            self.fail(f"{what} needs {n} bytes at offset {self.pos}, but the file has {self.size} bytes")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str):
        return struct.unpack_from(self.order + fmt, self.data, self.need(struct.calcsize(fmt), what))[0]

    def count(self, n: int, smallest: int, what: str, limit: int, accepts: str) -> int:
        """A claimed number of items of at least ``smallest`` bytes each, checked before any is read."""
        if n > limit:
            self.fail(f"{what} claims {n} entries; this reader accepts {accepts}")
        if n * smallest > self.size - self.pos:
            self.fail(f"{what} claims {n} entries of at least {smallest} bytes, but only {self.size - self.pos}"
                      " bytes remain in the file")
        return n

    def string(self, what: str) -> bytes:
        length = self.unpack("Q", f"{what}: string length")
        start = self.need(length, f"{what}: string")
        return bytes(self.data[start:start + length]) if length <= 1 << 16 else b""

    def entry(self, what: str) -> None:
        self.entries += 1
        if self.entries > GGUF_MAX_ENTRIES:
            self.fail(f"{what}: this reader accepts {_ENTRIES}")

    def value(self, kind: int, what: str, depth: int = 0) -> bytes | None:
        """Skip one value of GGUFValueType ``kind``; a scalar's bytes come back (general.alignment's)."""
        if kind in _SCALARS:
            start = self.need(_SCALARS[kind], f"{what}: value")
            return bytes(self.data[start:start + _SCALARS[kind]])
        if kind == _STRING:
            self.string(what)
            return None
        if kind != _ARRAY:
            self.fail(f"{what}: unknown value type {kind}")
        if depth >= GGUF_MAX_NESTING:
            self.fail(f"{what}: arrays nested more than {GGUF_MAX_NESTING} deep")
        item = self.unpack("I", f"{what}: array type")
        n = self.unpack("Q", f"{what}: array length")
        smallest = _SCALARS.get(item, 8 if item == _STRING else 12)
        if item not in _SCALARS and item not in (_STRING, _ARRAY):
            self.fail(f"{what}: array of unknown value type {item}")
        self.count(n, smallest, f"{what}: array", GGUF_MAX_ENTRIES - self.entries, _ENTRIES)
        self.entries += n
        if item in _SCALARS:
            self.need(n * smallest, f"{what}: array")
        else:
            for _ in range(n):
                self.value(item, what, depth + 1)
        return None


def check_header(path: Path) -> None:
    """Refuse a GGUF file whose header claims more than the file holds (counts, string and array lengths,
    tensor dimensions and data ranges), naming the file and the field, before ``gguf.GGUFReader`` reads it.

    Only bounds are checked here; the ``gguf`` package still does the parsing.
    """
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType  # noqa: PLC0415

    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 24:
                raise InputError(f"{path}: not a readable GGUF file (only {size} bytes; the header alone has 24)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                _walk(_Header(path, data, size), GGML_QUANT_SIZES, GGMLQuantizationType)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({printable(exc.strerror or exc)})") from None


def _walk(h: _Header, quant_sizes, quant_types) -> None:
    if h.unpack("I", "magic") != 0x46554747:
        h.fail("no GGUF magic at the start")
    version = struct.unpack_from("<I", h.data, 4)[0]
    if version & 0xFFFF == 0:  # written on a machine of the other byte order, as GGUFReader reads it
        h.order, version = ">", struct.unpack_from(">I", h.data, 4)[0]
    h.pos = 8
    if version not in (2, 3):
        h.fail(f"version {version}; versions 2 and 3 are read")
    tensors = h.unpack("Q", "tensor count")
    kvs = h.unpack("Q", "metadata count")
    h.count(tensors, 24, "the tensor count", GGUF_MAX_TENSORS,  # name length, dims, type, offset: 24 bytes
            f"{GGUF_MAX_TENSORS} tensors at most")
    h.count(kvs, 13, "the metadata count", GGUF_MAX_ENTRIES, _ENTRIES)  # key length, type, a byte: 13 bytes
    alignment = 32
    for k in range(kvs):
        key = h.string(f"metadata key {k}")
        what = f"metadata '{printable(key.decode('utf-8', 'replace'), 80)}'"
        h.entry(what)
        kind = h.unpack("I", f"{what}: value type")
        raw = h.value(kind, what)
        if key == b"general.alignment" and kind == _UINT32:
            alignment = struct.unpack(h.order + "I", raw)[0]
    infos = []
    for k in range(tensors):
        name = h.string(f"tensor {k}: name")
        what = f"tensor '{printable(name.decode('utf-8', 'replace'), 80)}'"
        n_dims = h.unpack("I", f"{what}: dimension count")
        if n_dims > GGUF_MAX_DIMS:
            h.fail(f"{what}: {n_dims} dimensions, at most {GGUF_MAX_DIMS}")
        dims = [h.unpack("Q", f"{what}: dimension") for _ in range(n_dims)]
        kind = h.unpack("I", f"{what}: type")
        offset = h.unpack("Q", f"{what}: data offset")
        infos.append((what, dims, kind, offset))
    if alignment == 0 or alignment & (alignment - 1):
        h.fail(f"general.alignment is {alignment}, not a power of two")
    start = -(-h.pos // alignment) * alignment
    for what, dims, kind, offset in infos:
        try:
            block, type_size = quant_sizes[quant_types(kind)]
        except (ValueError, KeyError):
            h.fail(f"{what}: unknown ggml type {kind}")
        elements = 1
        for n in dims:
            elements *= n
        if dims and dims[0] % block:
            h.fail(f"{what}: rows of {dims[0]} values do not fill whole blocks of {block}")
        nbytes = elements // block * type_size
        if start + offset + nbytes > h.size:
            h.fail(f"{what}: {dims} values of {quant_types(kind).name} at data offset {offset} end at byte"
                   f" {start + offset + nbytes}, past the end of the file ({h.size} bytes)")


def _matrices(tensors: dict) -> str:
    names = [name for name, t in tensors.items() if len(t.shape) == 2]
    return ", ".join(names[:20]) + (f", … {len(names) - 20} more" if len(names) > 20 else "")


def _values(path: Path, tensor) -> np.ndarray:
    """A tensor's values as float32/float64 in numpy order (rows first), dequantised by the gguf package."""
    gguf = _gguf()
    kind = tensor.tensor_type
    if kind.name == "F64":
        values = np.asarray(tensor.data, dtype=np.float64)
    elif kind.name.startswith("I"):  # I8 ... I64: integer tensors, not weights
        raise InputError(f"{path}: tensor '{tensor.name}' holds integers ({kind.name}), not weights")
    else:
        try:
            values = gguf.quants.dequantize(tensor.data, kind)
        except NotImplementedError:
            raise InputError(f"{path}: tensor '{tensor.name}' is stored as {kind.name}, which the installed gguf"
                             f" {metadata.version('gguf')} cannot dequantise") from None
        except (ValueError, IndexError) as exc:
            raise InputError(f"{path}: tensor '{tensor.name}' ({kind.name}) cannot be dequantised ({exc})") from None
    shape = tuple(int(n) for n in reversed(tensor.shape))  # ggml lists dimensions innermost first
    try:
        return values.reshape(shape)
    except ValueError:
        raise InputError(f"{path}: tensor '{tensor.name}' holds {values.size} values, not {shape}") from None


def _matrix(path: Path, tensor) -> np.ndarray:
    if len(tensor.shape) != 2:
        raise InputError(f"{path}: '{tensor.name}' has {len(tensor.shape)} dimensions, expected a 2-D"
                         " [num_classes, dim] matrix")
    return _values(path, tensor)


def _vector(path: Path, tensor, length: int) -> np.ndarray:
    values = _values(path, tensor).astype(np.float64).reshape(-1)
    if values.shape != (length,):
        raise InputError(f"{path}: '{tensor.name}' has {values.size} values, expected {length}")
    if not np.isfinite(values).all():
        raise InputError(f"{path}: '{tensor.name}' has non-finite values")
    return values


def _string(path: Path, fields: dict, key: str) -> str | None:
    field = fields.get(key)
    if field is None:
        return None
    if [t.name for t in field.types] != ["STRING"]:
        raise InputError(f"{path}: metadata '{key}' should be a string")
    return bytes_text(bytes(field.parts[field.data[0]]))


def _number(path: Path, fields: dict, key: str) -> float:
    field = fields[key]
    if len(field.types) != 1 or field.types[0].name not in ("FLOAT32", "FLOAT64", "UINT32", "INT32"):
        raise InputError(f"{path}: metadata '{key}' should be a number")
    value = float(field.parts[field.data[0]][0])
    if not (np.isfinite(value) and value >= 0):
        raise InputError(f"{path}: metadata '{key}' is {value}, expected a finite number >= 0")
    return value


def _token_table(path: Path, fields: dict, head: str, rows: int) -> TokenTable:
    tokens = fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        return TokenTable.unnamed(rows)
    if [t.name for t in tokens.types] != ["ARRAY", "STRING"]:
        raise InputError(f"{path}: metadata 'tokenizer.ggml.tokens' should be an array of strings")
    # Pieces are untrusted bytes: a piece that is not UTF-8 shows its bytes as <0xAB>.
    pieces = [bytes_text(bytes(tokens.parts[i])) for i in tokens.data]
    if len(pieces) != rows:
        raise InputError(f"{path}: the tokenizer has {len(pieces)} tokens but the head '{head}' has {rows} rows;"
                         " they must belong to the same model")
    types = None
    kinds = fields.get("tokenizer.ggml.token_type")
    if kinds is not None:
        if len(kinds.types) != 2 or kinds.types[0].name != "ARRAY" or not kinds.types[1].name.startswith(("INT",
                                                                                                         "UINT")):
            raise InputError(f"{path}: metadata 'tokenizer.ggml.token_type' should be an array of integers")
        types = [int(kinds.parts[i][0]) for i in kinds.data]
        if len(types) != rows:
            raise InputError(f"{path}: tokenizer.ggml.token_type has {len(types)} entries for {rows} tokens")
    model = _string(path, fields, "tokenizer.ggml.model")
    table = gguf_table(pieces, types, model)
    return dataclasses.replace(table, tokenizer=lambda: _tokenizer(path, fields, model, pieces, types))


def _tokenizer(path: Path, fields: dict, model: str | None, pieces: list[str], types: list[int] | None):
    """The file's tokenizer rebuilt from ``tokenizer.ggml.*`` (:func:`.roundtrip.gguf_tokenizer`); None for a
    tokenizer model it cannot build."""
    from .roundtrip import gguf_tokenizer  # noqa: PLC0415

    merges = fields.get("tokenizer.ggml.merges")
    if merges is not None and [t.name for t in merges.types] != ["ARRAY", "STRING"]:
        raise InputError(f"{path}: metadata 'tokenizer.ggml.merges' should be an array of strings")
    scores = fields.get("tokenizer.ggml.scores")
    prefix = fields.get("tokenizer.ggml.add_space_prefix")
    return gguf_tokenizer(
        model, pieces, types,
        merges=None if merges is None else [bytes(merges.parts[i]).decode("utf-8", "replace") for i in merges.data],
        scores=None if scores is None else [float(scores.parts[i][0]) for i in scores.data],
        pre=_string(path, fields, "tokenizer.ggml.pre"),
        add_space_prefix=None if prefix is None else bool(prefix.parts[prefix.data[0]][0]), where=str(path))


SOURCE = HeadSource("gguf", lambda path: path.suffix.lower() == ".gguf", load_gguf)  # the registry entry
