"""Bad input: a clear InputError, never a traceback or a wrong answer."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from argmaxcheck import Ball, Box, InputError, audit
from argmaxcheck.sources.arrays import ArraySpec, load_layer


@pytest.mark.parametrize("weight,bias,message", [
    (np.zeros((0, 4)), None, "empty"),
    (np.zeros((4,)), None, "2-D"),
    (np.zeros((2, 3, 4)), None, "2-D"),
    (np.ones((4, 3)), np.ones(5), "expected (4,)"),
    (np.array([["a", "b"]]), None, "dtype"),
    (np.ones((3, 2)) + 1j, None, "complex"),
])
def test_malformed_arrays(weight, bias, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        audit(weight, bias)


def test_non_finite_values_name_the_row(rng):
    weight = rng.normal(size=(10, 3))
    weight[6, 1] = np.nan
    with pytest.raises(InputError, match="row 6"):
        audit(weight)
    weight[6, 1] = 0
    bias = np.zeros(10)
    bias[2] = np.inf
    with pytest.raises(InputError, match="entry 2"):
        audit(weight, bias)


@pytest.mark.parametrize("domain,message", [
    (Box(1.0, -1.0), "lower > upper"),
    (Box(np.inf, np.inf), "empty"),
    (Box(np.zeros(2), 1.0), "shape"),
    (Ball(0.0), "radius"),
    (Ball(np.inf), "radius"),
    (Ball(1.0, [0.0, np.nan, 0.0]), "center"),
])
def test_bad_domains(rng, domain, message):
    with pytest.raises(InputError, match=message):
        audit(rng.normal(size=(6, 3)), domain=domain)


@pytest.mark.parametrize("tokens,message", [([99], "out of range"), ([], "empty"), (["a"], "integers")])
def test_bad_token_lists(rng, tokens, message):
    with pytest.raises(InputError, match=message):
        audit(rng.normal(size=(6, 3)), tokens=tokens)


def test_half_precision_is_solved_in_float64_and_recorded(rng):
    weight = rng.normal(size=(300, 4)).astype(np.float16)
    report = audit(weight)
    assert report.source_dtype == "float16"
    assert report.summary()["source_dtype"] == "float16"
    assert set(report.unargmaxable) == set(audit(weight.astype(np.float64)).unargmaxable)


def test_bfloat16_from_torch_and_safetensors(rng, tmp_path):
    w = torch.tensor(rng.normal(size=(200, 4)), dtype=torch.bfloat16)
    direct = audit(w)
    assert direct.source_dtype == "bfloat16"
    # the same tensor through a safetensors file, read without torch
    raw = w.view(torch.int16).numpy().view(np.uint16)
    path = tmp_path / "bf16.safetensors"
    header = json.dumps({"weight": {"dtype": "BF16", "shape": [200, 4], "data_offsets": [0, raw.nbytes]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + raw.tobytes())
    layer = load_layer(path)
    assert layer.source_dtype == "bfloat16"
    np.testing.assert_array_equal(layer.weight, w.double().numpy())
    assert audit(layer).unargmaxable == direct.unargmaxable


def test_missing_file_and_array(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_layer(tmp_path / "nope.npz")
    np.savez(tmp_path / "m.npz", W=np.ones((3, 2)), b=np.ones(3))
    with pytest.raises(InputError, match=r"no array named 'weight'; it has: W float64\[3, 2\], b float64\[3\]"):
        load_layer(tmp_path / "m.npz")
    with pytest.raises(InputError, match="no array named 'beta'"):
        load_layer(tmp_path / "m.npz", ArraySpec(weight="W", bias="beta"))
    layer = load_layer(tmp_path / "m.npz", ArraySpec(weight="W", bias="b"))
    assert layer.bias is None  # constant bias dropped: it cannot change the argmax


def test_transpose_and_names(rng, tmp_path):
    weight = rng.normal(size=(7, 3))
    np.savez(tmp_path / "t.npz", weight=weight.T, tokens=np.array(list("abcdefg")))
    layer = load_layer(tmp_path / "t.npz", ArraySpec(transpose=True))
    np.testing.assert_array_equal(layer.weight, weight)
    assert layer.tokens == list("abcdefg")


def test_corrupt_and_truncated_safetensors(rng, tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"weight": rng.normal(size=(8, 3)).astype(np.float32)}, str(path))
    assert load_layer(path).num_classes == 8
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:-10])
    with pytest.raises(InputError, match="truncated"):
        load_layer(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{abc")
    with pytest.raises(InputError, match="not a valid safetensors"):
        load_layer(tmp_path / "junk.safetensors")
    (tmp_path / "short.safetensors").write_bytes(b"\x01")
    with pytest.raises(InputError, match="not a valid safetensors"):
        load_layer(tmp_path / "short.safetensors")


def test_corrupt_npz_and_pt(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"not a readable \.npz"):
        load_layer(tmp_path / "bad.npz")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"torch\.load"):
        load_layer(tmp_path / "bad.pt")


def test_pt_state_dict(rng, tmp_path):
    weight = torch.tensor(rng.normal(size=(30, 3)), dtype=torch.float32)
    torch.save({"head.weight": weight, "head.bias": torch.zeros(30)}, tmp_path / "m.pt")
    with pytest.raises(InputError, match=r"head\.weight"):
        load_layer(tmp_path / "m.pt")
    layer = load_layer(tmp_path / "m.pt", ArraySpec(weight="head.weight", bias="head.bias"))
    assert layer.source_dtype == "float32" and layer.num_classes == 30
