"""The domain an ONNX classifier's features live in, from the op that produces them.

The audit domain comes from what produces the features ``x``, looking through ops
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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...domains import Box, Unbounded
from .graph import POOL_OPS, SHAPE_OPS, STANDARD_DOMAINS, Constants, Graph, Node
from .text import show

SWISH_MIN = -0.2784645427610738  # min of x * sigmoid(x), at x = -1.2785, rounded outward
HARDSWISH_MIN = -0.375  # min of x * relu6(x + 3) / 6, at x = -1.5 (exact)
GELU_MIN = -0.16997120748  # min of x * Phi(x), at x = -0.7518, rounded outward
GELU_TANH_MIN = -0.17004075058  # min of Gelu's tanh form, at x = -0.7525, rounded outward
MISH_MIN = -0.30884341302  # min of x * tanh(softplus(x)), at x = -1.1924, rounded outward
# A model evaluates these in float32 or float16, and may approximate them: measured float32 Gelu
# gives -0.16997123 < GELU_MIN. Every smooth bound is therefore widened by this relative room,
# which covers float16 rounding (2^-11) of the values and of the attributes.
EVALUATION_ROOM = 1e-3
# Ops that keep each vector whole, so a LayerNorm's per-vector ball survives them.
COPY_OPS = {"Identity", "Dropout"}
# Pools that average (a rounded average can land an ulp outside the values' range).
_AVERAGING = {"AveragePool", "GlobalAveragePool", "ReduceMean"}


@dataclass(frozen=True)
class Bound:
    """Bounds that hold for every coordinate of the features, and why."""

    lower: float
    upper: float
    why: str

    @classmethod
    def everything(cls, why: str) -> Bound:
        return cls(-np.inf, np.inf, why)

    @classmethod
    def smooth(cls, lower: float, upper: float, what: str) -> Bound:
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
    def exact(cls, lower: float, upper: float, what: str) -> Bound:
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


def feature_source(graph: Graph, consts: Constants, feature: str):
    """(node computing the features or None, its output used, pass-through nodes met on the way back).

    Looks through ops that only move values (Reshape, Transpose, ...) and
    through pooling, following each one's data input.
    """
    passed: list[Node] = []

    def step(node: Node, tensor: str):
        if node.is_op(*SHAPE_OPS, *POOL_OPS) and _passes_values(node, tensor, consts):
            passed.append(node)
            return node.input(0)
        return None

    producer, used = None, feature
    for node, tensor in graph.walk(feature, step):
        producer, used = node, tensor
    if producer is not None and passed and passed[-1] is producer:  # the walk left the graph through it
        return None, producer.input(0), passed
    return producer, used, passed


def _passes_values(node: Node, tensor: str, consts: Constants) -> bool:
    """Whether ``tensor`` carries the node's data input's values (not a mask or pooling indices)."""
    if tensor != node.outputs[0]:
        return False
    if node.op == "Dropout" and node.input(2):  # training_mode: scales and zeroes unless constant false
        mode = consts.scalar(node.input(2))
        if mode is None or mode != 0:
            return False
    return True


def infer_domain(graph: Graph, consts: Constants, node: Node | None, tensor: str, whole: bool, d: int):
    """(bound, LayerNorm (gamma, beta, eps) to fold): exactly one of them is None."""
    if node is None:
        return Bound.everything("R^d: the features are a graph input (or a constant)"), None
    if node.domain not in STANDARD_DOMAINS:
        return Bound.everything(f"R^d: {node.op} is a custom op (domain '{show(node.domain)}')"), None
    if node.op in ("LSTM", "GRU"):
        return _recurrent_bound(node, tensor), None
    if tensor != node.outputs[0]:
        return Bound.everything(f"R^d: the features are output '{show(tensor)}' of {node.op}, not its values"), None
    if node.op == "LayerNormalization":
        norm, why = _layernorm(graph, consts, node, whole, d)
        return (None, norm) if norm is not None else (Bound.everything(why), None)
    rule = _ACTIVATIONS.get(node.op)
    if rule is None:
        return Bound.everything(f"R^d: no bound is known for the output of {node.op}"), None
    return rule(node, graph, consts), None


def _finite_attributes(node: Node, defaults: dict[str, float]) -> dict[str, float] | str:
    """The node's float attributes, or the reason for R^d when one is NaN or infinite."""
    values = {name: node.number(name, default) for name, default in defaults.items()}
    bad = [f"{name}={value!r}" for name, value in values.items() if not math.isfinite(value)]
    if bad:
        return f"R^d: {node.op} with {', '.join(bad)} has no finite output range"
    return values


def _relu(node, graph, consts) -> Bound:
    return Bound.exact(0.0, np.inf, f"{node.op} output")


def _unit(node, graph, consts) -> Bound:
    if node.op == "HardSigmoid":  # max(0, min(1, a x + b)): in [0, 1] for every finite a and b
        attrs = _finite_attributes(node, {"alpha": 0.2, "beta": 0.5})
        if isinstance(attrs, str):
            return Bound.everything(attrs)
    return Bound.exact(0.0, 1.0, f"{node.op} output")


def _symmetric_unit(node, graph, consts) -> Bound:
    return Bound.exact(-1.0, 1.0, f"{node.op} output")


def _leaky_relu(node, graph, consts) -> Bound:
    """x for x >= 0, a x below: a <= 0 keeps the output >= 0; a > 0 reaches every negative number."""
    attrs = _finite_attributes(node, {"alpha": 0.01})
    if isinstance(attrs, str):
        return Bound.everything(attrs)
    if attrs["alpha"] > 0:
        return Bound.everything(f"R^d: LeakyRelu with alpha={attrs['alpha']!r} > 0 takes every value")
    return Bound.exact(0.0, np.inf, f"LeakyRelu output, alpha={attrs['alpha']!r} <= 0")


def _prelu(node, graph, consts) -> Bound:
    slope = consts.get(node.input(1)) if node.input(1) in consts else None
    if slope is None:
        return Bound.everything("R^d: PRelu's slope comes from the graph, not a constant")
    slope = slope.astype(np.float64)
    if slope.size and np.all(np.isfinite(slope)) and np.all(slope <= 0):
        return Bound.exact(0.0, np.inf, "PRelu output, every slope <= 0")
    return Bound.everything("R^d: PRelu has a slope > 0 (or not finite), so it takes every value")


def _thresholded_relu(node, graph, consts) -> Bound:
    """x where x > a, else 0: the values are {0} and (a, inf)."""
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return Bound.everything(attrs)
    return Bound.exact(min(0.0, attrs["alpha"]), np.inf, f"ThresholdedRelu output, alpha={attrs['alpha']!r}")


def _elu(node, graph, consts) -> Bound:
    """Elu: x for x > 0, a (e^x - 1) below, which lies in (-a, 0) for a > 0 and in [0, -a) for a <= 0.
    Celu: x for x > 0, a (e^(x/a) - 1) below; for a < 0 that falls without bound, for a = 0 it is NaN."""
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return Bound.everything(attrs)
    alpha = attrs["alpha"]
    if node.op == "Celu" and alpha <= 0:
        return Bound.everything(f"R^d: Celu with alpha={alpha!r} <= 0 is unbounded below (or NaN at 0)")
    if alpha <= 0:
        return Bound.exact(0.0, np.inf, f"{node.op} output, alpha={alpha!r} <= 0")
    return Bound.smooth(-alpha, np.inf, f"{node.op} output, alpha={alpha!r}")


def _selu(node, graph, consts) -> Bound:
    """g x for x > 0 and g a (e^x - 1) below, which lies between 0 and -a g."""
    attrs = _finite_attributes(node, {"alpha": 1.67326319217681884765625, "gamma": 1.05070102214813232421875})
    if isinstance(attrs, str):
        return Bound.everything(attrs)
    alpha, gamma = attrs["alpha"], attrs["gamma"]
    what = f"Selu output, alpha={alpha!r}, gamma={gamma!r}"
    if gamma == 0:
        return Bound.exact(0.0, 0.0, what)
    edge = -alpha * gamma  # the limit of the negative branch
    if gamma > 0:
        return Bound.smooth(min(0.0, edge), np.inf, what)
    return Bound.smooth(-np.inf, max(0.0, edge), what)


def _gelu(node, graph, consts) -> Bound:
    form = node.string("approximate", "none")
    if form == "none":
        return Bound.smooth(GELU_MIN, np.inf, "Gelu output, min of x Phi(x)")
    if form == "tanh":
        return Bound.smooth(GELU_TANH_MIN, np.inf, "Gelu output (tanh form)")
    return Bound.everything(f"R^d: Gelu with approximate='{show(form)}' is not an ONNX form")


def _fixed_minimum(node, graph, consts) -> Bound:
    minimum = {"HardSwish": HARDSWISH_MIN, "Mish": MISH_MIN}[node.op]
    return Bound.smooth(minimum, np.inf, f"{node.op} output")


def _swish(node, graph, consts) -> Bound:
    attrs = _finite_attributes(node, {"alpha": 1.0})
    if isinstance(attrs, str):
        return Bound.everything(attrs)
    return _scaled_swish(attrs["alpha"], f"Swish output, alpha={attrs['alpha']!r}")


def _scaled_swish(c: float, what: str) -> Bound:
    """x sigmoid(c x) = swish(c x) / c: for c > 0 at least SWISH_MIN / c; for c < 0 it is the mirror image,
    x sigmoid(c x) = -(y sigmoid(|c| y)) at y = -x, so at most -SWISH_MIN / |c|; for c = 0 it is x / 2."""
    if c == 0 or not math.isfinite(c):
        return Bound.everything(f"R^d: {what} takes every value")
    edge = SWISH_MIN / abs(c)
    if c > 0:
        return Bound.smooth(float(np.nextafter(edge, -np.inf)), np.inf, what)
    return Bound.smooth(-np.inf, float(np.nextafter(-edge, np.inf)), what)


def _clip(node, graph, consts) -> Bound:
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
            return Bound.everything(f"R^d: Clip with {name}=nan outputs NaN")
    if (lo is not None and lo == np.inf) or (hi is not None and hi == -np.inf):
        return Bound.everything("R^d: Clip's bounds make every output infinite")
    upper = hi if hi is not None else np.inf
    lower = lo if lo is not None and (hi is not None or not hi_given) else -np.inf
    if lower > upper:  # ONNX: min > max sets every output to max
        return Bound.exact(upper, upper, f"Clip output, min {lower!r} > max {upper!r}: every value is max")
    unknown = [n for n, given, v in (("min", lo_given, lo), ("max", hi_given, hi)) if given and v is None]
    what = "Clip output" + (f"; its {' and '.join(unknown)} come from the graph" if unknown else "")
    if lower == -np.inf and upper == np.inf:
        return Bound.everything(f"R^d: no bound is known for {what}")
    return Bound.exact(lower, upper, what)


def _gated(node, graph, consts) -> Bound:
    found = _gated_linear(node, graph, consts)
    return found if found is not None else Bound.everything("R^d: no bound is known for the output of Mul")


def _gated_linear(node: Node, graph: Graph, consts: Constants) -> Bound | None:
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
                return Bound.everything(attrs)
            return _hard_gate(attrs["alpha"], attrs["beta"])
    return None


def _hard_gate(alpha: float, beta: float) -> Bound:
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
        return Bound.exact(0.0, 0.0, what) if k == 0 else Bound.everything(f"R^d: {what} takes every value")
    a = abs(alpha)
    if beta <= 0:
        edge = 0.0
    elif beta <= 2:
        edge = float(np.nextafter(-beta * beta / (4 * a), -np.inf))
    else:
        edge = float(np.nextafter((1 - beta) / a, -np.inf))
    if edge == -np.inf:
        return Bound.everything(f"R^d: {what} has no finite minimum")
    if alpha > 0:
        return Bound.smooth(edge, np.inf, what) if edge < 0 else Bound.exact(0.0, np.inf, what)
    return Bound.smooth(-np.inf, -edge, what) if edge < 0 else Bound.exact(-np.inf, 0.0, what)


_ACTIVATIONS = {
    "Relu": _relu, "Softplus": _relu, "Sigmoid": _unit, "HardSigmoid": _unit, "Tanh": _symmetric_unit,
    "Softsign": _symmetric_unit, "LeakyRelu": _leaky_relu, "PRelu": _prelu, "ThresholdedRelu": _thresholded_relu,
    "Elu": _elu, "Celu": _elu, "Selu": _selu, "Gelu": _gelu, "HardSwish": _fixed_minimum, "Mish": _fixed_minimum,
    "Swish": _swish, "Clip": _clip, "Mul": _gated,
}


def through(node: Node, bound: Bound) -> Bound:
    """The bound after a pass-through op (forward direction)."""
    if node.op not in POOL_OPS or (bound.lower == -np.inf and bound.upper == np.inf):
        return bound
    lower, upper, note = bound.lower, bound.upper, ""
    if node.op in ("AveragePool", "MaxPool"):
        padded = any(node.integers("pads")) or node.string("auto_pad", "NOTSET") not in ("NOTSET", "VALID") \
            or node.integer("ceil_mode", 0) != 0
        if padded and node.op == "AveragePool" and node.integer("count_include_pad", 0):
            lower, upper, note = min(lower, 0.0), max(upper, 0.0), f"{node.op} may average in padded zeros"
        elif padded and not _no_empty_window(node):
            return Bound.everything(f"R^d: {node.op}'s padding may leave a window with no input value"
                                     f" ({bound.why})")
    if node.op in _AVERAGING:  # a rounded average can land an ulp outside the values' range
        lower = lower * (1 + EVALUATION_ROOM) if lower < 0 else lower
        upper = upper * (1 + EVALUATION_ROOM) if upper > 0 else upper
        note = note or f"{node.op} rounding"
    if note:
        return Bound(lower, upper, f"{lower!r} <= x <= {upper!r} after {note} ({bound.why})")
    return bound


def _no_empty_window(node: Node) -> bool:
    """Every pooling window holds an input value: unit dilation, no ceil mode, each pad below the kernel."""
    kernel, pads = node.integers("kernel_shape"), node.integers("pads")
    if not kernel or any(d != 1 for d in node.integers("dilations")) or node.integer("ceil_mode", 0):
        return False
    if node.string("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER"):
        return True  # SAME pads at most kernel - 1 in total
    if len(pads) != 2 * len(kernel):
        return not any(pads)
    return all(p < k for p, k in zip(pads, kernel * 2, strict=True))


def _recurrent_bound(node: Node, tensor: str) -> Bound:
    """Hidden states in [-1, 1]. LSTM: o * act(c) with gates and act among sigmoid/tanh. GRU: a running
    combination (1 - z) h~ + z h of tanh/sigmoid values, convex only when the gate z is a sigmoid,
    from a zero initial state."""
    if tensor not in node.outputs[:2]:
        return Bound.everything(f"R^d: the features are the cell state of {node.op}, not a hidden state")
    acts = [a.lower() for a in node.strings("activations")]
    per = 3 if node.op == "LSTM" else 2
    if any(a not in ("sigmoid", "tanh") for a in acts):
        return Bound.everything(f"R^d: {node.op} with activations {acts} (only Sigmoid and Tanh are bounded here)")
    has_initial = bool(node.input(5))
    if node.op == "GRU":
        gates = acts[0::per] if acts else ["sigmoid"]
        if any(g != "sigmoid" for g in gates) or has_initial:
            return Bound.everything("R^d: a GRU hidden state is bounded only with a Sigmoid update gate and no"
                                     " initial state")
    elif has_initial and node.input(4):  # sequence_lens 0 could hand back initial_h itself
        return Bound.everything("R^d: an LSTM with an initial state and sequence lengths may output the initial"
                                 " state")
    return Bound.exact(-1.0, 1.0, f"{node.op} hidden state: products and mixes of tanh and sigmoid values")


def _layernorm(graph: Graph, consts: Constants, node: Node, whole: bool, d: int):
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
            return None, f"{not_folded} with '{show(name)}' of shape {value.shape}, not ({d},)"
        if not np.all(np.isfinite(value)):
            raise node.fault(f"has non-finite values in '{show(name)}'")
        params.append(np.broadcast_to(value.ravel(), (d,)).copy())
    return (params[0], params[1], eps), "folded"
