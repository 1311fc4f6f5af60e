"""Find the classifier of an ONNX model and the set of features that can reach it.

The head is found by walking back from a graph output through the ops that
cannot change an argmax (Softmax, LogSoftmax, Identity, Cast, a division or
multiplication by a positive constant) to ``MatMul(x, W) [+ b]`` or
``Gemm(x, B, C)``, with W, B and C read from initializers or Constant nodes.
The audit domain comes from what produces ``x``, looking through ops that only
move values around (Reshape, Transpose, Squeeze, ...), because every bound
below is the same for every coordinate:

=================================  ============================================
producer of the features           domain
=================================  ============================================
Relu, Softplus                     x >= 0
Sigmoid, HardSigmoid               0 <= x <= 1 (open sides: same verdicts)
Tanh, Softsign, LSTM / GRU output  -1 <= x <= 1
Clip(min, max)                     min <= x <= max
Elu(alpha)                         x >= -alpha
swish  x * Sigmoid(c x), c > 0     x >= -0.27846454276107374 / c  (*)
HardSwish, x * HardSigmoid(x)      x >= -0.375  (*)
Gelu                               x >= -0.16997120747990366  (*)
LayerNormalization (last axis)     folded in: the sqrt(d) ball of DESIGN.md 4
anything else                      R^d, and the report says why
=================================  ============================================

(*) widened by ``EVALUATION_ROOM`` (0.1 %): models compute these in float32 or
float16, and the rounded outputs dip below the exact minimum (measured: float32
Gelu reaches -0.16997123).

A closed box gives the same verdicts as the open one a Sigmoid or Tanh can
really produce: a witness wins by a strictly positive gap, and so does every
point close enough to it, some of which are inside.

Token names come from the model's metadata when a key such as ``character``
(PaddleOCR), ``labels``, ``classes`` or ``names`` lists exactly one per class.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np

from ..domains import Box, Unbounded
from ..errors import InputError
from ..layer import OutputLayer
from .base import LoadedLayer, SourceRequest
from .norms import fold_norm

SWISH_MIN = -0.2784645427610738  # min of x * sigmoid(x), at x = -1.2785, rounded outward
HARDSWISH_MIN = -0.375  # min of x * relu6(x + 3) / 6, at x = -1.5 (exact)
GELU_MIN = -0.16997120748  # min of x * Phi(x), at x = -0.7518, rounded outward
# A model evaluates these in float32 or float16, and may approximate them (Gelu's tanh form
# dips to -0.17004): measured float32 Gelu gives -0.16997123 < GELU_MIN. Every smooth bound is
# therefore widened by this relative room, which covers float16 rounding (2^-11) and the tanh form.
EVALUATION_ROOM = 1e-3

# Ops between the logits and a graph output that keep the argmax of every row.
_AFTER_LOGITS = {"Softmax", "LogSoftmax", "Identity", "Cast", "ArgMax"}
# Ops that move or copy values without changing them: uniform bounds pass through.
# (Cast is not one: a cast to float16 can round a bound such as swish's minimum outward.)
_SHAPE_OPS = {"Identity", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}
# Ops that keep each vector whole, so a LayerNorm's per-vector ball survives them.
_COPY_OPS = {"Identity", "Dropout"}
# Averages and maxima of values in a box stay in it (padding adds zeros: the box must hold 0).
_POOL_OPS = {"AveragePool", "GlobalAveragePool", "MaxPool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}
_NAME_KEYS = ("character", "labels", "classes", "names", "vocab", "id2label")


def is_onnx(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".onnx"


class _OnnxSource:
    """The registry entry: an ``.onnx`` file."""

    name = "onnx"

    def matches(self, path: Path) -> bool:
        return is_onnx(path)

    def load(self, path: Path, request: SourceRequest) -> LoadedLayer:
        return load_onnx(path, head=request.weight)


SOURCE = _OnnxSource()


def load_onnx(path: str | Path, head: str | None = None) -> LoadedLayer:
    """Read an ONNX model's classifier, its token names and the domain its features live in.

    Parameters
    ----------
    path : str or Path
        A ``.onnx`` file (external data files next to it are read as ONNX does).
    head : str, optional
        The weight tensor (initializer or Constant output) or the node name of
        the classifier, when the graph has no single obvious one.

    Returns
    -------
    LoadedLayer
        ``layer``/``domain`` ready for :func:`argmaxcheck.audit` (a folded
        LayerNorm where one feeds the head), ``raw`` the head as stored, and
        ``info`` naming the nodes, tensors and domain used.
    """
    path = Path(path)
    graph, metadata = _read(path)
    consts = _Constants(graph)
    producer = {out: node for node in graph.node for out in node.output if out}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    head_node = _find_head(graph, producer, consts, head, path)
    weight, bias, feature, names_used = _classifier(head_node, consumers, consts, path)
    tokens, token_note = _token_names(metadata, weight.shape[0])
    raw = OutputLayer.from_arrays(weight, bias, tokens, name=names_used["weight"], bias_name="bias",
                                  source_dtype=str(np.asarray(consts.get(names_used["weight"])).dtype))
    info = {"format": "onnx", "head_node": head_node.name or head_node.op_type, **names_used,
            "features": feature}
    if token_note:
        info["token_names"] = token_note
    node, tensor, passed = _feature_source(feature, producer)
    domain, why, norm = _infer_domain(node, tensor, set(passed) <= _COPY_OPS, weight.shape[1], producer, consts)
    if passed and set(passed) & _POOL_OPS and isinstance(domain, Box) and not (
            np.all(domain.lower <= 0) and np.all(domain.upper >= 0)):
        domain, why = Unbounded(), f"R^d: pooling may pad with zeros, which {why} excludes"
    elif passed:
        why = f"{why}; looked through {', '.join(dict.fromkeys(passed))}"
    info["feature_producer"] = node.op_type if node is not None else "graph input"
    if norm is not None:
        gamma, beta, eps = norm
        folded = fold_norm(raw, "layernorm", gamma, beta, raw.bias, eps)
        info["domain"] = f"{folded.info['domain']} ({why})"
        return LoadedLayer(folded.layer, folded.domain, info, raw, "layernorm", folded.basis, eps)
    info["domain"] = why
    return LoadedLayer(raw, domain, info, raw)


def _read(path: Path):
    try:
        import onnx  # noqa: PLC0415 - optional dependency, only for .onnx input
    except ImportError as exc:
        raise InputError(f"{path}: reading ONNX models needs the onnx package "
                         "(pip install 'argmaxcheck[onnx]')") from exc
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, missing external data, ...: all mean a bad file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a readable ONNX model ({first})") from exc
    if not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{path}: not a readable ONNX model (it holds no graph)")
    metadata = {p.key: p.value for p in model.metadata_props}
    return model.graph, metadata


class _Constants:
    """Tensors known without running the graph: initializers and Constant nodes (read on demand)."""

    def __init__(self, graph):
        self._protos = {t.name: t for t in graph.initializer}
        self._nodes = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
        self._cache: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self._protos or name in self._nodes

    def get(self, name: str) -> np.ndarray | None:
        if name in self._cache:
            return self._cache[name]
        from onnx import helper, numpy_helper  # noqa: PLC0415

        value = None
        if name in self._protos:
            value = numpy_helper.to_array(self._protos[name])
        elif name in self._nodes:
            attr = self._nodes[name].attribute[0]
            value = numpy_helper.to_array(attr.t) if attr.name == "value" else np.asarray(
                helper.get_attribute_value(attr))
        if value is not None:
            self._cache[name] = value
        return value

    def shape(self, name: str) -> tuple[int, ...] | None:
        if name in self._protos:
            return tuple(self._protos[name].dims)
        if name in self._nodes:
            attr = self._nodes[name].attribute[0]
            return tuple(attr.t.dims) if attr.name == "value" else np.shape(self.get(name))
        return None

    def scalar(self, name: str) -> float | None:
        value = self.get(name) if name in self else None
        if value is None or value.size != 1:
            return None
        return float(value.reshape(()))


def _attr(node, name: str, default=None):
    from onnx import helper  # noqa: PLC0415

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_classifier(node, consts: _Constants) -> bool:
    """MatMul or Gemm of graph features by a constant 2-D weight."""
    if node is None or node.op_type not in ("MatMul", "Gemm"):
        return False
    shape = consts.shape(node.input[1])
    return shape is not None and len(shape) == 2 and node.input[0] not in consts


def _find_head(graph, producer, consts: _Constants, head: str | None, path: Path):
    candidates = [n for n in graph.node if _is_classifier(n, consts)]
    if head is not None:
        for node in candidates:
            if head in (node.name, node.input[1]):
                return node
        listed = ", ".join(f"{n.input[1]} ({n.op_type})" for n in candidates[-8:]) or "none"
        raise InputError(f"{path}: no MatMul/Gemm with weight or node name '{head}'; candidates: {listed}")
    found = []
    for output in graph.output:
        node = producer.get(output.name)
        while node is not None:
            if _is_classifier(node, consts):
                found.append(node)
                break
            if node.op_type == "Add":
                inner = next((producer[i] for i in node.input if _is_classifier(producer.get(i), consts)), None)
                if inner is not None:
                    node = inner
                    continue
            if node.op_type in _AFTER_LOGITS or (node.op_type in ("Div", "Mul") and _positive_scale(node, consts)):
                node = producer.get(node.input[0]) if node.input[0] not in consts else producer.get(node.input[1])
                continue
            break
    unique = list({id(n): n for n in found}.values())  # e.g. both the logits and the softmax are outputs
    if len(unique) == 1:
        return unique[0]
    listed = ", ".join(f"{n.input[1]} ({n.op_type})" for n in candidates[-8:]) or "none"
    what = "several outputs end in a classifier" if found else "no graph output ends in MatMul/Gemm [+ Add]"
    raise InputError(f"{path}: {what} (through Softmax, LogSoftmax, Identity, Cast or a positive scale);"
                     f" pick the head with --weight NAME; candidates: {listed}")


def _positive_scale(node, consts: _Constants) -> bool:
    """A Mul or Div by a positive constant scalar (a temperature): it keeps every argmax."""
    values = [consts.scalar(i) for i in node.input]
    if node.op_type == "Div":
        return values[1] is not None and values[1] > 0 and values[0] is None
    return sum(v is not None for v in values) == 1 and all(v is None or v > 0 for v in values)


def _classifier(node, consumers, consts: _Constants, path: Path):
    """(weight [n, d], bias or None, feature tensor name, names of the tensors used)."""
    raw = consts.get(node.input[1])
    if not np.issubdtype(raw.dtype, np.floating):
        raise InputError(f"{path}: weight '{node.input[1]}' has dtype {raw.dtype}, expected floating point")
    b_mat = raw.astype(np.float64)
    names = {"weight": node.input[1], "bias": None}
    bias = None
    if node.op_type == "Gemm":
        if _attr(node, "transB", 0):
            b_mat = b_mat.T
        weight = float(_attr(node, "alpha", 1.0)) * b_mat.T
        if len(node.input) > 2 and node.input[2]:
            if node.input[2] not in consts:
                raise InputError(f"{path}: Gemm '{node.name}' takes its C input from the graph, not a constant")
            bias = float(_attr(node, "beta", 1.0)) * _vector(consts.get(node.input[2]), weight.shape[0],
                                                               node.input[2], path)
            names["bias"] = node.input[2]
    else:
        weight = b_mat.T
        users = consumers.get(node.output[0], [])
        consumer = users[0] if len(users) == 1 else None
        if consumer is not None and consumer.op_type == "Add":
            other = [i for i in consumer.input if i != node.output[0]]
            if len(other) == 1 and other[0] in consts:
                bias = _vector(consts.get(other[0]), weight.shape[0], other[0], path)
                names["bias"] = other[0]
    return weight, bias, node.input[0], names


def _vector(value: np.ndarray, n: int, name: str, path: Path) -> np.ndarray:
    """A bias broadcast along the classes: shape (n,), (1, n), (1, 1, n) or a scalar."""
    value = np.asarray(value, dtype=np.float64)
    if value.size == 1:
        return np.full(n, float(value.reshape(())))
    if value.shape[-1] != n or value.size != n:
        raise InputError(f"{path}: bias '{name}' has shape {value.shape}, expected ({n},) to match the weight")
    return value.reshape(n)


def _feature_source(feature: str, producer):
    """(node computing the features, its output used, ops looked through on the way).

    Looks through ops that only move values (Reshape, Transpose, ...) and
    through pooling: an average or maximum of values in a box stays in it.
    """
    tensor, passed = feature, []
    node = producer.get(tensor)
    while node is not None and (node.op_type in _SHAPE_OPS or node.op_type in _POOL_OPS):
        passed.append(node.op_type)
        tensor = node.input[0]
        node = producer.get(tensor)
    return node, tensor, passed


def _infer_domain(node, tensor: str, whole: bool, d: int, producer, consts: _Constants):
    """(domain, explanation, LayerNorm (gamma, beta, eps) to fold or None)."""
    if node is None:
        return Unbounded(), "R^d: the features are a graph input", None
    op = node.op_type
    if op in ("Relu", "Softplus"):
        return Box(0.0, np.inf), f"x >= 0 ({op} output)", None
    if op in ("Sigmoid", "HardSigmoid"):
        return Box(0.0, 1.0), f"0 <= x <= 1 ({op} output)", None
    if op in ("Tanh", "Softsign"):
        return Box(-1.0, 1.0), f"-1 <= x <= 1 ({op} output)", None
    if op in ("LSTM", "GRU") and tensor in node.output[:2] and _recurrent_bounded(node):
        return Box(-1.0, 1.0), f"-1 <= x <= 1 ({op} hidden state: o * tanh(c))", None
    if op == "Clip":
        lo, hi = _clip_bounds(node, consts)
        if lo is not None or hi is not None:
            lower = -np.inf if lo is None else lo
            upper = np.inf if hi is None else hi
            return Box(lower, upper), f"{lower} <= x <= {upper} (Clip output)", None
    smooth = None
    if op == "Elu":
        smooth = -float(_attr(node, "alpha", 1.0)), "Elu output"
    elif op == "HardSwish":
        smooth = HARDSWISH_MIN, "HardSwish output"
    elif op == "Gelu":
        smooth = GELU_MIN, "Gelu output, min of x Phi(x)"
    elif op == "Mul":
        smooth = _gated_linear_min(node, producer, consts)
    if smooth is not None:
        lower = smooth[0] * (1 + EVALUATION_ROOM) if smooth[0] < 0 else smooth[0]
        return Box(lower, np.inf), (f"x >= {lower!r} ({smooth[1]}: exact minimum {smooth[0]!r},"
                                    f" widened by {EVALUATION_ROOM:g} for floating-point evaluation)"), None
    if op == "LayerNormalization":
        norm = _layernorm(node, whole, d, consts)
        if norm is not None:
            return None, "LayerNormalization output folded in", norm
        return Unbounded(), ("R^d: a LayerNormalization feeds the head, but not over exactly the feature axis"
                             " or with parameters that are not constants"), None
    return Unbounded(), f"R^d: no bound is known for the output of {op}", None


def _layernorm(node, whole: bool, d: int, consts: _Constants):
    """(gamma, beta, eps) of a LayerNormalization over exactly the feature axis, else None."""
    if not whole or len(node.input) < 2 or node.input[1] not in consts:
        return None
    has_beta = len(node.input) > 2 and bool(node.input[2])
    if has_beta and node.input[2] not in consts:
        return None
    gamma = consts.get(node.input[1]).astype(np.float64)
    beta = consts.get(node.input[2]).astype(np.float64) if has_beta else None
    # Normalised axes run from `axis` to the last; the scale has their shape. Over the last axis
    # alone means a scale of d values (or one, broadcast); axis -1 says so directly.
    if int(_attr(node, "axis", -1)) != -1 and gamma.size != d:
        return None
    if gamma.size not in (1, d) or (beta is not None and beta.size not in (1, d)):
        return None
    gamma = np.broadcast_to(gamma.ravel(), (d,)).copy()
    beta = None if beta is None else np.broadcast_to(beta.ravel(), (d,)).copy()
    return gamma, beta, float(_attr(node, "epsilon", 1e-5))


def _recurrent_bounded(node) -> bool:
    """Hidden states in (-1, 1): default activations, and for a GRU (a running convex
    combination of tanh outputs and the previous state) no initial state."""
    acts = [a.decode() if isinstance(a, bytes) else a for a in (_attr(node, "activations", []) or [])]
    if acts != [a for a in acts if a.lower() in ("sigmoid", "tanh")] or _attr(node, "clip") is not None:
        return False
    has_initial = len(node.input) > 5 and bool(node.input[5])  # initial_h
    return node.op_type == "LSTM" or not has_initial


def _clip_bounds(node, consts: _Constants):
    lo, hi = _attr(node, "min"), _attr(node, "max")
    if len(node.input) > 1 and node.input[1]:
        lo = consts.scalar(node.input[1])
    if len(node.input) > 2 and node.input[2]:
        hi = consts.scalar(node.input[2])
    return (None if lo is None else float(lo)), (None if hi is None else float(hi))


def _gated_linear_min(node, producer, consts: _Constants):
    """x * Sigmoid(c x) (swish) or x * HardSigmoid(x) (hard swish): (lower bound, description)."""
    for x, gate_name in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
        gate = producer.get(gate_name)
        if gate is None:
            continue
        if gate.op_type == "Sigmoid":
            inner = gate.input[0]
            if inner == x:
                return SWISH_MIN, "swish x * sigmoid(x)"
            scale_node = producer.get(inner)
            if scale_node is not None and scale_node.op_type == "Mul" and x in scale_node.input:
                other = [i for i in scale_node.input if i != x]
                c = consts.scalar(other[0]) if len(other) == 1 else None
                if c is not None and c > 0:
                    return float(np.nextafter(SWISH_MIN / c, -np.inf)), f"swish x * sigmoid({c:g} x)"
        if gate.op_type == "HardSigmoid" and gate.input[0] == x:
            alpha, beta = float(_attr(gate, "alpha", 0.2)), float(_attr(gate, "beta", 0.5))
            if alpha > 0 and 0 < beta < 2:  # the minimum sits where the gate is linear, 0 < beta/2 < 1
                return float(np.nextafter(-beta * beta / (4 * alpha), -np.inf)), "hard swish x * HardSigmoid(x)"
    return None


def _token_names(metadata: dict[str, str], n: int) -> tuple[list[str] | None, str | None]:
    for key in _NAME_KEYS:
        if key not in metadata:
            continue
        names = _parse_names(metadata[key])
        if names is None:
            continue
        if len(names) == n:
            return names, f"metadata '{key}'"
        if key == "character" and len(names) + 2 == n:  # PaddleOCR CTC: blank first, space last
            return ["<blank>", *names, " "], "metadata 'character' (PaddleOCR CTC: <blank> first, space last)"
        return None, f"metadata '{key}' has {len(names)} entries for {n} classes; not used"
    return None, None


def _parse_names(text: str) -> list[str] | None:
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, list):
            return [str(v) for v in value]
        if isinstance(value, dict):
            try:
                keys = sorted(value, key=int)
            except (TypeError, ValueError):
                return None
            return [str(value[k]) for k in keys]
    return text.splitlines()
