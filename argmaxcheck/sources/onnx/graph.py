"""Reading an ONNX file safely: the model without its external data, the graph's nodes with checked inputs and
attributes, and the constants (initializers and Constant nodes), each read on first use.

Everything in the file is untrusted: it must be a regular file, the graph must be acyclic, each op the loader
interprets must have its inputs and attributes, each tensor it reads must hold as many numbers as its shape says,
and external data must be a regular file inside the model's folder, reached without symlinks.
"""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import numpy as np

from ...errors import InputError
from .text import first_line, free_text, name_key, show, shown_path

# The ops below are read with their ONNX meaning only in the standard domain: a custom domain
# (com.microsoft, ...) may reuse a name for another function.
STANDARD_DOMAINS = ("", "ai.onnx")
# Ops between the logits and a graph output that keep the argmax of every row.
AFTER_LOGITS = {"Softmax", "LogSoftmax", "Identity", "Cast", "ArgMax"}
# Ops that move or copy values without changing them: uniform bounds pass through.
# (Cast is not one: a cast to float16 can round a bound such as swish's minimum outward.)
SHAPE_OPS = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
# Averages, maxima and minima of values in a box stay in it, up to padding (see bounds.through).
POOL_OPS = {"AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean", "ReduceMax",
            "ReduceMin"}
# Fewest inputs (non-empty, in order) each interpreted op needs; checked for every node before any walk.
_REQUIRED_INPUTS = {"MatMul": 2, "Gemm": 2, "Add": 2, "Mul": 2, "Div": 2, "PRelu": 2, "LayerNormalization": 2,
                    "LSTM": 3, "GRU": 3, "Constant": 0}


def read_model(path: Path):
    """The ModelProto, without external data (read per tensor, when needed, by :class:`Constants`)."""
    try:
        import onnx  # noqa: PLC0415 - optional dependency, only for .onnx input
    except ImportError as exc:
        raise InputError(f"{shown_path(path)}: reading ONNX models needs the onnx package "
                         "(pip install 'argmaxcheck[onnx]')") from exc
    data = _regular_file_bytes(path)
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf DecodeError, ...: all mean a bad file
        raise InputError(f"{shown_path(path)}: not a readable ONNX model ({first_line(exc)})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{shown_path(path)}: not a readable ONNX model (it holds no graph)")
    return model


def _regular_file_bytes(path: Path) -> bytes:
    """The bytes of a regular file; a folder, FIFO or device is refused without blocking on it."""
    where = shown_path(path)
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


def metadata(model) -> dict[str, str]:
    return {free_text(p.key): free_text(p.value) for p in model.metadata_props}


# --- the graph ---------------------------------------------------------------------------------


class Node:
    """One node of the main graph, with decoded names and checked attribute access."""

    def __init__(self, proto, path: Path):
        self.proto = proto
        self.op = show(name_key(proto.op_type))
        self.domain = name_key(proto.domain)
        self.name = name_key(proto.name)
        self.inputs = tuple(name_key(i) for i in proto.input)
        self.outputs = tuple(name_key(o) for o in proto.output)
        self._path = path

    @property
    def label(self) -> str:
        """What messages call the node: its name, else its op type."""
        return show(self.name) if self.name else self.op

    def is_op(self, *ops: str) -> bool:
        return self.op in ops and self.domain in STANDARD_DOMAINS

    def input(self, i: int) -> str:
        """Input ``i``, or '' where it is left out."""
        return self.inputs[i] if i < len(self.inputs) else ""

    def fault(self, what: str) -> InputError:
        return InputError(f"{shown_path(self._path)}: {self.op} node '{self.label}' {what}")

    def _attribute(self, name: str):
        for a in self.proto.attribute:
            if name_key(a.name) == name:
                return a
        return None

    def _typed(self, name: str, kind: str, what: str):
        """Attribute ``name`` when it is there (None otherwise), refused in one line unless of type ``kind``."""
        a = self._attribute(name)
        if a is not None and a.type != getattr(a, kind):
            raise self.fault(f"has attribute '{name}' of type {a.type}, expected {what}")
        return a

    def number(self, name: str, default: float) -> float:
        a = self._typed(name, "FLOAT", "a float")
        return float(default) if a is None else float(a.f)

    def integer(self, name: str, default: int) -> int:
        a = self._typed(name, "INT", "an integer")
        return int(default) if a is None else int(a.i)

    def integers(self, name: str) -> list[int]:
        a = self._typed(name, "INTS", "a list of integers")
        return [] if a is None else [int(v) for v in a.ints]

    def numbers(self, name: str) -> list[float]:
        a = self._typed(name, "FLOATS", "a list of floats")
        return [] if a is None else [float(v) for v in a.floats]

    def string(self, name: str, default: str) -> str:
        a = self._typed(name, "STRING", "a string")
        return default if a is None else free_text(a.s)

    def strings(self, name: str) -> list[str]:
        a = self._typed(name, "STRINGS", "a list of strings")
        return [] if a is None else [free_text(v) for v in a.strings]

    def has(self, name: str) -> bool:
        return self._attribute(name) is not None


class Graph:
    """The main graph's nodes, indexed by the tensors they produce; checked acyclic once, here."""

    def __init__(self, model, path: Path):
        self.path = path
        self.nodes = [Node(p, path) for p in model.graph.node]
        self.outputs = [name_key(o.name) for o in model.graph.output]
        self.opset = next((int(o.version) for o in model.opset_import if name_key(o.domain) in STANDARD_DOMAINS), 0)
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        for node in self.nodes:
            _check_arity(node)
            for out in node.outputs:
                if not out:
                    continue
                if out in self.producer:
                    raise node.fault(f"writes tensor '{show(out)}', which node '{self.producer[out].label}'"
                                     " writes too (an ONNX graph assigns each tensor once)")
                self.producer[out] = node
            for name in node.inputs:
                self.consumers.setdefault(name, []).append(node)
        self._ranks = {}
        for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
            tt = vi.type.tensor_type
            if vi.type.HasField("tensor_type") and tt.HasField("shape"):
                self._ranks[name_key(vi.name)] = len(tt.shape.dim)
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


def _check_arity(node: Node) -> None:
    """The inputs and attributes an interpreted op cannot do without (a malformed file lacks them)."""
    if node.domain not in STANDARD_DOMAINS:
        return
    needed = _REQUIRED_INPUTS.get(node.op, 1 if node.op in (AFTER_LOGITS | SHAPE_OPS | POOL_OPS) else 0)
    missing = [i for i in range(needed) if not node.input(i)]
    if missing:
        raise node.fault(f"has {sum(bool(i) for i in node.inputs)} input(s); it needs {needed}"
                         f" (input {missing[0]} is missing)")
    if node.op == "Constant":
        if len(node.outputs) != 1 or not node.outputs[0]:
            raise node.fault(f"has {len(node.outputs)} outputs, expected 1")
        values = [a for a in node.proto.attribute if name_key(a.name).startswith(("value", "sparse_value"))]
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


class Constants:
    """Tensors known without running the graph: initializers and Constant nodes, each read, checked
    and converted on first use (external data included), so only what the audit needs is read."""

    def __init__(self, graph_proto, graph: Graph, path: Path):
        self._path = path
        self._protos: dict[str, object] = {}
        for t in graph_proto.initializer:
            key = name_key(t.name)
            if key in self._protos:
                raise InputError(f"{shown_path(path)}: initializer '{show(key)}' is defined twice")
            self._protos[key] = t
        self._nodes: dict[str, Node] = {}
        for node in graph.nodes:
            if node.is_op("Constant"):
                out = node.outputs[0]
                if out in self._protos:
                    raise node.fault(f"writes '{show(out)}', which is also an initializer")
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
            what = f"tensor '{show(name)}'"
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

        where = shown_path(self._path)
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
            raise InputError(f"{where}: {what} cannot be decoded ({first_line(exc)})") from exc

    def _external(self, proto, nbytes: int, what: str):
        """A copy of ``proto`` with its external bytes loaded, after checking where they come from."""
        from onnx import TensorProto  # noqa: PLC0415
        from onnx.external_data_helper import load_external_data_for_tensor  # noqa: PLC0415

        where = shown_path(self._path)
        entries = {name_key(e.key): name_key(e.value) for e in proto.external_data}
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
                             f" '{show(location)}', which has {size}")
        copy = TensorProto()
        copy.CopyFrom(proto)
        del copy.external_data[:]
        for key, value in (("location", location), ("offset", str(offset)), ("length", str(nbytes))):
            copy.external_data.add(key=key, value=value)
        try:
            load_external_data_for_tensor(copy, str(self._path.parent))
        except Exception as exc:  # onnx's own checks (hard links, races): still a file we refuse
            raise InputError(f"{where}: {what}: external data '{show(location)}' refused ({first_line(exc)})"
                             ) from exc
        return copy


def _external_file(folder: Path, location: str, what: str) -> Path:
    """The regular file ``location`` names inside ``folder``, reached without symlinks or ``..``.

    Checked before onnx opens anything: an absolute path, a ``..`` component or
    a symlink could read any file on the machine, and a FIFO would block forever.
    """
    shown = show(location)
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
