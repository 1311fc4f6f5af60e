"""Adversarial ONNX models, each built here with ``onnx.helper`` (no binary blobs).

Issue 11, ONNX input: activation domains that must hold for every attribute
value (checked against ONNX's reference evaluator), graph cycles, unbounded
metadata, malformed graphs and tensors, external data outside the model's
folder, FIFOs, and names that are not valid text. Every case must end in a
correct domain or a one-line InputError naming the node or tensor, quickly
and in bounded memory: none of the fixes can loop (each graph walk visits a
node at most once, after a global acyclicity check).
"""

import json
import math
import os
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from argmaxcheck import Ball, Box, InputError, Unbounded, audit  # noqa: E402
from argmaxcheck.sources import load_source  # noqa: E402
from argmaxcheck.sources.onnx import GELU_TANH_MIN, MISH_MIN, SWISH_MIN, load_onnx  # noqa: E402

N, D = 5, 4
INF = np.inf
F32 = np.float32


def _model(nodes, inits=None, *, opset=17, outputs=("probs",), metadata=None, h_shape=("batch", D)):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, list(h_shape))],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def _head(feature="x", rng=None, bias=True):
    """MatMul(feature, W) [+ b] -> Softmax: nodes and initializers."""
    rng = rng or np.random.default_rng(7)
    nodes = [helper.make_node("MatMul", [feature, "W"], ["mm" if bias else "logits"], name="head")]
    inits = {"W": rng.normal(size=(D, N)).astype(F32)}
    if bias:
        nodes.append(helper.make_node("Add", ["mm", "b"], ["logits"]))
        inits["b"] = rng.normal(size=N).astype(F32)
    return [*nodes, helper.make_node("Softmax", ["logits"], ["probs"])], inits


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _grid():
    """Inputs that reach every activation's extremes: a fine grid, tiny and large magnitudes, signed zeros."""
    mags = np.logspace(-8, 1.5, 40)
    values = np.concatenate([np.linspace(-30, 30, 1201), mags, -mags, [0.0, -0.0, -1.2785, 0.6392, -10.0]])
    values = np.concatenate([values, np.zeros(-len(values) % D)])
    return values.reshape(-1, D).astype(F32)


# --- class 2: every activation's domain, for every attribute value -----------------------------

def _act(op, **attrs):
    return [helper.make_node(op, ["h"], ["x"], **attrs)], {}


def _gate(scale):
    return ([helper.make_node("Mul", ["h", "c"], ["hc"]), helper.make_node("Sigmoid", ["hc"], ["s"]),
             helper.make_node("Mul", ["h", "s"], ["x"])], {"c": np.array(scale, F32)})


def _hard_gate(alpha, beta):
    return ([helper.make_node("HardSigmoid", ["h"], ["s"], alpha=alpha, beta=beta),
             helper.make_node("Mul", ["s", "h"], ["x"])], {})


def _clip(lo, hi):
    """Clip with min/max inputs: a float is a constant, 'graph' the minimum of the input (not a constant)."""
    nodes, inits, names = [], {}, []
    for name, value in (("lo", lo), ("hi", hi)):
        if value == "graph":
            nodes.append(helper.make_node("ReduceMin", ["h"], [name], keepdims=0))
        elif value is not None:
            inits[name] = np.array(value, F32)
        names.append(name if value is not None else "")
    while names and not names[-1]:
        names.pop()
    return [*nodes, helper.make_node("Clip", ["h", *names], ["x"])], inits


f32 = lambda v: float(F32(v))  # noqa: E731 - attributes are stored as float32
SELU_A, SELU_G = f32(1.67326319217681884765625), f32(1.05070102214813232421875)

# (nodes, initializers), opset, the exact domain: (lower, upper) before widening, or None for R^d
CASES = {
    "elu_alpha_-5": (_act("Elu", alpha=-5.0), 17, (0.0, INF)),
    "elu_alpha_0": (_act("Elu", alpha=0.0), 17, (0.0, INF)),
    "elu_alpha_huge": (_act("Elu", alpha=1e30), 17, (-f32(1e30), INF)),
    "elu_alpha_tiny": (_act("Elu", alpha=1e-30), 17, (-f32(1e-30), INF)),
    "elu_alpha_nan": (_act("Elu", alpha=math.nan), 17, None),
    "elu_alpha_inf": (_act("Elu", alpha=math.inf), 17, None),
    "celu_alpha_2": (_act("Celu", alpha=2.0), 17, (-2.0, INF)),
    "celu_alpha_-1": (_act("Celu", alpha=-1.0), 17, None),
    "celu_alpha_0": (_act("Celu", alpha=0.0), 17, None),
    "selu_default": (_act("Selu"), 17, (-SELU_A * SELU_G, INF)),
    "selu_alpha_-2": (_act("Selu", alpha=-2.0, gamma=1.0), 17, (0.0, INF)),
    "selu_gamma_-1": (_act("Selu", alpha=2.0, gamma=-1.0), 17, (-INF, 2.0)),
    "selu_gamma_0": (_act("Selu", alpha=2.0, gamma=0.0), 17, (0.0, 0.0)),
    "selu_alpha_nan": (_act("Selu", alpha=math.nan), 17, None),
    "leakyrelu_alpha_-1": (_act("LeakyRelu", alpha=-1.0), 17, (0.0, INF)),
    "leakyrelu_alpha_0": (_act("LeakyRelu", alpha=0.0), 17, (0.0, INF)),
    "leakyrelu_alpha_0.5": (_act("LeakyRelu", alpha=0.5), 17, None),
    "leakyrelu_alpha_nan": (_act("LeakyRelu", alpha=math.nan), 17, None),
    "prelu_negative": (([helper.make_node("PRelu", ["h", "s"], ["x"])], {"s": np.full(D, -0.5, F32)}), 17,
                       (0.0, INF)),
    "prelu_mixed": (([helper.make_node("PRelu", ["h", "s"], ["x"])], {"s": np.array([-1, 0.1, 0, 2], F32)}), 17,
                    None),
    "thresholdedrelu_alpha_-3": (_act("ThresholdedRelu", alpha=-3.0), 17, (-3.0, INF)),
    "thresholdedrelu_alpha_2": (_act("ThresholdedRelu", alpha=2.0), 17, (0.0, INF)),
    "hardsigmoid_extreme": (_act("HardSigmoid", alpha=-1e30, beta=5.0), 17, (0.0, 1.0)),
    "hardsigmoid_nan": (_act("HardSigmoid", alpha=math.nan), 17, None),
    "clip_min_above_max": (_clip(3.0, 1.0), 13, (1.0, 1.0)),
    "clip_min_nan": (_clip(math.nan, None), 13, None),
    "clip_max_from_graph": (_clip(0.0, "graph"), 13, None),  # min > max gives max: min is no lower bound
    "clip_min_from_graph": (_clip("graph", 2.0), 13, (-INF, 2.0)),
    "clip_only_min": (_clip(-0.5, None), 13, (-0.5, INF)),
    "clip_opset6": (_act("Clip", min=-1.0, max=1.0), 6, (-1.0, 1.0)),
    "clip_opset6_min_above_max": (_act("Clip", min=2.0, max=1.0), 6, (1.0, 1.0)),
    "swish_op_alpha_3": (_act("Swish", alpha=3.0), 24, (SWISH_MIN / 3, INF)),
    "swish_op_alpha_-2": (_act("Swish", alpha=-2.0), 24, (-INF, -SWISH_MIN / 2)),
    "swish_op_alpha_0": (_act("Swish", alpha=0.0), 24, None),
    "swish_gate_-2": (_gate(-2.0), 17, (-INF, -SWISH_MIN / 2)),
    "swish_gate_0": (_gate(0.0), 17, None),
    "hard_gate_beta_3": (_hard_gate(0.2, 3.0), 17, ((1 - 3.0) / f32(0.2), INF)),
    "hard_gate_alpha_negative": (_hard_gate(-1 / 6, 0.5), 17, (-INF, 0.375)),
    "hard_gate_beta_negative": (_hard_gate(0.2, -1.0), 17, (0.0, INF)),
    "hard_gate_alpha_0": (_hard_gate(0.0, 0.5), 17, None),
    "hard_gate_shut": (_hard_gate(0.0, -1.0), 17, (0.0, 0.0)),
    "gelu_tanh": (_act("Gelu", approximate="tanh"), 20, (GELU_TANH_MIN, INF)),
    "mish": (_act("Mish"), 18, (MISH_MIN, INF)),
    "dropout_training": (([helper.make_node("Sigmoid", ["h"], ["s"]),
                           helper.make_node("Dropout", ["s", "ratio", "train"], ["x"], seed=3)],
                          {"ratio": np.array(0.5, F32), "train": np.array(True)}), 17, None),
}


def _assert_bound(actual, exact, side):
    """``actual`` is ``exact`` or widened outward from it by at most 0.2 %."""
    if not np.isfinite(exact) or exact == 0:
        assert actual == exact
    elif side == "lower":
        assert exact - 2e-3 * abs(exact) <= actual <= exact
    else:
        assert exact <= actual <= exact + 2e-3 * abs(exact)


@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_domain_holds_for_adversarial_attributes(tmp_path, case):
    (body, inits), opset, expected = CASES[case]
    head, head_inits = _head()
    model = _model([*body, *head], {**inits, **head_inits}, opset=opset, outputs=("probs", "x"))
    ckpt = load_onnx(_save(tmp_path, model))
    (x,) = ReferenceEvaluator(model).run(["x"], {"h": _grid()})
    x = np.asarray(x, dtype=np.float64)
    if expected is None:
        assert isinstance(ckpt.domain, Unbounded), ckpt.domain_reason
        assert ckpt.domain_reason.startswith("R^d: ")
        return
    assert isinstance(ckpt.domain, Box), ckpt.domain_reason
    box = ckpt.domain.resolve(D)
    _assert_bound(float(box.lower[0]), expected[0], "lower")
    _assert_bound(float(box.upper[0]), expected[1], "upper")
    assert not np.isnan(x).any()
    outside = (x < box.lower) | (x > box.upper)
    assert not outside.any(), f"{x[outside][:5]} outside {ckpt.domain_reason}"


def test_elu_with_negative_alpha_does_not_hide_a_reachable_token(tmp_path):
    """Elu(alpha=-5) outputs [0, inf), not x >= 5: token 0 wins at h = 0, so it is argmaxable."""
    w = np.zeros((D, 3), F32)
    w[0] = [0.0, 1.0, 1.0]  # token 0: logit 1; tokens 1 and 2: x_0 - 2, which beats 1 once x_0 > 3
    b = np.array([1.0, -2.0, -2.5], F32)
    nodes = [helper.make_node("Elu", ["h"], ["x"], alpha=-5.0), helper.make_node("MatMul", ["x", "W"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    model = _model(nodes, {"W": w, "b": b})
    (probs,) = ReferenceEvaluator(model).run(["probs"], {"h": np.zeros((1, D), F32)})
    assert probs.argmax() == 0
    ckpt = load_onnx(_save(tmp_path, model))
    report = audit(ckpt.layer, domain=ckpt.domain)
    assert 0 not in report.unargmaxable and 0 not in report.undecided
    assert ckpt.domain.lower == 0.0


def test_custom_domain_op_is_not_read_as_the_standard_one(tmp_path):
    head, inits = _head()
    model = _model([helper.make_node("Relu", ["h"], ["x"], domain="com.example"), *head], inits)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    ckpt = load_onnx(_save(tmp_path, model))
    assert isinstance(ckpt.domain, Unbounded) and "custom op" in ckpt.domain_reason


def test_gru_with_a_tanh_update_gate_is_not_bounded(tmp_path):
    # h1 = (1 - z) h~ + z h0 with z = tanh(-3), h~ = tanh(3), h0 = 0: already beyond 1.
    assert (1 - math.tanh(-3)) * math.tanh(3) > 1.9
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Unsqueeze", ["h", "ax0"], ["seq"]),
             helper.make_node("GRU", ["seq", "Wg", "Rg"], ["y", "y_h"], hidden_size=D, activations=["Tanh", "Tanh"]),
             helper.make_node("Squeeze", ["y_h", "ax0"], ["x"])]
    inits = {"ax0": np.array([0], np.int64), "Wg": rng.normal(size=(1, 3 * D, D)).astype(F32),
             "Rg": rng.normal(size=(1, 3 * D, D)).astype(F32)}
    head, head_inits = _head()
    ckpt = load_onnx(_save(tmp_path, _model([*nodes, *head], {**inits, **head_inits})))
    assert isinstance(ckpt.domain, Unbounded) and "GRU" in ckpt.domain_reason


def _pooled(tmp_path, pool):
    """Clip(1, 2) features [1, D, 3, 3] -> pool -> GlobalMaxPool -> Flatten -> head."""
    nodes = [helper.make_node("Clip", ["h", "lo", "hi"], ["c"]), pool,
             helper.make_node("GlobalMaxPool", ["p"], ["g"]), helper.make_node("Flatten", ["g"], ["x"])]
    head, inits = _head()
    model = _model([*nodes, *head], {"lo": np.array(1.0, F32), "hi": np.array(2.0, F32), **inits},
                   outputs=("probs", "x"), h_shape=(1, D, 3, 3))
    return model, load_onnx(_save(tmp_path, model))


def test_average_pool_counting_padded_zeros_widens_the_box_to_zero(tmp_path, rng):
    pool = helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1)
    model, ckpt = _pooled(tmp_path, pool)
    assert isinstance(ckpt.domain, Box) and ckpt.domain.lower == 0.0 and 2.0 <= ckpt.domain.upper <= 2.004
    h = (3 * rng.normal(size=(1, D, 3, 3))).astype(F32)
    (x,) = ReferenceEvaluator(model).run(["x"], {"h": h})
    assert np.all(x >= ckpt.domain.lower) and np.all(x <= ckpt.domain.upper)


@pytest.mark.parametrize("pool", [
    helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], pads=[2, 2, 2, 2]),
    helper.make_node("AveragePool", ["c"], ["p"], kernel_shape=[2, 2], pads=[2, 2, 2, 2]),
], ids=["maxpool", "averagepool"])
def test_pooling_windows_wholly_in_the_padding_give_r_d(tmp_path, pool):
    # Such windows hold no input value: the reference evaluator gives NaN (average) or fails (max).
    _, ckpt = _pooled(tmp_path, pool)
    assert isinstance(ckpt.domain, Unbounded) and "padding" in ckpt.domain_reason


def test_max_pool_with_ordinary_padding_keeps_the_box(tmp_path, rng):
    pool = helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    _, ckpt = _pooled(tmp_path, pool)
    assert isinstance(ckpt.domain, Box) and (ckpt.domain.lower, ckpt.domain.upper) == (1.0, 2.0)


def _layernorm_model(ln, extra=(), h_shape=("batch", D)):
    head, inits = _head()
    inits = {**inits, "g": np.ones(D, F32), "be": np.zeros(D, F32)}
    return _model([*extra, ln, *head], inits, outputs=("probs", "x"), h_shape=h_shape)


def test_layernorm_with_negative_epsilon_is_not_folded_into_the_ball(tmp_path):
    model = _layernorm_model(helper.make_node("LayerNormalization", ["h", "g", "be"], ["x"], epsilon=-0.5))
    ckpt = load_onnx(_save(tmp_path, model))
    assert isinstance(ckpt.domain, Unbounded) and "epsilon" in ckpt.domain_reason
    (x,) = ReferenceEvaluator(model).run(["x"], {"h": np.array([[0.0, 0.0, 0.0, 1.7]], F32)})
    assert np.linalg.norm(x) > 3 * math.sqrt(D)  # var 0.542 + eps -0.5: |z|^2 = 4 var / 0.042


def test_layernorm_mean_output_is_not_the_normalised_vector(tmp_path):
    ln = helper.make_node("LayerNormalization", ["h", "g", "be"], ["unused", "x"])
    ckpt = load_onnx(_save(tmp_path, _layernorm_model(ln)))
    assert isinstance(ckpt.domain, Unbounded) and ckpt.norm == "none"


def test_layernorm_over_more_than_the_feature_axis_is_not_folded(tmp_path):
    ln = helper.make_node("LayerNormalization", ["h", "g", "be"], ["x"], axis=1)  # over [3, D] of [b, 3, D]
    model = _layernorm_model(ln, h_shape=("batch", 3, D))
    ckpt = load_onnx(_save(tmp_path, model))
    assert not isinstance(ckpt.domain, Ball) and ckpt.norm == "none"
    h = np.zeros((1, 3, D), F32)
    h[0, 0] = [0.0, 0.0, 0.0, 10.0]
    (x,) = ReferenceEvaluator(model).run(["x"], {"h": h})
    assert np.linalg.norm(x[0, 0]) > math.sqrt(D)  # one feature vector outside the sqrt(d) ball


# --- the head: biases on the path to the logits ----------------------------------------------

def test_bias_is_kept_when_the_matmul_output_has_another_consumer(tmp_path):
    head, inits = _head("h")
    model = _model([*head, helper.make_node("Identity", ["mm"], ["raw_scores"])], inits,
                   outputs=("probs", "raw_scores"))
    ckpt = load_onnx(_save(tmp_path, model))
    np.testing.assert_array_equal(ckpt.layer.bias, inits["b"].astype(np.float64))


def test_gemm_and_a_later_bias_add_are_summed(tmp_path, rng):
    b_mat, c, extra = (rng.normal(size=(N, D)).astype(F32), rng.normal(size=N).astype(F32),
                       rng.normal(size=N).astype(F32))
    nodes = [helper.make_node("Gemm", ["h", "B", "C"], ["g"], transB=1, beta=2.0),
             helper.make_node("Add", ["g", "e"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    model = _model(nodes, {"B": b_mat, "C": c, "e": extra}, outputs=("probs",))
    ckpt = load_onnx(_save(tmp_path, model))
    h = rng.normal(size=(3, D)).astype(F32)
    (logits,) = ReferenceEvaluator(_model(nodes, {"B": b_mat, "C": c, "e": extra}, outputs=("logits",))).run(
        ["logits"], {"h": h})
    np.testing.assert_allclose(h @ ckpt.layer.weight.T + ckpt.layer.bias, logits, rtol=1e-5, atol=1e-5)


def test_adding_a_graph_tensor_to_the_logits_is_not_a_bias(tmp_path):
    head, inits = _head("h", bias=False)
    head[0] = helper.make_node("MatMul", ["h", "W"], ["mm"])
    nodes = [head[0], helper.make_node("ReduceMean", ["h"], ["r"], axes=[1], keepdims=1),
             helper.make_node("Add", ["mm", "r"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probs"])]
    with pytest.raises(InputError, match="no graph output ends in MatMul/Gemm"):
        load_onnx(_save(tmp_path, _model(nodes, inits, opset=17)))


# --- class 5: graph cycles --------------------------------------------------------------------

@pytest.mark.parametrize("cycle", ["output_self_loop", "feature_pair", "shape_ops"])
def test_graph_cycle_is_one_clear_error(tmp_path, cycle):
    head, inits = _head()
    if cycle == "output_self_loop":  # the head walk: probs = Identity(probs)
        nodes = [helper.make_node("Relu", ["h"], ["x"]), *head[:-1],
                 helper.make_node("Identity", ["probs"], ["probs"], name="loop")]
    elif cycle == "feature_pair":
        nodes = [helper.make_node("Relu", ["y"], ["x"], name="loop"), helper.make_node("Relu", ["x"], ["y"]), *head]
    else:  # the feature walk through shape ops
        nodes = [helper.make_node("Transpose", ["y"], ["x"], name="loop"),
                 helper.make_node("Reshape", ["x", "s"], ["y"]), *head]
        inits["s"] = np.array([-1, D], np.int64)
    with pytest.raises(InputError, match=r"m\.onnx: \w+ node '\w+' is on a cycle"):
        load_onnx(_save(tmp_path, _model(nodes, inits)))


def test_a_tensor_written_twice_is_refused(tmp_path):
    head, inits = _head()
    nodes = [helper.make_node("Relu", ["h"], ["x"], name="first"),
             helper.make_node("Tanh", ["h"], ["x"], name="second"), *head]
    with pytest.raises(InputError, match="writes tensor 'x', which node 'first' writes too"):
        load_onnx(_save(tmp_path, _model(nodes, inits)))


# --- class 6: malformed nodes and tensors ---------------------------------------------------------

def _raw_tensor(name, dims, data_type=TensorProto.FLOAT, raw=b""):
    t = TensorProto()
    t.name, t.data_type, t.raw_data = name, data_type, raw
    t.dims.extend(dims)
    return t


def _float_tensor(name, dims, values):
    t = helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values)
    del t.dims[:]
    t.dims.extend(dims)
    return t


def _replace_head(op, inputs):
    def damage(nodes, inits):
        nodes[0] = helper.make_node(op, inputs, ["mm"], name="head")
    return damage


MALFORMED = {
    "matmul_one_input": ("MatMul node 'head' has 1 input\\(s\\); it needs 2", _replace_head("MatMul", ["h"])),
    "gemm_one_input": ("Gemm node 'head' has 1 input", _replace_head("Gemm", ["h"])),
    "gemm_empty_weight": ("Gemm node 'head' has 2 input.*input 1 is missing", _replace_head("Gemm", ["h", "", "b"])),
    "constant_without_value": ("Constant node 'c' has 0 value attributes",
                               lambda nodes, _: nodes.insert(0, helper.make_node("Constant", [], ["W2"], name="c"))),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_node_is_one_line_naming_it(tmp_path, case):
    pattern, damage = MALFORMED[case]
    head, inits = _head("h")
    damage(head, inits)
    with pytest.raises(InputError, match=pattern) as err:
        load_onnx(_save(tmp_path, _model(head, inits)))
    assert "\n" not in str(err.value)


BAD_TENSORS = {
    "string_dtype": (helper.make_tensor("W", TensorProto.STRING, [D, N], [b"a"] * (D * N)), "data type STRING"),
    "unknown_dtype": (_raw_tensor("W", [D, N], 999, b"\0" * (4 * D * N)), "data type 999 \\(unknown\\)"),
    "raw_data_short": (_raw_tensor("W", [D, N], raw=b"\0" * (4 * D * N - 4)), "holds 76 bytes, .* needs 80"),
    "float_data_short": (_float_tensor("W", [D, N], [1.0] * 3), "holds 3 values, .* 20"),
    "negative_dim": (_raw_tensor("W", [-D, N], raw=b"\0" * 16), "negative dimension"),
    "huge_dims": (_raw_tensor("W", [2**40, 2**40], raw=b"\0" * 16), "holds 16 bytes"),
}


@pytest.mark.parametrize("case", sorted(BAD_TENSORS))
def test_malformed_weight_is_one_line_naming_the_tensor(tmp_path, case):
    tensor, pattern = BAD_TENSORS[case]
    head, inits = _head("h")
    model = _model(head, {"b": inits["b"]})
    model.graph.initializer.append(tensor)
    with pytest.raises(InputError, match=f"m\\.onnx: tensor 'W' .*{pattern}") as err:
        load_onnx(_save(tmp_path, model))
    assert "\n" not in str(err.value)


# --- classes 4 and 5: the model file and its external data ---------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_model_path_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    else:
        path.mkdir()
    with pytest.raises(InputError, match=r"model\.onnx: is (not a regular file|a folder)"):
        load_source(path)


def _external_model(folder, rng):
    """A model whose weight W lives in folder/w.bin; returns (model path, the bytes of W)."""
    head, inits = _head("h", rng)
    model = _model(head, inits)
    w = model.graph.initializer[0]
    data = w.raw_data
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(len(data)))):
        w.external_data.add(key=key, value=value)
    (folder / "w.bin").write_bytes(data)
    return _save(folder, model), model, data


def _relocate(path, model, **entries):
    entry = {e.key: e for e in model.graph.initializer[0].external_data}
    for key, value in entries.items():
        entry[key].value = value
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink_file", "symlink_folder", "fifo", "folder",
                                    "past_the_end", "wrong_length"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, rng, attack):
    folder = tmp_path / "model"
    folder.mkdir()
    path, model, data = _external_model(folder, rng)
    (folder / "sub").mkdir()  # untouched, the model reads its weight from a subfolder
    os.replace(folder / "w.bin", folder / "sub" / "w.bin")
    _relocate(path, model, location="sub/w.bin")
    np.testing.assert_array_equal(load_onnx(path).layer.weight, np.frombuffer(data, F32).reshape(D, N).T)
    os.replace(folder / "sub" / "w.bin", folder / "w.bin")
    _relocate(path, model, location="w.bin")
    secret = tmp_path / "secret.bin"
    secret.write_bytes(data)
    expected = {"dotdot": "leaves the model's folder", "absolute": "is an absolute path",
                "symlink_file": "goes through a symlink", "symlink_folder": "goes through a symlink",
                "fifo": "is not a regular file", "folder": "is not a regular file",
                "past_the_end": "needs bytes 8..88 of 'w.bin', which has 80",
                "wrong_length": "offset 0 and length 4; its shape needs 80 bytes"}[attack]
    if attack == "dotdot":
        _relocate(path, model, location="../secret.bin")
    elif attack == "absolute":
        _relocate(path, model, location=str(secret))
    elif attack == "symlink_file":
        (folder / "w.bin").unlink()
        (folder / "w.bin").symlink_to(secret)
    elif attack == "symlink_folder":
        (folder / "d").symlink_to(tmp_path)
        _relocate(path, model, location="d/secret.bin")
    elif attack in ("fifo", "folder"):
        (folder / "w.bin").unlink()
        os.mkfifo(folder / "w.bin") if attack == "fifo" else (folder / "w.bin").mkdir()
    elif attack == "past_the_end":
        _relocate(path, model, offset="8")
    else:
        _relocate(path, model, length="4")
    with pytest.raises(InputError, match=f"tensor 'W'.*{expected}") as err:
        load_onnx(path)
    assert "\n" not in str(err.value) and data.hex()[:16] not in str(err.value)


# --- class 5 and 7: metadata and names -------------------------------------------------------------

def _with_names(tmp_path, value, key="labels"):
    head, inits = _head("h")
    return load_onnx(_save(tmp_path, _model(head, inits, metadata={key: value})))


def test_huge_name_metadata_is_skipped_in_bounded_memory(tmp_path):
    small = _with_names(tmp_path, str({i: f"class {i}" for i in range(N)}), key="names")  # Ultralytics style
    assert small.layer.tokens == [f"class {i}" for i in range(N)]
    text = "[" + "'a'," * 100_000 + "]"  # a Python literal, not JSON: ast.literal_eval would need ~200 MB
    tracemalloc.start()
    try:
        ckpt = _with_names(tmp_path, text, key="names")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 30e6 and ckpt.layer.tokens is None
    assert "more than the" in ckpt.info["token_names"] and "not used" in ckpt.info["token_names"]


@pytest.mark.parametrize(("value", "note"), [
    (json.dumps({"0": "a", "1": "b", "2": "c", "3": "d", "7": "e"}), "does not give one name to each index"),
    (json.dumps(["a", ["b"], "c", "d", "e"]), "is a list of other things than names"),
    (json.dumps(["a", "b"]), "has 2 entries for 5 classes"),
    ("[" * 2000 + "]" * 2000, "has 1 entries"),
], ids=["index_gap", "nested", "too_few", "deep_nesting"])
def test_name_metadata_that_does_not_fit_is_a_note(tmp_path, value, note):
    ckpt = _with_names(tmp_path, value)
    assert ckpt.layer.tokens is None and note in ckpt.info["token_names"]


def test_names_from_the_file_leave_as_valid_printable_text(tmp_path):
    head, inits = _head("h")
    head[0].name = "HEAD_MARK"
    head[0].input[1] = "WEIGHT_MK"
    inits["WEIGHT_MK"] = inits.pop("W")
    labels = json.dumps(["\ud800", "ok", "t\tab", "d", "e"])  # a lone surrogate is valid JSON
    model = _model(head, inits, metadata={"labels": labels})
    data = model.SerializeToString()
    data = data.replace(b"HEAD_MARK", b"HE\x1b[2J\n::").replace(b"WEIGHT_MK", b"WE\xff\xfeHT_MK")  # same lengths
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    ckpt = load_onnx(path)
    json.dumps(ckpt.info, ensure_ascii=False).encode("utf-8")  # no bytes, no lone surrogates
    assert ckpt.info["weight"] == "WE\\xff\\xfeHT_MK" and ckpt.info["head_node"] == "HE\\x1b[2J\\n::"
    assert all(v is None or v.isprintable() for v in ckpt.info.values())
    assert ckpt.layer.tokens[0] == "\\ud800" and ckpt.layer.tokens[2] == "t\tab"
    "".join(ckpt.layer.tokens).encode("utf-8")
    with pytest.raises(InputError, match=r"candidates: WE\\xff\\xfeHT_MK \(MatMul\)") as err:
        load_onnx(path, head="nope")
    assert str(err.value).isprintable()
    assert load_onnx(path, head="WE\\xff\\xfeHT_MK").layer.num_classes == N  # the shown name picks it
