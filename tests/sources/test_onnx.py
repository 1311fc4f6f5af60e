"""ONNX models: the head, its names and the domain inferred from what feeds it.

Each graph is built here with ``onnx.helper`` and run by ONNX's own reference
evaluator on random inputs: the features it computes must lie in the domain
the loader inferred, and the logits it computes must equal W x + b from the
loaded layer (for a LayerNorm, the folded W' z + b' with |z| <= sqrt(d)).
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from argmaxcheck import Ball, Box, InputError, Unbounded, audit  # noqa: E402
from argmaxcheck.engine import certify  # noqa: E402
from argmaxcheck.sources.onnx import (  # noqa: E402
    GELU_MIN,
    GELU_TANH_MIN,
    HARDSWISH_MIN,
    MISH_MIN,
    SWISH_MIN,
    load_onnx,
)

N, D = 12, 6


def _model(nodes, initializers, metadata=None, opset=17, extra_outputs=()):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", D])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None),
         *[helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in extra_outputs]],
        initializer=[numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def _head(feature, rng, gemm=False):
    w = rng.normal(size=(D, N)).astype(np.float32)  # MatMul layout [dim, classes]
    b = rng.normal(size=N).astype(np.float32)
    if gemm:  # Gemm with transB: B is [classes, dim]; alpha and beta scale W and C
        nodes = [helper.make_node("Gemm", [feature, "B", "C"], ["logits"], transB=1, alpha=2.0, beta=0.5)]
        return nodes, {"B": w.T.copy(), "C": b}, 2.0 * w.T.astype(np.float64), 0.5 * b.astype(np.float64)
    nodes = [helper.make_node("MatMul", [feature, "W"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["logits"])]
    return nodes, {"W": w, "b": b}, w.T.astype(np.float64), b.astype(np.float64)


BODIES = {
    "relu": ([helper.make_node("Relu", ["h"], ["x"])], {}, Box(0.0, np.inf)),
    "sigmoid": ([helper.make_node("Sigmoid", ["h"], ["x"])], {}, Box(0.0, 1.0)),
    "tanh": ([helper.make_node("Tanh", ["h"], ["x"])], {}, Box(-1.0, 1.0)),
    "clip": ([helper.make_node("Clip", ["h", "lo", "hi"], ["x"])],
             {"lo": np.array(-0.5, np.float32), "hi": np.array(2.0, np.float32)}, Box(-0.5, 2.0)),
    "swish": ([helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["s", "h"], ["x"])], {},
              Box(SWISH_MIN, np.inf)),
    "swish_beta": ([helper.make_node("Mul", ["h", "c"], ["hc"]), helper.make_node("Sigmoid", ["hc"], ["s"]),
                    helper.make_node("Mul", ["h", "s"], ["x"])], {"c": np.array(2.0, np.float32)},
                   Box(np.nextafter(SWISH_MIN / 2, -np.inf), np.inf)),
    "hardswish": ([helper.make_node("HardSwish", ["h"], ["x"])], {}, Box(HARDSWISH_MIN, np.inf)),
    "hardsigmoid_gate": ([helper.make_node("HardSigmoid", ["h"], ["s"], alpha=1 / 6, beta=0.5),
                          helper.make_node("Mul", ["h", "s"], ["x"])], {}, Box(-0.375, np.inf)),
    "gelu": ([helper.make_node("Gelu", ["h"], ["x"])], {}, Box(GELU_MIN, np.inf)),
    "gelu_tanh": ([helper.make_node("Gelu", ["h"], ["x"], approximate="tanh")], {}, Box(GELU_TANH_MIN, np.inf)),
    "mish": ([helper.make_node("Mish", ["h"], ["x"])], {}, Box(MISH_MIN, np.inf)),
    "elu": ([helper.make_node("Elu", ["h"], ["x"], alpha=0.5)], {}, Box(-0.5, np.inf)),
    "celu": ([helper.make_node("Celu", ["h"], ["x"], alpha=2.0)], {}, Box(-2.0, np.inf)),
    "selu": ([helper.make_node("Selu", ["h"], ["x"])], {}, Box(-1.7580993408473766, np.inf)),
    "leaky_relu_negative": ([helper.make_node("LeakyRelu", ["h"], ["x"], alpha=-0.1)], {}, Box(0.0, np.inf)),
    "leaky_relu": ([helper.make_node("LeakyRelu", ["h"], ["x"])], {}, Unbounded()),  # alpha 0.01 > 0: all of R
    "thresholded_relu": ([helper.make_node("ThresholdedRelu", ["h"], ["x"], alpha=-0.25)], {}, Box(-0.25, np.inf)),
    "softplus": ([helper.make_node("Softplus", ["h"], ["x"])], {}, Box(0.0, np.inf)),
    "relu_pooled": ([helper.make_node("Unsqueeze", ["h", "ax"], ["h3"]), helper.make_node("Relu", ["h3"], ["r"]),
                     helper.make_node("GlobalAveragePool", ["r"], ["p"]),
                     helper.make_node("Squeeze", ["p", "ax"], ["x"])], {"ax": np.array([2], np.int64)},
                    Box(0.0, np.inf)),
    "input": ([helper.make_node("Identity", ["h"], ["x"])], {}, Unbounded()),
    "exp": ([helper.make_node("Exp", ["h"], ["x"])], {}, Unbounded()),  # (0, inf) really; not claimed
}


def _run(model, feeds, names):
    return ReferenceEvaluator(model).run(names, feeds)


@pytest.mark.parametrize("gemm", [False, True])
@pytest.mark.parametrize("body", sorted(BODIES))
def test_inferred_domain_holds_on_the_model_s_own_forward_pass(tmp_path, rng, body, gemm):
    nodes, inits, expected = BODIES[body]
    head_nodes, head_inits, weight, bias = _head("x", rng, gemm)
    opset = {"gelu": 20, "gelu_tanh": 20, "mish": 18}.get(body, 17)
    model = _model([*nodes, *head_nodes, helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
                   {**inits, **head_inits}, opset=opset, extra_outputs=("x", "logits"))
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    ckpt = load_onnx(path)
    assert type(ckpt.domain) is type(expected)
    if isinstance(expected, Box):  # the exact bound, or one widened by at most 0.2 % for rounding
        assert expected.lower * 1.002 <= ckpt.domain.lower <= expected.lower
        assert ckpt.domain.upper == expected.upper
    np.testing.assert_array_equal(ckpt.layer.weight, weight)
    np.testing.assert_array_equal(ckpt.layer.bias, bias)
    h = (4.0 * rng.normal(size=(200, D))).astype(np.float32)
    h[:5] = np.array([-1.2785, -1.5, -0.7518, 0.0, 3.0], np.float32)[:, None]  # at the activations' minima
    x, logits = _run(model, {"h": h}, ["x", "logits"])
    domain = ckpt.domain.resolve(D)
    assert all(certify.in_domain(row.astype(np.float64), domain) for row in x)
    np.testing.assert_allclose(x.astype(np.float64) @ ckpt.layer.weight.T + ckpt.layer.bias, logits,
                               rtol=1e-5, atol=1e-5)


def test_layernorm_is_folded_into_the_ball(tmp_path, rng):
    gamma = (1 + 0.3 * rng.normal(size=D)).astype(np.float32)
    beta = (0.2 * rng.normal(size=D)).astype(np.float32)
    head_nodes, head_inits, _, _ = _head("x", rng)
    model = _model([helper.make_node("LayerNormalization", ["h", "g", "be"], ["x"], axis=-1, epsilon=1e-5),
                    *head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])],
                   {"g": gamma, "be": beta, **head_inits}, extra_outputs=("logits",))
    path = tmp_path / "ln.onnx"
    onnx.save(model, path)
    ckpt = load_onnx(path)
    assert isinstance(ckpt.domain, Ball) and ckpt.domain.radius == pytest.approx(np.sqrt(D))
    assert ckpt.layer.dim == D - 1 and "LayerNorm" in ckpt.info["domain"]
    h = (3.0 * rng.normal(size=(100, D))).astype(np.float32)
    (logits,) = _run(model, {"h": h}, ["logits"])
    z = ckpt.fold_features(h)
    assert np.all(np.linalg.norm(z, axis=1) < np.sqrt(D))
    np.testing.assert_allclose(z @ ckpt.layer.weight.T + ckpt.layer.bias, logits, rtol=1e-4, atol=1e-4)


def test_lstm_hidden_state_is_a_box(tmp_path, rng):
    hidden = D
    nodes = [helper.make_node("Unsqueeze", ["h", "ax0"], ["seq"]),
             helper.make_node("LSTM", ["seq", "Wl", "Rl"], ["y", "y_h"], hidden_size=hidden),
             helper.make_node("Squeeze", ["y_h", "ax0"], ["x"])]
    inits = {"ax0": np.array([0], np.int64),
             "Wl": rng.normal(size=(1, 4 * hidden, D)).astype(np.float32),
             "Rl": rng.normal(size=(1, 4 * hidden, hidden)).astype(np.float32)}
    head_nodes, head_inits, weight, _ = _head("x", rng)
    model = _model([*nodes, *head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])], {**inits, **head_inits})
    path = tmp_path / "lstm.onnx"
    onnx.save(model, path)
    ckpt = load_onnx(path)
    assert ckpt.domain.describe() == Box(-1.0, 1.0).describe() and ckpt.info["feature_producer"] == "LSTM"
    np.testing.assert_array_equal(ckpt.layer.weight, weight)


def test_constant_node_weights_temperature_and_names(tmp_path, rng):
    w = rng.normal(size=(D, N)).astype(np.float32)
    b = rng.normal(size=(1, N)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
             helper.make_node("Relu", ["h"], ["x"]),
             helper.make_node("MatMul", ["x", "W"], ["mm"]), helper.make_node("Add", ["b", "mm"], ["logits"]),
             helper.make_node("Div", ["logits", "T"], ["scaled"]),
             helper.make_node("LogSoftmax", ["scaled"], ["probs"])]
    labels = [f"class {i}\t" for i in range(N)]
    model = _model(nodes, {"T": np.array(0.7, np.float32)}, metadata={"labels": json.dumps(labels)})
    path = tmp_path / "c.onnx"
    onnx.save(model, path)
    ckpt = load_onnx(path)
    np.testing.assert_array_equal(ckpt.layer.weight, w.T.astype(np.float64))
    np.testing.assert_array_equal(ckpt.layer.bias, b.ravel().astype(np.float64))
    assert ckpt.layer.tokens == labels and ckpt.info["token_names"] == "metadata 'labels'"


def test_paddleocr_character_metadata(tmp_path, rng):
    head_nodes, head_inits, _, _ = _head("h", rng)
    chars = "\n".join("abcdefghij")  # 10 characters + blank + space = N
    model = _model([*head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])], head_inits,
                   metadata={"character": chars})
    path = tmp_path / "ocr.onnx"
    onnx.save(model, path)
    ckpt = load_onnx(path)
    assert ckpt.layer.tokens == ["<blank>", *"abcdefghij", " "]
    assert ckpt.domain == Unbounded()


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_onnx_is_one_clear_error(tmp_path, rng, damage):
    head_nodes, head_inits, _, _ = _head("h", rng)
    path = _save(tmp_path, _model([*head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])], head_inits))
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": bytes(range(256)) * 4, "empty": b""}[damage])
    with pytest.raises(InputError, match=r"m\.onnx: not a readable ONNX model"):
        load_onnx(path)


def test_missing_external_data_is_a_clear_error(tmp_path, rng):
    head_nodes, head_inits, _, _ = _head("h", rng)
    model = _model([*head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])], head_inits)
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(InputError, match=r"ext\.onnx: tensor '\w+': external data file 'ext\.data' not found"):
        load_onnx(tmp_path / "ext.onnx")


def test_no_classifier_lists_candidates_and_the_flag(tmp_path, rng):
    w = rng.normal(size=(D, N)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["h", "W"], ["mm"]), helper.make_node("Exp", ["mm"], ["probs"])]
    path = _save(tmp_path, _model(nodes, {"W": w}))
    with pytest.raises(InputError, match=r"--weight NAME; candidates: W \(MatMul\)"):
        load_onnx(path)
    assert load_onnx(path, head="W").layer.num_classes == N
    with pytest.raises(InputError, match="no MatMul/Gemm with weight or node name 'nope'"):
        load_onnx(path, head="nope")


def test_non_finite_weight_names_the_tensor(tmp_path, rng):
    head_nodes, head_inits, _, _ = _head("h", rng)
    head_inits["W"][2, 3] = np.nan
    path = _save(tmp_path, _model([*head_nodes, helper.make_node("Softmax", ["logits"], ["probs"])], head_inits))
    with pytest.raises(InputError, match="W"):
        load_onnx(path)


def test_cli_audits_an_onnx_model_on_its_inferred_domain(tmp_path, rng):
    head_nodes, head_inits, weight, bias = _head("x", rng)
    model = _model([helper.make_node("Relu", ["h"], ["x"]), *head_nodes,
                    helper.make_node("Softmax", ["logits"], ["probs"])], head_inits)
    path = _save(tmp_path, model)
    out = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(path), "--format", "json", "--quiet"],
                         capture_output=True, text=True, check=False)
    assert out.returncode in (0, 1), out.stderr
    report = json.loads(out.stdout)
    assert report["checkpoint"]["format"] == "onnx"
    assert report["summary"]["domain"]["kind"] == "box"
    expected = audit(weight, bias, domain=Box(0.0, np.inf))
    assert [t["id"] for t in report["tokens"] if t["verdict"] == "unargmaxable"] == expected.unargmaxable


def _ppocr_model():
    spec = importlib.util.find_spec("rapidocr_onnxruntime")  # located, not imported (no cv2 needed)
    if spec is None:
        pytest.skip("rapidocr-onnxruntime==1.4.4 is not installed (.ci/run installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / "models" / "ch_PP-OCRv4_rec_infer.onnx"


def test_real_ppocrv4_model_head_names_and_swish_domain():
    ckpt = load_onnx(_ppocr_model())
    bundled = np.load(Path(__file__).resolve().parents[2] / "data" / "ppocrv4_rec_head.npz")
    np.testing.assert_array_equal(ckpt.layer.weight, bundled["weight"].astype(np.float64))
    np.testing.assert_array_equal(ckpt.layer.bias, bundled["bias"].astype(np.float64))
    assert ckpt.layer.tokens == [str(t) for t in bundled["tokens"]]
    assert ckpt.info["weight"] == "linear_85.w_0" and ckpt.info["bias"] == "linear_85.b_0"
    assert ckpt.info["feature_producer"] == "Mul" and "swish" in ckpt.info["domain"]
    assert SWISH_MIN * 1.002 < ckpt.domain.lower < SWISH_MIN
    # The box is inside R^d: what R^d cannot reach, the swish box cannot either.
    sample = [37, *range(0, 6625, 331)]
    on_rd = audit(ckpt.layer, tokens=sample)
    on_box = audit(ckpt.layer, domain=ckpt.domain, tokens=sample)
    assert set(on_rd.unargmaxable) <= set(on_box.unargmaxable) | set(on_box.undecided)
    assert 37 in on_rd.unargmaxable
