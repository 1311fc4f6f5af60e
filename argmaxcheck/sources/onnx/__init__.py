"""The ONNX source: find the classifier of an ONNX model and the set of features that can reach it.

The parts, each readable alone: ``graph.py`` reads the file safely (a regular
file, protobuf parsing, checked nodes, constants and external data);
``head.py`` finds the classifier (the ``MatMul``/``Gemm`` and its biases);
``bounds.py`` infers the domain the features' producer implies (the table of
activations is there); ``names.py`` reads token names from the metadata;
``text.py`` decodes every name from the file for messages and reports.

Everything in the file is untrusted: the graph must be acyclic, each op the
loader interprets must have its inputs and attributes, each tensor it reads
must hold as many numbers as its shape says, and external data must be a
regular file inside the model's folder, reached without symlinks. Names are
decoded so that every string leaving this package is valid, printable text.
"""

from __future__ import annotations

from pathlib import Path

from ...layer import OutputLayer
from ..base import HeadSource, LoadedLayer
from ..norms import fold_norm
from .bounds import (
    COPY_OPS,
    EVALUATION_ROOM,
    GELU_MIN,
    GELU_TANH_MIN,
    HARDSWISH_MIN,
    MISH_MIN,
    SWISH_MIN,
    feature_source,
    infer_domain,
    through,
)
from .graph import Constants, Graph, metadata, read_model
from .head import classifier, find_head
from .names import token_names
from .text import show

__all__ = ["EVALUATION_ROOM", "GELU_MIN", "GELU_TANH_MIN", "HARDSWISH_MIN", "MISH_MIN", "SOURCE", "SWISH_MIN",
           "is_onnx", "load_onnx"]


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
    model = read_model(path)
    graph = Graph(model, path)
    consts = Constants(model.graph, graph, path)
    head_node, adds = find_head(graph, consts, head, path)
    weight, bias, feature, names_used = classifier(head_node, adds, consts, path)
    tokens, token_note = token_names(metadata(model), weight.shape[0])
    raw = OutputLayer.from_arrays(weight, bias, tokens, name=show(names_used["weight"]),
                                  bias_name=show(names_used["bias"] or "bias"),
                                  source_dtype=str(consts.get(names_used["weight"]).dtype))
    info = {"format": "onnx", "head_node": head_node.label, "weight": show(names_used["weight"]),
            "bias": None if names_used["bias"] is None else show(names_used["bias"]), "features": show(feature)}
    if token_note:
        info["token_names"] = token_note
    node, tensor, passed = feature_source(graph, consts, feature)
    whole = all(p.op in COPY_OPS for p in passed)
    bound, norm = infer_domain(graph, consts, node, tensor, whole, weight.shape[1])
    if bound is not None:
        for op in reversed(passed):  # forward order: from the producer to the head
            bound = through(op, bound)
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


SOURCE = HeadSource("onnx", is_onnx, load_onnx)  # the registry entry
