"""Finding the classifier of an ONNX graph: the ``MatMul``/``Gemm`` by a constant weight behind a graph output,
the constant biases added to its output, and the weight and bias as arrays.

The head is found by walking back from a graph output through the ops that
cannot change an argmax (Softmax, LogSoftmax, Identity, Cast, a division or
multiplication by a positive constant) to ``MatMul(x, W) [+ b]`` or
``Gemm(x, B, C) [+ b]``, with W, B, C and b read from initializers or Constant
nodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import InputError
from .graph import AFTER_LOGITS, Constants, Graph, Node
from .text import show, shown_path


def _is_classifier(node: Node | None, consts: Constants) -> bool:
    """MatMul or Gemm of graph features by a constant 2-D weight."""
    if node is None or not node.is_op("MatMul", "Gemm"):
        return False
    shape = consts.shape(node.input(1))
    return shape is not None and len(shape) == 2 and node.input(0) not in consts


def find_head(graph: Graph, consts: Constants, head: str | None, path: Path):
    """(classifier node, the Adds of constants between it and the logits)."""
    candidates = [n for n in graph.nodes if _is_classifier(n, consts)]
    routes: dict[int, list] = {}
    for found in (_logits_path(graph, consts, out) for out in graph.outputs):
        if found is not None:
            routes.setdefault(id(found[0]), []).append(found)
    where = shown_path(path)
    listed = ", ".join(f"{show(n.input(1))} ({n.op})" for n in candidates[-8:]) or "none"
    if head is not None:
        for node in candidates:
            if head in (node.name, node.input(1), node.label, show(node.input(1))):
                if id(node) in routes:
                    return node, _bias_route(routes[id(node)], path)
                return node, _single_bias_add(graph, consts, node)
        raise InputError(f"{where}: no MatMul/Gemm with weight or node name '{show(head)}'; candidates: {listed}")
    if len(routes) == 1:  # e.g. both the logits and the softmax are outputs
        (found,) = routes.values()
        return found[0][0], _bias_route(found, path)
    what = "several outputs end in a classifier" if routes else "no graph output ends in MatMul/Gemm [+ Add]"
    raise InputError(f"{where}: {what} (through Softmax, LogSoftmax, Identity, Cast or a positive scale);"
                     f" pick the head with --weight NAME; candidates: {listed}")


def _bias_route(routes: list, path: Path) -> list[Node]:
    """The bias Adds of one classifier when several outputs reach it: those all outputs agree on, else those
    of the outputs that pass a Softmax, LogSoftmax or ArgMax (the prediction)."""
    for pool in (routes, [r for r in routes if r[2]]):
        kinds = {tuple(id(a) for a in adds): adds for _, adds, _ in pool}
        if len(kinds) == 1:
            return next(iter(kinds.values()))
    node = routes[0][0]
    raise InputError(f"{shown_path(path)}: the graph outputs add different biases to the output of"
                     f" {node.op} '{node.label}'; pick one output's model or fold the bias into one Add")


def _logits_path(graph: Graph, consts: Constants, output: str):
    """(classifier, [Add nodes of a constant bias], passed a Softmax/LogSoftmax/ArgMax) behind a graph output,
    through argmax-keeping ops; None when the output does not come from a classifier that way."""
    adds: list[Node] = []
    result = []
    decisive = []

    def step(node: Node, tensor: str):
        if _is_classifier(node, consts):
            result.append(node)
            return None
        if node.is_op("Add"):
            other = [i for i in node.inputs if i not in consts]
            if len(other) == 1 and len(node.inputs) == 2:  # logits + a constant: a bias
                adds.append(node)
                return other[0]
            return None
        if node.is_op(*AFTER_LOGITS) or (node.is_op("Div", "Mul") and _positive_scale(node, consts)):
            decisive.append(node.op in ("Softmax", "LogSoftmax", "ArgMax"))
            return node.input(1) if node.input(0) in consts else node.input(0)
        return None

    for _ in graph.walk(output, step):
        pass
    return (result[0], adds, any(decisive)) if result else None


def _single_bias_add(graph: Graph, consts: Constants, node: Node) -> list[Node]:
    """For a head picked by name: its one consumer, if that is an Add of a constant."""
    users = graph.consumers.get(node.outputs[0], [])
    if len(users) == 1 and users[0].is_op("Add") and len(users[0].inputs) == 2:
        other = [i for i in users[0].inputs if i != node.outputs[0]]
        if len(other) == 1 and other[0] in consts:
            return [users[0]]
    return []


def _positive_scale(node: Node, consts: Constants) -> bool:
    """A Mul or Div by a finite positive constant scalar (a temperature): it keeps every argmax."""
    values = [consts.scalar(i) for i in node.inputs[:2]]
    if node.op == "Div":
        return values[1] is not None and 0 < values[1] < np.inf and values[0] is None and node.input(0) not in consts
    known = [v for v in values if v is not None]
    return len(known) == 1 and 0 < known[0] < np.inf and sum(i in consts for i in node.inputs[:2]) == 1


def classifier(node: Node, adds: list[Node], consts: Constants, path: Path):
    """(weight [n, d], bias or None, feature tensor name, names of the tensors used)."""
    where = shown_path(path)
    stored = consts.get(node.input(1))  # checked: a number type, as many values as its shape says
    if not consts.is_float(node.input(1)):
        raise InputError(f"{where}: weight '{show(node.input(1))}' has dtype {consts.type_name(node.input(1))},"
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


def _vector(consts: Constants, name: str, n: int, path: Path) -> np.ndarray:
    """A bias broadcast along the classes: shape (n,), (1, n), (1, 1, n) or a scalar."""
    value = np.asarray(consts.get(name), dtype=np.float64)
    if value.size == 1:
        return np.full(n, float(value.reshape(())))
    if value.ndim == 0 or value.shape[-1] != n or value.size != n:
        raise InputError(f"{shown_path(path)}: bias '{show(name)}' has shape {value.shape}, expected ({n},)"
                         " to match the weight")
    return value.reshape(n)
