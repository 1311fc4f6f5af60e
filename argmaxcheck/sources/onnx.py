"""Find the classifier of an ONNX model and the set of features that can reach it.

The head is found by walking back from a graph output through the ops that
cannot change an argmax (Softmax, LogSoftmax, Identity, Cast, a division or
multiplication by a positive constant) to ``MatMul(x, W) [+ b]`` or
``Gemm(x, B, C) [+ b]``, with W, B, C and b read from initializers or Constant
nodes. The audit domain comes from what produces ``x``, looking through ops
that only move values around (Reshape, Transpose, Squeeze, ...), because every
bound below is the same for every coordinate. Each bound holds for every value
of the op's attributes; where one does not exist (or an attribute is NaN or
infinite) the domain is R^d and the report says why:

=================================  ==================================================================================
producer of the features           domain
=================================  ==================================================================================
Relu, Softplus                     x >= 0
LeakyRelu(a), PRelu(a)             x >= 0 if every a <= 0, else R^d
ThresholdedRelu(a)                 x >= min(0, a)
Sigmoid, HardSigmoid               0 <= x <= 1 (open sides: same verdicts)
Tanh, Softsign, LSTM / GRU output  -1 <= x <= 1 (GRU: a Sigmoid update gate and no initial state)
Clip(min, max)                     min <= x <= max; x = max if min > max; min is no bound if max is not constant
Elu(a), Celu(a)                    x >= min(0, -a) (*); Celu with a <= 0: R^d
Selu(a, g)                         x >= min(0, -a g) if g > 0 (*), x <= max(0, -a g) if g < 0
swish  x * Sigmoid(c x), Swish(c)  x >= -0.27846454276107374 / c if c > 0 (*), x <= that bound negated if c < 0
HardSwish, x * HardSigmoid(x)      x >= -0.375 (*), in general the gate's own minimum
Gelu, Mish                         x >= -0.16997120748 (tanh form -0.17004075058), -0.30884341302 (*)
LayerNormalization (last axis)     folded in: the sqrt(d) ball in the mean-zero subspace (docs/method.md)
anything else                      R^d, and the report says why
=================================  ==================================================================================

(*) widened by ``EVALUATION_ROOM`` (0.1 %): models compute these in float32 or
float16, and the rounded outputs dip below the exact minimum (measured: float32
Gelu reaches -0.16997123). Averaging pools are widened the same way; pooling
that can average in padded zeros widens the box to hold 0.

A closed box gives the same verdicts as the open one a Sigmoid or Tanh can
really produce: a witness wins by a strictly positive gap, and so does every
point close enough to it, some of which are inside.

Everything in the file is untrusted: the graph must be acyclic, each op the
loader interprets must have its inputs and attributes, each tensor it reads
must hold as many numbers as its shape says, and external data must be a
regular file inside the model's folder, reached without symlinks. Names are
decoded so that every string leaving this module is valid, printable text.

Token names come from the model's metadata when a key such as ``character``
(PaddleOCR), ``labels``, ``classes`` or ``names`` lists exactly one per class.
"""

from __future__ import annotations

import ast
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._text import printable
from ..domains import Box, Unbounded
from ..errors import InputError
from ..layer import OutputLayer
from .base import HeadSource, LoadedLayer
from .norms import fold_norm

SWISH_MIN = -0.2784645427610738  # min of x * sigmoid(x), at x = -1.2785, rounded outward
HARDSWISH_MIN = -0.375  # min of x * relu6(x + 3) / 6, at x = -1.5 (exact)
GELU_MIN = -0.16997120748  # min of x * Phi(x), at x = -0.7518, rounded outward
GELU_TANH_MIN = -0.17004075058  # min of Gelu's tanh form, at x = -0.7525, rounded outward
MISH_MIN = -0.30884341302  # min of x * tanh(softplus(x)), at x = -1.1924, rounded outward
# A model evaluates these in float32 or float16, and may approximate them: measured float32 Gelu
# gives -0.16997123 < GELU_MIN. Every smooth bound is therefore widened by this relative room,
# which covers float16 rounding (2^-11) of the values and of the attributes.
EVALUATION_ROOM = 1e-3

# The ops below are read with their ONNX meaning only in the standard domain: a custom domain
# (com.microsoft, ...) may reuse a name for another function.
_STANDARD_DOMAINS = ("", "ai.onnx")
# Ops between the logits and a graph output that keep the argmax of every row.
_AFTER_LOGITS = {"Softmax", "LogSoftmax", "Identity", "Cast", "ArgMax"}
# Ops that move or copy values without changing them: uniform bounds pass through.
# (Cast is not one: a cast to float16 can round a bound such as swish's minimum outward.)
_SHAPE_OPS = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
# Ops that keep each vector whole, so a LayerNorm's per-vector ball survives them.
_COPY_OPS = {"Identity", "Dropout"}
# Averages, maxima and minima of values in a box stay in it, up to padding (see _pool).
_POOL_OPS = {"AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
             "ReduceMin"}
_AVERAGING = {"AveragePool", "GlobalAveragePool", "ReduceMean"}
# Fewest inputs (non-empty, in order) each interpreted op needs; checked for every node before any walk.
_REQUIRED_INPUTS = {"MatMul": 2, "Gemm": 2, "Add": 2, "Mul": 2, "Div": 2, "PRelu": 2, "LayerNormalization": 2,
                    "LSTM": 3, "GRU": 3, "Constant": 0}
_NAME_KEYS = ("character", "labels", "classes", "names", "vocab", "id2label")
# Token-name metadata longer than this many characters per class (plus a little) is not parsed:
# a name list is far shorter, and parsing cost grows with the text, not with the model.
_NAME_CHARS_PER_CLASS = 256
_NAME_TEXT_SLACK = 4096
# Python-literal name tables (Ultralytics writes str(dict)) are parsed only up to this size:
# ast.literal_eval needs about 500 bytes of memory per character of input.
_LITERAL_MAX_CHARS = 64 * 1024


def is_onnx(path: Path) -> bool:
    """An ``.onnx`` path: the ONNX source reads it, and says so if it is not a regular file."""
    return path.suffix.lower() == ".onnx" and (path.exists() or path.is_symlink())


def load_onnx(path: str | Path, head: str | None = None) -> LoadedLayer:
    """Read an ONNX model's classifier, its token names and the domain its features live in.

    Parameters
    ----------
    path : str or Path
        A regular ``.onnx`` file. External data files must lie in its folder
        (or below it) and not be symlinks; only the tensors the audit needs are read.
    head : str, optional
        The weight tensor (initializer or Constant output) or the node name of
        the classifier, when the graph has no single obvious one.

    Returns
    -------
    LoadedLayer
        ``layer``/``domain`` ready for :func:`argmaxcheck.audit` (a folded
        LayerNorm where one feeds the head), ``raw`` the head as stored, and
        ``info`` naming the nodes, tensors and domain used.

    Raises
    ------
    InputError
        One line naming the file and the node or tensor at fault.
    """
    path = Path(path)
    model = _read(path)
    graph = _Graph(model, path)
    consts = _Constants(model.graph, graph, path)
    head_node, adds = _find_head(graph, consts, head, path)
    weight, bias, feature, names_used = _classifier(head_node, adds, consts, path)
    tokens, token_note = _token_names(_metadata(model), weight.shape[0])
    raw = OutputLayer.from_arrays(weight, bias, tokens, name=_show(names_used["weight"]),
                                  bias_name=_show(names_used["bias"] or "bias"),
                                  source_dtype=str(consts.get(names_used["weight"]).dtype))
    info = {"format": "onnx", "head_node": head_node.label, "weight": _show(names_used["weight"]),
            "bias": None if names_used["bias"] is None else _show(names_used["bias"]), "features": _show(feature)}
    if token_note:
        info["token_names"] = token_note
    node, tensor, passed = _feature_source(graph, consts, feature)
    whole = all(p.op in _COPY_OPS for p in passed)
    bound, norm = _infer_domain(graph, consts, node, tensor, whole, weight.shape[1])
    if bound is not None:
        for op in reversed(passed):  # forward order: from the producer to the head
            bound = _through(op, bound)
    info["feature_producer"] = node.op if node is not None else "graph input"
    if norm is not None:
        gamma, beta, eps = norm
        folded = fold_norm(raw, "layernorm", gamma, beta, raw.bias, eps)
        info["domain"] = f"{folded.info['domain']} (LayerNormalization output folded in)"
        return LoadedLayer(folded.layer, folded.domain, info, raw, "layernorm", folded.basis, eps)
    domain, why = bound.domain()
    if passed:
        why = f"{why}; looked through {', '.join(dict.fromkeys(p.op for p in passed))}"
    info["domain"] = why
    return LoadedLayer(raw, domain, info, raw)


# --- reading the file --------------------------------------------------------------------------


def _read(path: Path):
    """The ModelProto, without external data (read per tensor, when needed, by :class:`_Constants`)."""
    try:
        import onnx  # noqa: PLC0415 - optional dependency, only for .onnx input
    except ImportError as exc:
        raise InputError(f"{_where(path)}: reading ONNX models needs the onnx package "
                         "(pip install 'argmaxcheck[onnx]')") from exc
    data = _regular_file_bytes(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError, ...: all mean a bad file
        raise InputError(f"{_where(path)}: not a readable ONNX model ({_first_line(exc)})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{_where(path)}: not a readable ONNX model (it holds no graph)")
    return model


def _regular_file_bytes(path: Path) -> bytes:
    """The bytes of a regular file; a folder, FIFO or device is refused without blocking on it."""
    where = _where(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO opens at once, unread
    except FileNotFoundError as exc:
        raise InputError(f"{where}: no such file") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{where}: is a folder, not an ONNX model file") from exc
    except OSError as exc:
        raise InputError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{where}: is a folder, not an ONNX model file")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{where}: is not a regular file (a FIFO, socket or device); give the model file itself")
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            return handle.read()
    except OSError as exc:
        raise InputError(f"{where}: cannot be read ({exc.strerror or type(exc).__name__})") from exc
    finally:
        if fd >= 0:
            os.close(fd)


def _metadata(model) -> dict[str, str]:
    return {_text(p.key): _text(p.value) for p in model.metadata_props}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return _show(text.splitlines()[0]) if text else type(exc).__name__


# --- text: every name from the file is data --------------------------------------------------


def _where(path: Path) -> str:
    return _show(str(path))


def _key(value: str | bytes) -> str:
    """A name as a dictionary key. Protobuf hands back bytes for a string field that is not UTF-8;
    surrogateescape keeps such names distinct from every valid one."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def _show(name: str) -> str:
    """A name for messages and reports: invalid bytes and control characters as backslash escapes."""
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that surrogateescape did not make
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return printable(text)


def _text(value: str | bytes) -> str:
    """Free text (metadata, token names) as valid Unicode; tabs and the like are kept."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# --- the graph ---------------------------------------------------------------------------------


class _Node:
    """One node of the main graph, with decoded names and checked attribute access."""

    def __init__(self, proto, path: Path):
        self.proto = proto
        self.op = _show(_key(proto.op_type))
        self.domain = _key(proto.domain)
        self.name = _key(proto.name)
        self.inputs = tuple(_key(i) for i in proto.input)
        self.outputs = tuple(_key(o) for o in proto.output)
        self._path = path

    @property
    def label(self) -> str:
        """What messages call the node: its name, else its op type."""
        return _show(self.name) if self.name else self.op

    def is_op(self, *ops: str) -> bool:
        return self.op in ops and self.domain in _STANDARD_DOMAINS

    def input(self, i: int) -> str:
        """Input ``i``, or '' where it is left out."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def fault(self, what: str) -> InputError:
        return InputError(f"{_where(self._path)}: {self.op} node '{self.label}' {what}")

    def _attribute(self, name: str):
        for a in self.proto.attribute:
            if _key(a.name) == name:
                return a
        return None

    def number(self, name: str, default: float) -> float:
        a = self._attribute(name)
        if a is None:
            return float(default)
        if a.type != a.FLOAT:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected a float")
        return float(a.f)

    def integer(self, name: str, default: int) -> int:
        a = self._attribute(name)
        if a is None:
            return int(default)
        if a.type != a.INT:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected an integer")
        return int(a.i)

    def integers(self, name: str) -> list[int]:
        a = self._attribute(name)
        if a is None:
            return []
        if a.type != a.INTS:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected a list of integers")
        return [int(v) for v in a.ints]

    def numbers(self, name: str) -> list[float]:
        a = self._attribute(name)
        if a is None:
            return []
        if a.type != a.FLOATS:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected a list of floats")
        return [float(v) for v in a.floats]

    def string(self, name: str, default: str) -> str:
        a = self._attribute(name)
        if a is None:
            return default
        if a.type != a.STRING:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected a string")
        return _text(a.s)

    def strings(self, name: str) -> list[str]:
        a = self._attribute(name)
        if a is None:
            return []
        if a.type != a.STRINGS:
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected a list of strings")
        return [_text(s) for s in a.strings]

    def has(self, name: str) -> bool:
        return self._attribute(name) is not None


class _Graph:
    """The main graph's nodes, indexed by the tensors they produce; checked acyclic once, here."""

    def __init__(self, model, path: Path):
        self.path = path
        self.nodes = [_Node(p, path) for p in model.graph.node]
        self.outputs = [_key(o.name) for o in model.graph.output]
        self.opset = next((int(o.version) for o in model.opset_import if _key(o.domain) in _STANDARD_DOMAINS), 0)
        self.producer: dict[str, _Node] = {}
        self.consumers: dict[str, list[_Node]] = {}
        for node in self.nodes:
            _check_arity(node)
            for out in node.outputs:
                if not out:
                    continue
                if out in self.producer:
                    raise node.fault(f"writes tensor '{_show(out)}', which node '{self.producer[out].label}'"
                                     " writes too (an ONNX graph assigns each tensor once)")
                self.producer[out] = node
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)
        self._ranks = {}
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                self._ranks[_key(vi.name)] = len(tt.shape.dim)
        self._check_acyclic()

    def rank(self, tensor: str) -> int | None:
        return self._ranks.get(tensor)

    def _check_acyclic(self) -> None:
        """Kahn's algorithm over the producer edges: every later walk then ends (and each also bounds itself)."""
        index = {id(n): k for k, n in enumerate(self.nodes)}
        preds = [{index[id(self.producer[i])] for i in n.inputs if i in self.producer} for n in self.nodes]
        succs: list[list[int]] = [[] for _ in self.nodes]
        for k, ps in enumerate(preds):
            for p in ps:
                succs[p].append(k)
        waiting = [len(ps) for ps in preds]
        ready = [k for k, w in enumerate(waiting) if w == 0]
        done = 0
        while ready:
            k = ready.pop()
            done += 1
            for s in succs[k]:
                waiting[s] -= 1
                if waiting[s] == 0:
                    ready.append(s)
        if done == len(self.nodes):
            return
        # Walk back among the nodes left over until one repeats: that node is on a cycle.
        k, seen = next(k for k, w in enumerate(waiting) if w > 0), set()
        while k not in seen:
            seen.add(k)
            k = next(p for p in preds[k] if waiting[p] > 0)
        raise self.nodes[k].fault("is on a cycle: its output feeds back into its own input (an ONNX graph is"
                                  " acyclic)")

    def walk(self, tensor: str, step):
        """Yield (node, its output reached) walking back from ``tensor``.

        ``step(node, output)`` names the input to follow next (None: stop). Each
        node is met at most once, so the walk ends even on a malformed graph.
        """
        seen: set[int] = set()
        node = self.producer.get(tensor)
        while node is not None:
            if id(node) in seen:
                raise node.fault("is on a cycle: its output feeds back into its own input")
            seen.add(id(node))
            yield node, tensor
            tensor = step(node, tensor)
            if tensor is None:
                return
            node = self.producer.get(tensor)


def _check_arity(node: _Node) -> None:
    """The inputs and attributes an interpreted op cannot do without (a malformed file lacks them)."""
    if node.domain not in _STANDARD_DOMAINS:
        return
    needed = _REQUIRED_INPUTS.get(node.op, 1 if node.op in (_AFTER_LOGITS | _SHAPE_OPS | _POOL_OPS) else 0)
    missing = [i for i in range(needed) if not node.input(i)]
    if missing:
        raise node.fault(f"has {sum(bool(i) for i in node.inputs)} input(s); it needs {needed}"
                         f" (input {missing[0]} is missing)")
    if node.op == "Constant":
        if len(node.outputs) != 1 or not node.outputs[0]:
            raise node.fault(f"has {len(node.outputs)} outputs, expected 1")
        values = [a for a in node.proto.attribute if _key(a.name).startswith(("value", "sparse_value"))]
        if len(values) != 1:
            raise node.fault(f"has {len(values)} value attributes, expected exactly one")
    elif needed and (not node.outputs or not node.outputs[0]):
        raise node.fault("has no output")


# --- constants -----------------------------------------------------------------------------------


def _numeric_types() -> dict[int, str]:
    from onnx import TensorProto  # noqa: PLC0415

    names = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16",
             "UINT32", "UINT64", "BOOL")
    return {getattr(TensorProto, n): n.lower() for n in names}


_FLOAT_TYPES = ("float", "double", "float16", "bfloat16")


class _Constants:
    """Tensors known without running the graph: initializers and Constant nodes, each read, checked
    and converted on first use (external data included), so only what the audit needs is read."""

    def __init__(self, graph_proto, graph: _Graph, path: Path):
        self._path = path
        self._protos: dict[str, object] = {}
        for t in graph_proto.initializer:
            key = _key(t.name)
            if key in self._protos:
                raise InputError(f"{_where(path)}: initializer '{_show(key)}' is defined twice")
            self._protos[key] = t
        self._nodes: dict[str, _Node] = {}
        for node in graph.nodes:
            if node.is_op("Constant"):
                out = node.outputs[0]
                if out in self._protos:
                    raise node.fault(f"writes '{_show(out)}', which is also an initializer")
                self._nodes[out] = node
        self._cache: dict[str, np.ndarray] = {}
        self._types = _numeric_types()

    def __contains__(self, name: str) -> bool:
        return name in self._protos or name in self._nodes

    def is_float(self, name: str) -> bool:
        return self.type_name(name) in _FLOAT_TYPES

    def type_name(self, name: str) -> str | None:
        """The element type of a numeric constant ('float', 'int64', ...), else None."""
        proto = self._tensor_proto(name)
        if proto is not None:
            return self._types.get(proto.data_type)
        node = self._nodes.get(name)
        if node is not None and (node.has("value_float") or node.has("value_floats")):
            return "float"
        if node is not None and (node.has("value_int") or node.has("value_ints")):
            return "int64"
        return None

    def shape(self, name: str) -> tuple[int, ...] | None:
        proto = self._tensor_proto(name)
        if proto is not None:
            return tuple(int(d) for d in proto.dims)
        node = self._nodes.get(name)
        if node is None:
            return None
        if node.has("value_floats"):
            return (len(node.numbers("value_floats")),)
        if node.has("value_ints"):
            return (len(node.integers("value_ints")),)
        return ()

    def get(self, name: str) -> np.ndarray | None:
        """The tensor's values, or None when ``name`` is not a constant."""
        if name in self._cache:
            return self._cache[name]
        proto = self._tensor_proto(name)
        if proto is not None:
            what = f"tensor '{_show(name)}'"
            value = self._to_array(proto, what)
        elif name in self._nodes:
            node = self._nodes[name]
            if node.has("value_float"):
                value = np.asarray(node.number("value_float", 0.0), dtype=np.float32)
            elif node.has("value_floats"):
                value = np.asarray(node.numbers("value_floats"), dtype=np.float32)
            elif node.has("value_int"):
                value = np.asarray(node.integer("value_int", 0), dtype=np.int64)
            elif node.has("value_ints"):
                value = np.asarray(node.integers("value_ints"), dtype=np.int64)
            else:
                raise node.fault("holds strings or a sparse tensor, not numbers")
        else:
            return None
        self._cache[name] = value
        return value

    def scalar(self, name: str) -> float | None:
        """The value of a one-element numeric constant, else None (a graph tensor, or several values)."""
        if name not in self:
            return None
        shape = self.shape(name)
        if shape is None or math.prod(shape) != 1:
            return None
        return float(self.get(name).reshape(()))

    def _tensor_proto(self, name: str):
        if name in self._protos:
            return self._protos[name]
        node = self._nodes.get(name)
        if node is not None and node.has("value"):
            a = node._attribute("value")
            if a.type != a.TENSOR:
                raise node.fault("has a 'value' attribute that is not a tensor")
            return a.t
        return None

    def _to_array(self, proto, what: str) -> np.ndarray:
        from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

        where = _where(self._path)
        dtype = self._types.get(proto.data_type)
        if dtype is None:
            try:
                type_name = helper.tensor_dtype_to_string(proto.data_type).removeprefix("TensorProto.")
            except (KeyError, ValueError):
                type_name = f"{proto.data_type} (unknown)"
            raise InputError(f"{where}: {what} has data type {type_name}, not a number type")
        dims = [int(d) for d in proto.dims]
        if any(d < 0 for d in dims):
            raise InputError(f"{where}: {what} has a negative dimension in its shape {dims}")
        count = math.prod(dims)
        nbytes = count * np.dtype(helper.tensor_dtype_to_np_dtype(proto.data_type)).itemsize
        if proto.HasField("segment"):
            raise InputError(f"{where}: {what} is stored in segments, which argmaxcheck does not read")
        if proto.data_location == TensorProto.EXTERNAL:
            proto = self._external(proto, nbytes, what)
        elif proto.HasField("raw_data"):
            if len(proto.raw_data) != nbytes:
                raise InputError(f"{where}: {what} holds {len(proto.raw_data)} bytes, but its shape {dims}"
                                 f" of {dtype} needs {nbytes}")
        else:
            held = len(getattr(proto, helper.tensor_dtype_to_field(proto.data_type)))
            if held != count:
                raise InputError(f"{where}: {what} holds {held} values, but its shape {dims} needs {count}")
        try:
            return np.asarray(numpy_helper.to_array(proto))
        except Exception as exc:  # any failure to decode a checked tensor is still a bad file
            raise InputError(f"{where}: {what} cannot be decoded ({_first_line(exc)})") from exc

    def _external(self, proto, nbytes: int, what: str):
        """A copy of ``proto`` with its external bytes loaded, after checking where they come from."""
        from onnx import TensorProto  # noqa: PLC0415
        from onnx.external_data_helper import load_external_data_for_tensor  # noqa: PLC0415

        where = _where(self._path)
        entries = {_key(e.key): _key(e.value) for e in proto.external_data}
        location = entries.get("location", "")
        data_file = _external_file(self._path.parent, location, f"{where}: {what}")
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else None
        except ValueError as exc:
            raise InputError(f"{where}: {what} has an external data offset or length that is not an integer") from exc
        size = data_file.stat().st_size
        if offset < 0 or (length is not None and length != nbytes):
            raise InputError(f"{where}: {what} has external data offset {offset} and length {length};"
                             f" its shape needs {nbytes} bytes")
        if offset + nbytes > size:
            raise InputError(f"{where}: {what} needs bytes {offset}..{offset + nbytes} of"
                             f" '{_show(location)}', which has {size}")
        copy = TensorProto()
        copy.CopyFrom(proto)
        del copy.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
            copy.external_data.add(key=key, value=value)
        try:
            load_external_data_for_tensor(copy, str(self._path.parent))
        except Exception as exc:  # onnx's own checks (hard links, races): still a file we refuse
            raise InputError(f"{where}: {what}: external data '{_show(location)}' refused ({_first_line(exc)})"
                             ) from exc
        return copy


def _external_file(folder: Path, location: str, what: str) -> Path:
    """The regular file ``location`` names inside ``folder``, reached without symlinks or ``..``.

    Checked before onnx opens anything: an absolute path, a ``..`` component or
    a symlink could read any file on the machine, and a FIFO would block forever.
    """
    shown = _show(location)
    if not location or "\0" in location:
        raise InputError(f"{what} has external data without a file name")
    if os.path.isabs(location) or Path(location).anchor:
        raise InputError(f"{what}: external data '{shown}' is an absolute path; it must lie in the model's folder")
    separators = [os.sep, *([os.altsep] if os.altsep else [])]
    parts = [location]
    for sep in separators:
        parts = [piece for part in parts for piece in part.split(sep)]
    parts = [p for p in parts if p not in ("", ".")]
    if ".." in parts or not parts:
        raise InputError(f"{what}: external data '{shown}' leaves the model's folder")
    current = folder
    for k, part in enumerate(parts):
        current = current / part
        try:
            info = current.lstat()
        except OSError as exc:
            raise InputError(f"{what}: external data file '{shown}' not found next to the model") from exc
        if stat.S_ISLNK(info.st_mode):
            raise InputError(f"{what}: external data '{shown}' goes through a symlink; copy the file in place")
        last = k == len(parts) - 1
        if not last and not stat.S_ISDIR(info.st_mode):
            raise InputError(f"{what}: external data '{shown}' is not inside a folder")
        if last and not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what}: external data '{shown}' is not a regular file")
    return current


# --- the head --------------------------------------------------------------------------------


def _is_classifier(node: _Node | None, consts: _Constants) -> bool:
    """MatMul or Gemm of graph features by a constant 2-D weight."""
    if node is None or not node.is_op("MatMul", "Gemm"):
        return False
    shape = consts.shape(node.input(1))
    return shape is not None and len(shape) == 2 and node.input(0) not in consts


def _find_head(graph: _Graph, consts: _Constants, head: str | None, path: Path):
    """(classifier node, the Adds of constants between it and the logits)."""
    candidates = [n for n in graph.nodes if _is_classifier(n, consts)]
    routes: dict[int, list] = {}
    for found in (_logits_path(graph, consts, out) for out in graph.outputs):
        if found is not None:
            routes.setdefault(id(found[0]), []).append(found)
    where = _where(path)
    listed = ", ".join(f"{_show(n.input(1))} ({n.op})" for n in candidates[-8:]) or "none"
    if head is not None:
        for node in candidates:
            if head in (node.name, node.input(1), node.label, _show(node.input(1))):
                if id(node) in routes:
                    return node, _bias_route(routes[id(node)], path)
                return node, _single_bias_add(graph, consts, node)
        raise InputError(f"{where}: no MatMul/Gemm with weight or node name '{_show(head)}'; candidates: {listed}")
    if len(routes) == 1:  # e.g. both the logits and the softmax are outputs
        (found,) = routes.values()
        return found[0][0], _bias_route(found, path)
    what = "several outputs end in a classifier" if routes else "no graph output ends in MatMul/Gemm [+ Add]"
    raise InputError(f"{where}: {what} (through Softmax, LogSoftmax, Identity, Cast or a positive scale);"
                     f" pick the head with --weight NAME; candidates: {listed}")


def _bias_route(routes: list, path: Path) -> list[_Node]:
    """The bias Adds of one classifier when several outputs reach it: those all outputs agree on, else those
    of the outputs that pass a Softmax, LogSoftmax or ArgMax (the prediction)."""
    for pool in (routes, [r for r in routes if r[2]]):
        kinds = {tuple(id(a) for a in adds): adds for _, adds, _ in pool}
        if len(kinds) == 1:
            return next(iter(kinds.values()))
    node = routes[0][0]
    raise InputError(f"{_where(path)}: the graph outputs add different biases to the output of"
                     f" {node.op} '{node.label}'; pick one output's model or fold the bias into one Add")


def _logits_path(graph: _Graph, consts: _Constants, output: str):
    """(classifier, [Add nodes of a constant bias], passed a Softmax/LogSoftmax/ArgMax) behind a graph output,
    through argmax-keeping ops; None when the output does not come from a classifier that way."""
    adds: list[_Node] = []
    result = []
    decisive = []

    def step(node: _Node, tensor: str):
        if _is_classifier(node, consts):
            result.append(node)
            return None
        if node.is_op("Add"):
            other = [i for i in node.inputs if i not in consts]
            if len(other) == 1 and len(node.inputs) == 2:  # logits + a constant: a bias
                adds.append(node)
                return other[0]
            return None
        if node.is_op(*_AFTER_LOGITS) or (node.is_op("Div", "Mul") and _positive_scale(node, consts)):
            decisive.append(node.op in ("Softmax", "LogSoftmax", "ArgMax"))
            return node.input(1) if node.input(0) in consts else node.input(0)
        return None

    for _ in graph.walk(output, step):
        pass
    return (result[0], adds, any(decisive)) if result else None


def _single_bias_add(graph: _Graph, consts: _Constants, node: _Node) -> list[_Node]:
    """For a head picked by name: its one consumer, if that is an Add of a constant."""
    users = graph.consumers.get(node.outputs[0], [])
    if len(users) == 1 and users[0].is_op("Add") and len(users[0].inputs) == 2:
        other = [i for i in users[0].inputs if i != node.outputs[0]]
        if len(other) == 1 and other[0] in consts:
            return [users[0]]
    return []


def _positive_scale(node: _Node, consts: _Constants) -> bool:
    """A Mul or Div by a finite positive constant scalar (a temperature): it keeps every argmax."""
    values = [consts.scalar(i) for i in node.inputs[:2]]
    if node.op == "Div":
        return values[1] is not None and 0 < values[1] < np.inf and values[0] is None and node.input(0) not in consts
    known = [v for v in values if v is not None]
    return len(known) == 1 and 0 < known[0] < np.inf and sum(i in consts for i in node.inputs[:2]) == 1


def _classifier(node: _Node, adds: list[_Node], consts: _Constants, path: Path):
    """(weight [n, d], bias or None, feature tensor name, names of the tensors used)."""
    where = _where(path)
    stored = consts.get(node.input(1))  # checked: a number type, as many values as its shape says
    if not consts.is_float(node.input(1)):
        raise InputError(f"{where}: weight '{_show(node.input(1))}' has dtype {consts.type_name(node.input(1))},"
                         " expected floating point")
    b_mat = stored.astype(np.float64)
    names = {"weight": node.input(1), "bias": None}
    bias = None
    if node.op == "Gemm":
        if node.integer("transB", 0):
            b_mat = b_mat.T
        weight = node.number("alpha", 1.0) * b_mat.T
        if node.input(2):
            if node.input(2) not in consts:
                raise node.fault("takes its C input from the graph, not a constant")
            bias = node.number("beta", 1.0) * _vector(consts, node.input(2), weight.shape[0], path)
            names["bias"] = node.input(2)
    else:
        weight = b_mat.T
    for add in adds:
        name = next(i for i in add.inputs if i in consts)
        term = _vector(consts, name, weight.shape[0], path)
        bias = term if bias is None else bias + term
        names["bias"] = name if names["bias"] is None else f"{names['bias']} + {name}"
    return weight, bias, node.input(0), names


def _vector(consts: _Constants, name: str, n: int, path: Path) -> np.ndarray:
    """A bias broadcast along the classes: shape (n,), (1, n), (1, 1, n) or a scalar."""
    value = np.asarray(consts.get(name), dtype=np.float64)
    if value.size == 1:
        return np.full(n, float(value.reshape(())))
    if value.ndim == 0 or value.shape[-1] != n or value.size != n:
        raise InputError(f"{_where(path)}: bias '{_show(name)}' has shape {value.shape}, expected ({n},)"
                         " to match the weight")
    return value.reshape(n)


# --- the domain --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bound:
    """Bounds that hold for every coordinate of the features, and why."""

    lower: float
    upper: float
    why: str

    @classmethod
    def everything(cls, why: str) -> _Bound:
        return cls(-np.inf, np.inf, why)

    @classmethod
    def smooth(cls, lower: float, upper: float, what: str) -> _Bound:
        """Bounds from a transcendental function, widened for floating-point evaluation."""
        lo = lower * (1 + EVALUATION_ROOM) if lower < 0 else lower
        hi = upper * (1 + EVALUATION_ROOM) if upper > 0 else upper
        sides = []
        if np.isfinite(lo):
            sides.append(f"x >= {lo!r}")
        if np.isfinite(hi):
            sides.append(f"x <= {hi!r}")
        exact = ", ".join(repr(v) for v in (lower, upper) if np.isfinite(v))
        return cls(lo, hi, f"{' and '.join(sides)} ({what}: exact bound {exact}, widened by {EVALUATION_ROOM:g}"
                           " for floating-point evaluation)")

    @classmethod
    def exact(cls, lower: float, upper: float, what: str) -> _Bound:
        if lower == upper:
            return cls(lower, upper, f"x = {lower!r} ({what})")
        if not np.isfinite(upper):
            return cls(lower, upper, f"x >= {lower!r} ({what})")
        if not np.isfinite(lower):
            return cls(lower, upper, f"x <= {upper!r} ({what})")
        return cls(lower, upper, f"{lower!r} <= x <= {upper!r} ({what})")

    def domain(self):
        if self.lower == -np.inf and self.upper == np.inf:
            return Unbounded(), self.why
        return Box(self.lower, self.upper), self.why


def _feature_source(graph: _Graph, consts: _Constants, feature: str):
    """(node computing the features or None, its output used, pass-through nodes met on the way back).

    Looks through ops that only move values (Reshape, Transpose, ...) and
    through pooling, following each one's data input.
    """
    passed: list[_Node] = []

    def step(node: _Node, tensor: str):
        if node.is_op(*_SHAPE_OPS, *_POOL_OPS) and _passes_values(node, tensor, consts):
            passed.append(node)
            return node.input(0)
        return None

    producer, used = None, feature
    for node, tensor in graph.walk(feature, step):
        producer, used = node, tensor
    if producer is not None and passed and passed[-1] is producer:  # the walk left the graph through it
        return None, producer.input(0), passed
    return producer, used, passed


def _passes_values(node: _Node, tensor: str, consts: _Constants) -> bool:
    """Whether ``tensor`` carries the node's data input's values (not a mask or pooling indices)."""
    if tensor != node.outputs[0]:
        return False
    if node.op == "Dropout" and node.input(2):  # training_mode: scales and zeroes unless constant false
        mode = consts.scalar(node.input(2))
        if mode is None or mode != 0:
            return False
    return True


def _infer_domain(graph: _Graph, consts: _Constants, node: _Node | None, tensor: str, whole: bool, d: int):
    """(bound, LayerNorm (gamma, beta, eps) to fold): exactly one of them is None."""
    if node is None:
        return _Bound.everything("R^d: the features are a graph input (or a constant)"), None
    if node.domain not in _STANDARD_DOMAINS:
        return _Bound.everything(f"R^d: {node.op} is a custom op (domain '{_show(node.domain)}')"), None
    if node.op in ("LSTM", "GRU"):
        return _recurrent_bound(node, tensor), None
    if tensor != node.outputs[0]:
        return _Bound.everything(f"R^d: the features are output '{_show(tensor)}' of {node.op}, not its values"), None
    if node.op == "LayerNormalization":
        norm, why = _layernorm(graph, consts, node, whole, d)
        return (None, norm) if norm is not None else (_Bound.everything(why), None)
    rule = _ACTIVATIONS.get(node.op)
    if rule is None:
        return _Bound.everything(f"R^d: no bound is known for the output of {node.op}"), None
    return rule(node, graph, consts), None


def _finite_attributes(node: _Node, defaults: dict[str, float]) -> dict[str, float] | str:
    """The node's float attributes, or the reason for R^d when one is NaN or infinite."""
    values = {name: node.number(name, default) for name, default in defaults.items()}
    bad = [f"{name}={value!r}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        return f"R^d: {node.op} with {', '.join(bad)} has no finite output range"
    return values


def _relu(node, graph, consts) -> _Bound:
    return _Bound.exact(0.0, np.inf, f"{node.op} output")


def _unit(node, graph, consts) -> _Bound:
    if node.op == "HardSigmoid":  # max(0, min(1, a x + b)): in [0, 1] for every finite a and b
        attrs = _finite_attributes(node, {"alpha": 0.2, "beta": 0.5})
        if isinstance(attrs, str):
            return _Bound.everything(attrs)
    return _Bound.exact(0.0, 1.0, f"{node.op} output")


def _symmetric_unit(node, graph, consts) -> _Bound:
    return _Bound.exact(-1.0, 1.0, f"{node.op} output")


def _leaky_relu(node, graph, consts) -> _Bound:
    """x for x >= 0, a x below: a <= 0 keeps the output >= 0; a > 0 reaches every negative number."""
    attrs = _finite_attributes(node, {"alpha": 0.01})
    if isinstance(attrs, str):
        return _Bound.everything(attrs)
    if attrs["alpha"] > 0:
        return _Bound.everything(f"R^d: LeakyRelu with alpha={attrs['alpha']!r} > 0 takes every value")
    return _Bound.exact(0.0, np.inf, f"LeakyRelu output, alpha={attrs['alpha']!r} <= 0")


def _prelu(node, graph, consts) -> _Bound:
    slope = consts.get(node.input(1)) if node.input(1) in consts else None
    if slope is None:
        return _Bound.everything("R^d: PRelu's slope comes from the graph, not a constant")
    slope = slope.astype(np.float64)
    if slope.size and np.all(np.isfinite(slope)) and np.all(slope <= 0):
        return _Bound.exact(0.0, np.inf, "PRelu output, every slope <= 0")
    return _Bound.everything("R^d: PRelu has a slope > 0 (or not finite), so it takes every value")


def _thresholded_relu(node, graph, consts) -> _Bound:
    """x where x > a, else 0: the values are {0} and (a, inf)."""
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return _Bound.everything(attrs)
    return _Bound.exact(min(0.0, attrs["alpha"]), np.inf, f"ThresholdedRelu output, alpha={attrs['alpha']!r}")


def _elu(node, graph, consts) -> _Bound:
    """Elu: x for x > 0, a (e^x - 1) below, which lies in (-a, 0) for a > 0 and in [0, -a) for a <= 0.
    Celu: x for x > 0, a (e^(x/a) - 1) below; for a < 0 that falls without bound, for a = 0 it is NaN."""
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return _Bound.everything(attrs)
    alpha = attrs["alpha"]
    if node.op == "Celu" and alpha <= 0:
        return _Bound.everything(f"R^d: Celu with alpha={alpha!r} <= 0 is unbounded below (or NaN at 0)")
    if alpha <= 0:
        return _Bound.exact(0.0, np.inf, f"{node.op} output, alpha={alpha!r} <= 0")
    return _Bound.smooth(-alpha, np.inf, f"{node.op} output, alpha={alpha!r}")


def _selu(node, graph, consts) -> _Bound:
    """g x for x > 0 and g a (e^x - 1) below, which lies between 0 and -a g."""
    attrs = _finite_attributes(node, {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875})
    if isinstance(attrs, str):
        return _Bound.everything(attrs)
    alpha, gamma = attrs["alpha"], attrs["gamma"]
    what = f"Selu output, alpha={alpha!r}, gamma={gamma!r}"
    if gamma == 0:
        return _Bound.exact(0.0, 0.0, what)
    edge = -alpha * gamma  # the limit of the negative branch
    if gamma > 0:
        return _Bound.smooth(min(0.0, edge), np.inf, what)
    return _Bound.smooth(-np.inf, max(0.0, edge), what)


def _gelu(node, graph, consts) -> _Bound:
    form = node.string("approximate", "none")
    if form == "none":
        return _Bound.smooth(GELU_MIN, np.inf, "Gelu output, min of x Phi(x)")
    if form == "tanh":
        return _Bound.smooth(GELU_TANH_MIN, np.inf, "Gelu output (tanh form)")
    return _Bound.everything(f"R^d: Gelu with approximate='{_show(form)}' is not an ONNX form")


def _fixed_minimum(node, graph, consts) -> _Bound:
    minimum = {"HardSwish": HARDSWISH_MIN, "Mish": MISH_MIN}[node.op]
    return _Bound.smooth(minimum, np.inf, f"{node.op} output")


def _swish(node, graph, consts) -> _Bound:
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return _Bound.everything(attrs)
    return _scaled_swish(attrs["alpha"], f"Swish output, alpha={attrs['alpha']!r}")


def _scaled_swish(c: float, what: str) -> _Bound:
    """x sigmoid(c x) = swish(c x) / c: for c > 0 at least SWISH_MIN / c; for c < 0 it is the mirror image,
    x sigmoid(c x) = -(y sigmoid(|c| y)) at y = -x, so at most -SWISH_MIN / |c|; for c = 0 it is x / 2."""
    if c == 0 or not math.isfinite(c):
        return _Bound.everything(f"R^d: {what} takes every value")
    edge = SWISH_MIN / abs(c)
    if c > 0:
        return _Bound.smooth(float(np.nextafter(edge, -np.inf)), np.inf, what)
    return _Bound.smooth(-np.inf, float(np.nextafter(-edge, np.inf)), what)


def _clip(node, graph, consts) -> _Bound:
    """min(max(x, lo), hi): at most hi whenever hi is known; at least lo only when hi is known or absent,
    since lo > hi gives hi. Opset 11 moved lo and hi from attributes to inputs."""
    if graph.opset and graph.opset < 11:
        lo = node.number("min", -np.inf) if node.has("min") else None
        hi = node.number("max", np.inf) if node.has("max") else None
        lo_given, hi_given = lo is not None, hi is not None
    else:
        lo_given, hi_given = bool(node.input(1)), bool(node.input(2))
        lo = consts.scalar(node.input(1)) if lo_given else None
        hi = consts.scalar(node.input(2)) if hi_given else None
    for name, value in (("min", lo), ("max", hi)):
        if value is not None and math.isnan(value):
            return _Bound.everything(f"R^d: Clip with {name}=nan outputs NaN")
    if (lo is not None and lo == np.inf) or (hi is not None and hi == -np.inf):
        return _Bound.everything("R^d: Clip's bounds make every output infinite")
    upper = hi if hi is not None else np.inf
    lower = lo if lo is not None and (hi is not None or not hi_given) else -np.inf
    if lower > upper:  # ONNX: min > max sets every output to max
        return _Bound.exact(upper, upper, f"Clip output, min {lower!r} > max {upper!r}: every value is max")
    unknown = [n for n, given, v in (("min", lo_given, lo), ("max", hi_given, hi)) if given and v is None]
    what = "Clip output" + (f"; its {' and '.join(unknown)} come from the graph" if unknown else "")
    if lower == -np.inf and upper == np.inf:
        return _Bound.everything(f"R^d: no bound is known for {what}")
    return _Bound.exact(lower, upper, what)


def _gated(node, graph, consts) -> _Bound:
    found = _gated_linear(node, graph, consts)
    return found if found is not None else _Bound.everything("R^d: no bound is known for the output of Mul")


def _gated_linear(node: _Node, graph: _Graph, consts: _Constants) -> _Bound | None:
    """x * Sigmoid(c x) (swish) or x * HardSigmoid(x) (hard swish), either input order."""
    for x, gate_name in ((node.input(0), node.input(1)), (node.input(1), node.input(0))):
        gate = graph.producer.get(gate_name)
        if gate is None or gate.outputs[0] != gate_name:
            continue
        if gate.is_op("Sigmoid"):
            inner = gate.input(0)
            if inner == x:
                return _scaled_swish(1.0, "swish x * sigmoid(x)")
            scale_node = graph.producer.get(inner)
            if scale_node is not None and scale_node.is_op("Mul") and x in scale_node.inputs[:2]:
                other = [i for i in scale_node.inputs[:2] if i != x]
                c = consts.scalar(other[0]) if len(other) == 1 else None
                if c is not None:
                    return _scaled_swish(c, f"swish x * sigmoid({c:g} x)")
        if gate.is_op("HardSigmoid") and gate.input(0) == x:
            attrs = _finite_attributes(gate, {"alpha": 0.2, "beta": 0.5})
            if isinstance(attrs, str):
                return _Bound.everything(attrs)
            return _hard_gate(attrs["alpha"], attrs["beta"])
    return None


def _hard_gate(alpha: float, beta: float) -> _Bound:
    """Bounds of x * clip(a x + b, 0, 1).

    For a > 0 the output is >= 0 for x >= 0 and, for x < 0, smallest where
    the gate is linear: at x = -b / 2a (value -b^2 / 4a) when 0 < b <= 2, at the
    gate's top corner x = (1 - b) / a (value (1 - b) / a) when b > 2; for b <= 0
    the gate is shut for every x < 0 and the minimum is 0. For a < 0 the output
    at x is minus the output for |a| at -x: an upper bound. For a = 0 the gate
    is a constant k and the output k x.
    """
    what = f"x * HardSigmoid(x), alpha={alpha!r}, beta={beta!r}"
    if alpha == 0:
        k = min(max(beta, 0.0), 1.0)
        return _Bound.exact(0.0, 0.0, what) if k == 0 else _Bound.everything(f"R^d: {what} takes every value")
    a = abs(alpha)
    if beta <= 0:
        edge = 0.0
    elif beta <= 2:
        edge = float(np.nextafter(-beta * beta / (4 * a), -np.inf))
    else:
        edge = float(np.nextafter((1 - beta) / a, -np.inf))
    if edge == -np.inf:
        return _Bound.everything(f"R^d: {what} has no finite minimum")
    if alpha > 0:
        return _Bound.smooth(edge, np.inf, what) if edge < 0 else _Bound.exact(0.0, np.inf, what)
    return _Bound.smooth(-np.inf, -edge, what) if edge < 0 else _Bound.exact(-np.inf, 0.0, what)


_ACTIVATIONS = {
    "Relu": _relu, "Softplus": _relu, "Sigmoid": _unit, "HardSigmoid": _unit, "Tanh": _symmetric_unit,
    "Softsign": _symmetric_unit, "LeakyRelu": _leaky_relu, "PRelu": _prelu, "ThresholdedRelu": _thresholded_relu,
    "Elu": _elu, "Celu": _elu, "Selu": _selu, "Gelu": _gelu, "HardSwish": _fixed_minimum, "Mish": _fixed_minimum,
    "Swish": _swish, "Clip": _clip, "Mul": _gated,
}


def _through(node: _Node, bound: _Bound) -> _Bound:
    """The bound after a pass-through op (forward direction)."""
    if node.op not in _POOL_OPS or (bound.lower == -np.inf and bound.upper == np.inf):
        return bound
    lower, upper, note = bound.lower, bound.upper, ""
    if node.op in ("AveragePool", "MaxPool"):
        padded = any(node.integers("pads")) or node.string("auto_pad", "NOTSET") not in ("NOTSET", "VALID") \
            or node.integer("ceil_mode", 0) != 0
        if padded and node.op == "AveragePool" and node.integer("count_include_pad", 0):
            lower, upper, note = min(lower, 0.0), max(upper, 0.0), f"{node.op} may average in padded zeros"
        elif padded and not _no_empty_window(node):
            return _Bound.everything(f"R^d: {node.op}'s padding may leave a window with no input value"
                                     f" ({bound.why})")
    if node.op in _AVERAGING:  # a rounded average can land an ulp outside the values' range
        lower = lower * (1 + EVALUATION_ROOM) if lower < 0 else lower
        upper = upper * (1 + EVALUATION_ROOM) if upper > 0 else upper
        note = note or f"{node.op} rounding"
    if note:
        return _Bound(lower, upper, f"{lower!r} <= x <= {upper!r} after {note} ({bound.why})")
    return bound


def _no_empty_window(node: _Node) -> bool:
    """Every pooling window holds an input value: unit dilation, no ceil mode, each pad below the kernel."""
    kernel, pads = node.integers("kernel_shape"), node.integers("pads")
    if not kernel or any(d != 1 for d in node.integers("dilations")) or node.integer("ceil_mode", 0):
        return False
    if node.string("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True  # SAME pads at most kernel - 1 in total
    if len(pads) != 2 * len(kernel):
        return not any(pads)
    return all(p < k for p, k in zip(pads, kernel * 2, strict=True))


def _recurrent_bound(node: _Node, tensor: str) -> _Bound:
    """Hidden states in [-1, 1]. LSTM: o * act(c) with gates and act among sigmoid/tanh. GRU: a running
    combination (1 - z) h~ + z h of tanh/sigmoid values, convex only when the gate z is a sigmoid,
    from a zero initial state."""
    if tensor not in node.outputs[:2]:
        return _Bound.everything(f"R^d: the features are the cell state of {node.op}, not a hidden state")
    acts = [a.lower() for a in node.strings("activations")]
    per = 3 if node.op == "LSTM" else 2
    if any(a not in ("sigmoid", "tanh") for a in acts):
        return _Bound.everything(f"R^d: {node.op} with activations {acts} (only Sigmoid and Tanh are bounded here)")
    has_initial = bool(node.input(5))
    if node.op == "GRU":
        gates = acts[0::per] if acts else ["sigmoid"]
        if any(g != "sigmoid" for g in gates) or has_initial:
            return _Bound.everything("R^d: a GRU hidden state is bounded only with a Sigmoid update gate and no"
                                     " initial state")
    elif has_initial and node.input(4):  # sequence_lens 0 could hand back initial_h itself
        return _Bound.everything("R^d: an LSTM with an initial state and sequence lengths may output the initial"
                                 " state")
    return _Bound.exact(-1.0, 1.0, f"{node.op} hidden state: products and mixes of tanh and sigmoid values")


def _layernorm(graph: _Graph, consts: _Constants, node: _Node, whole: bool, d: int):
    """((gamma, beta, eps) of a LayerNormalization over exactly the feature axis, None) or (None, why)."""
    not_folded = "R^d: a LayerNormalization feeds the head, but"
    if not whole:
        return None, f"{not_folded} reshaped or pooled on the way"
    has_beta = bool(node.input(2))
    if node.input(1) not in consts or (has_beta and node.input(2) not in consts):
        return None, f"{not_folded} with a scale or bias that is not a constant"
    axis, rank = node.integer("axis", -1), graph.rank(node.input(0))
    if axis != -1 and not (rank is not None and axis == rank - 1):
        return None, f"{not_folded} over axis {axis}, not only the feature axis"
    eps = node.number("epsilon", 1e-5)
    if not (math.isfinite(eps) and eps >= 0):  # eps < 0 lets |z| exceed sqrt(d)
        return None, f"{not_folded} with epsilon {eps!r}, which must be finite and >= 0"
    params = []
    for name in (node.input(1), node.input(2) if has_beta else None):
        if name is None:
            params.append(None)
            continue
        value = consts.get(name).astype(np.float64)
        if value.size not in (1, d):
            return None, f"{not_folded} with '{_show(name)}' of shape {value.shape}, not ({d},)"
        if not np.all(np.isfinite(value)):
            raise node.fault(f"has non-finite values in '{_show(name)}'")
        params.append(np.broadcast_to(value.ravel(), (d,)).copy())
    return (params[0], params[1], eps), "folded"


# --- token names ------------------------------------------------------------------------------


def _token_names(metadata: dict[str, str], n: int) -> tuple[list[str] | None, str | None]:
    """One name per class from the first name-list metadata key that fits, and a note on what was used."""
    limit = _NAME_TEXT_SLACK + _NAME_CHARS_PER_CLASS * n
    notes = []
    for key in _NAME_KEYS:
        if key not in metadata:
            continue
        text = metadata[key]
        if len(text) > limit:
            notes.append(f"metadata '{key}' is {len(text)} characters long, more than the {limit} allowed for"
                         f" {n} classes; not used")
            continue
        names, why = _parse_names(text, n)
        if names is None:
            notes.append(f"metadata '{key}' {why}; not used")
            continue
        if len(names) == n:
            return names, f"metadata '{key}'"
        if key == "character" and len(names) + 2 == n:  # PaddleOCR CTC: blank first, space last
            return ["<blank>", *names, " "], "metadata 'character' (PaddleOCR CTC: <blank> first, space last)"
        notes.append(f"metadata '{key}' has {len(names)} entries for {n} classes; not used")
    return None, ("; ".join(notes) or None)


def _parse_names(text: str, n: int) -> tuple[list[str] | None, str]:
    """(names, '') from a JSON list or {index: name} object, a small Python literal of either, or one name
    per line; (None, why) for a list or object that is not one of these."""
    start = text.lstrip()[:1]
    value = None
    if start in ("[", "{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            if len(text) <= _LITERAL_MAX_CHARS:
                try:
                    value = ast.literal_eval(text.strip())
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    value = None
    if isinstance(value, list):
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return None, "is a list of other things than names"
        return [_text(str(v)) for v in value], ""
    if isinstance(value, dict):
        try:
            index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return None, "is a mapping whose keys are not class indices"
        if set(index) != set(range(len(index))) or not all(isinstance(v, str) for v in index.values()):
            return None, "is a mapping that does not give one name to each index 0, 1, ..."
        return [_text(index[k]) for k in range(len(index))], ""
    return [_text(line) for line in text.splitlines()], ""


SOURCE = HeadSource("onnx", is_onnx, load_onnx)  # the registry entry
