"""Adversarial model files (issue 11, classes 4, 5, 6 and 10): each is built here, in code, from a valid
file edited the way an attacker or a broken exporter would. Every one must end in one-line InputError
naming the file and the thing at fault: never a traceback, a hang, a read outside the checkpoint, an
unbounded allocation, or a layer audited from the wrong bytes."""

import json
import os
import signal
import subprocess
import sys
import tracemalloc
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from argmaxcheck import InputError
from argmaxcheck.layer import OutputLayer
from argmaxcheck.sources import SourceRequest, load_source
from argmaxcheck.sources import arrays as arrays_module
from argmaxcheck.sources import huggingface as hf_module
from argmaxcheck.sources.arrays import ArraySpec, load_layer
from argmaxcheck.sources.huggingface import load_checkpoint
from argmaxcheck.sources.norms import MeanZeroBasis, fold_norm

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def deadline(seconds: int = 10):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expire(*_):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def peak_memory(limit_bytes: int):
    """Fail when the Python and numpy allocations inside exceed ``limit_bytes`` at any moment."""
    tracemalloc.start()
    try:
        yield
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < limit_bytes, f"peak allocation {peak} bytes"


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message and "\x1b" not in message, repr(message)
    return message


# ---------------------------------------------------------------- safetensors: the library validates

def write_safetensors(path: Path, header: dict, body: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + body)
    return path


def bf16_file(tmp_path: Path, edit) -> tuple[Path, np.ndarray]:
    """A valid BF16 weight [6, 4] and bias [6], then ``edit(header)`` applied to its JSON header."""
    rng = np.random.default_rng(0)
    weight = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.bfloat16)
    bias = torch.tensor(rng.normal(size=6), dtype=torch.bfloat16)
    w_bytes = weight.view(torch.int16).numpy().tobytes()
    b_bytes = bias.view(torch.int16).numpy().tobytes()
    header = {"weight": {"dtype": "BF16", "shape": [6, 4], "data_offsets": [0, 48]},
              "bias": {"dtype": "BF16", "shape": [6], "data_offsets": [48, 60]}}
    edit(header)
    return write_safetensors(tmp_path / "edited.safetensors", header, w_bytes + b_bytes), weight.double().numpy()


def _set(name, key, value):
    def edit(header):
        header[name][key] = value
    return edit


@pytest.mark.parametrize("edit,tensor,reason", [
    (_set("weight", "data_offsets", [-8, 40]), "weight", "negative data offset"),
    (_set("weight", "shape", [-6, -4]), "weight", "negative dimension"),
    (_set("bias", "data_offsets", [36, 48]), "bias", "overlaps tensor 'weight'"),  # overlaps the weight's last row
    (_set("weight", "data_offsets", [0, 4800]), "weight", "past the end"),
    (_set("weight", "shape", [5, 4]), "weight", "bytes"),
])
def test_edited_bf16_header_is_refused_naming_file_and_tensor(tmp_path, edit, tensor, reason):
    path, _ = bf16_file(tmp_path, edit)
    with pytest.raises(InputError) as exc:
        load_layer(path)
    message = one_line(exc)
    assert str(path) in message and f"'{tensor}'" in message and reason in message


def test_bf16_is_read_through_the_validated_header_and_widened_exactly(tmp_path):
    path, expected = bf16_file(tmp_path, lambda header: None)
    layer = load_layer(path)
    np.testing.assert_array_equal(layer.weight, expected)
    assert layer.source_dtype == "bfloat16"
    transposed = load_layer(path, ArraySpec(transpose=True, no_bias=True))
    np.testing.assert_array_equal(transposed.weight, expected.T)
    assert transposed.source_dtype == "bfloat16"


@pytest.mark.parametrize("dtype,shape,nbytes", [("BOOL", [6, 4], 24), ("C64", [6, 4], 192),
                                                ("F8_E4M3", [6, 4], 24)])
def test_safetensors_without_real_numbers_is_refused(tmp_path, dtype, shape, nbytes):
    path = write_safetensors(tmp_path / "m.safetensors",
                             {"weight": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}},
                             bytes(nbytes))
    with pytest.raises(InputError, match=rf"'weight' has dtype {dtype}, expected real numbers"):
        load_layer(path)


# ---------------------------------------------------------------- checkpoint folders: stay inside

def llama_folder(folder: Path, *, sharded: bool = True, norm_dtype=np.float32) -> Path:
    """A two-shard llama checkpoint written by hand (no transformers): head [8, 4] and final RMSNorm."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "tie_word_embeddings": False,
                                                    "rms_norm_eps": 1e-6}))
    head = rng.normal(size=(8, 4)).astype(np.float32)
    norm = (rng.normal(size=4) > 0) if norm_dtype is bool else rng.normal(size=4).astype(norm_dtype)
    if sharded:
        save_file({"lm_head.weight": head}, str(folder / "head.safetensors"))
        save_file({"model.norm.weight": norm}, str(folder / "norm.safetensors"))
        index_map = {"lm_head.weight": "head.safetensors", "model.norm.weight": "norm.safetensors"}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index_map}))
    else:
        save_file({"lm_head.weight": head, "model.norm.weight": norm}, str(folder / "model.safetensors"))
    return folder


def point_head_at(folder: Path, shard: str) -> None:
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_hand_built_checkpoint_loads(tmp_path):
    assert load_checkpoint(llama_folder(tmp_path / "m")).layer.num_classes == 8


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_shards_must_stay_inside_the_checkpoint(tmp_path, how):
    folder = llama_folder(tmp_path / "m")
    outside = tmp_path / "other.safetensors"  # a valid file: read, it would be audited silently
    save_file({"lm_head.weight": np.full((3, 4), 7.0, np.float32)}, str(outside))
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00TOPSECRET-TOPSECRET")
    for target in (outside, secret):
        if how == "dotdot":
            point_head_at(folder, f"../{target.name}")
        elif how == "absolute":
            point_head_at(folder, str(target))
        else:
            link = folder / "link.safetensors"
            link.unlink(missing_ok=True)
            link.symlink_to(target)
            point_head_at(folder, "link.safetensors")
        with pytest.raises(InputError) as exc:
            load_checkpoint(folder)
        message = one_line(exc)
        assert "model.safetensors.index.json" in message and "TOPSECRET" not in message


def test_single_file_linked_outside_is_refused(tmp_path):
    folder = llama_folder(tmp_path / "m", sharded=False)
    (folder / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    (folder / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(InputError, match="outside the checkpoint folder"):
        load_checkpoint(folder)


def test_hugging_face_cache_snapshot_links_are_followed(tmp_path):
    """The hub cache keeps snapshots/<rev>/file -> ../../blobs/<hash>: that is inside the repository."""
    built = llama_folder(tmp_path / "built")
    snapshot = tmp_path / "models--x--y" / "snapshots" / "abc123"
    blobs = tmp_path / "models--x--y" / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for i, file in enumerate(sorted(built.iterdir())):
        file.rename(blobs / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("../../blobs") / f"blob{i}")
    assert load_checkpoint(snapshot).layer.num_classes == 8


def test_fifo_shard_and_tokenizer_do_not_hang(tmp_path):
    folder = llama_folder(tmp_path / "m")
    os.mkfifo(folder / "fifo.safetensors")
    point_head_at(folder, "fifo.safetensors")
    with deadline(), pytest.raises(InputError, match="not a regular file"):
        load_checkpoint(folder)
    folder = llama_folder(tmp_path / "t")
    os.mkfifo(folder / "tokenizer.json")
    with deadline(), pytest.raises(InputError, match=r"tokenizer\.json: is not a regular file"):
        load_checkpoint(folder)
    os.mkfifo(tmp_path / "w.npz")
    with deadline(), pytest.raises(InputError, match="not a regular file"):
        load_source(tmp_path / "w.npz")


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "config.json"])
def test_model_files_that_are_folders(tmp_path, name):
    folder = llama_folder(tmp_path / "m", sharded=False)
    (folder / "model.safetensors").unlink()
    (folder / name).unlink(missing_ok=True)
    (folder / name).mkdir()
    with pytest.raises(InputError, match=rf"{name}: is a folder, expected a file"):
        load_checkpoint(folder)


def test_torch_floor_has_no_weights_only_bypass(tmp_path, monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floors = [req for reqs in project["optional-dependencies"].values() for req in reqs if req.startswith("torch")]
    assert floors and all(req == "torch>=2.6" for req in floors), floors
    torch.save({"weight": torch.ones(3, 2)}, tmp_path / "m.pt")
    monkeypatch.setattr(torch, "__version__", torch.torch_version.TorchVersion("2.5.1"))
    with pytest.raises(InputError, match="CVE-2025-32434"):
        load_layer(tmp_path / "m.pt")


# ---------------------------------------------------------------- denial of service: bounded by real sizes

def zeros_npz(path: Path, shape: tuple[int, ...], name: str = "bomb") -> Path:
    """A deflated member of zeros: a few kilobytes that expand to 8 * prod(shape) bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
        chunk = bytes(2**20)
        for _ in range(8 * int(np.prod(shape)) // len(chunk)):
            fh.write(chunk)
    return path


def test_npz_bomb_is_listed_from_headers_and_refused(tmp_path, monkeypatch):
    path = zeros_npz(tmp_path / "bomb.npz", (2048, 2048))  # 32 KB on disk, 32 MiB expanded
    assert path.stat().st_size < 100_000
    with peak_memory(4 * 2**20), pytest.raises(InputError, match=r"bomb float64\[2048, 2048\]"):
        load_layer(path)  # no array named 'weight': the error lists what the file holds
    monkeypatch.setattr(arrays_module, "NPZ_EXPAND_FLOOR", 2**20)
    with peak_memory(4 * 2**20), pytest.raises(InputError, match="zip bomb"):
        load_layer(path, ArraySpec(weight="bomb"))


def test_npz_member_size_must_match_its_header(tmp_path):
    header = {"descr": "<f8", "fortran_order": False, "shape": (3, 2)}
    buffer = tmp_path / "member.npy"
    with open(buffer, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(np.ones((3, 2)).tobytes() + bytes(4096))  # trailing bytes the header does not declare
    with zipfile.ZipFile(tmp_path / "extra.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(buffer, "weight.npy")
    with pytest.raises(InputError, match=r"'weight' declares float64\[3, 2\] \(48 bytes\)"):
        load_layer(tmp_path / "extra.npz")
    # A header that claims 8 TB over 48 bytes of data: refused before anything is allocated.
    header["shape"] = (10**6, 10**6)
    with open(buffer, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(np.ones((3, 2)).tobytes())
    with zipfile.ZipFile(tmp_path / "huge.npz", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(buffer, "weight.npy")
    with peak_memory(2**20), pytest.raises(InputError, match=r"declares float64\[1000000, 1000000\]"):
        load_layer(tmp_path / "huge.npz")
    buffer.rename(tmp_path / "huge.npy")
    with peak_memory(2**20), pytest.raises(InputError, match=r"declares float64\[1000000, 1000000\]"):
        load_layer(tmp_path / "huge.npy")


def test_layernorm_fold_of_a_wide_layer_needs_no_d_by_d_matrix(tmp_path):
    rng = np.random.default_rng(2)
    d = 4000  # a dense basis would take 3 * 128 MB here (and 12.8 GB at the d = 40000)
    np.savez(tmp_path / "wide.npz", weight=rng.normal(size=(3, d)), g=rng.normal(size=d), b=rng.normal(size=d))
    with peak_memory(16 * 2**20):
        loaded = load_source(tmp_path / "wide.npz", SourceRequest(norm="layernorm", norm_weight="g",
                                                                  norm_bias="b"))
    assert loaded.layer.weight.shape == (3, d - 1)
    # the implicit basis gives the fold and the features that the dense Householder basis gave
    small = 9
    v = np.full(small, 1.0 / np.sqrt(small))
    v[0] -= 1.0
    dense = (np.eye(small) - 2.0 * np.outer(v, v) / (v @ v))[:, 1:]
    np.testing.assert_allclose(MeanZeroBasis(small).to_dense(), dense, atol=1e-15)
    weight, gamma = rng.normal(size=(5, small)), rng.normal(size=small)
    folded = fold_norm(OutputLayer.from_arrays(weight), "layernorm", gamma)
    np.testing.assert_allclose(folded.layer.weight, (weight * gamma) @ dense, rtol=1e-13, atol=1e-14)
    hidden = rng.normal(size=(2, 3, small))
    centred = hidden - hidden.mean(-1, keepdims=True)
    z = centred / np.sqrt((centred**2).mean(-1, keepdims=True) + folded.eps)
    np.testing.assert_allclose(folded.fold_features(hidden), z @ dense, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_checkpoint_json_is_bounded(tmp_path, name, monkeypatch):
    folder = llama_folder(tmp_path / "m")
    path = folder / name
    good = path.read_text()
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="nested too deeply"):
        load_checkpoint(folder)
    path.write_text(good)
    monkeypatch.setattr(hf_module, "CONFIG_JSON_LIMIT" if name == "config.json" else "INDEX_JSON_LIMIT", 10)
    with pytest.raises(InputError, match=rf"{name}: \d+ bytes of JSON, more than the 10"):
        load_checkpoint(folder)


# ---------------------------------------------------------------- malformed files: one line, not a traceback

@pytest.mark.parametrize("config,key", [
    ([1, 2], "JSON object"), (None, "JSON object"), ("gpt2", "JSON object"), (3.5, "JSON object"),
    ({"model_type": 3}, "'model_type'"), ({"model_type": ["llama"]}, "'model_type'"),
    ({"model_type": "llama", "tie_word_embeddings": "yes"}, "'tie_word_embeddings'"),
    ({"model_type": "llama", "tie_word_embeddings": False, "rms_norm_eps": "abc"}, "'rms_norm_eps'"),
    ({"model_type": "llama", "tie_word_embeddings": False, "rms_norm_eps": True}, "'rms_norm_eps'"),
    ({"model_type": "llama", "tie_word_embeddings": False, "rms_norm_eps": -1.0}, "'rms_norm_eps'"),
    ({"model_type": "bart", "decoder_layers": "x"}, "'decoder_layers'"),
    ({"model_type": "bart", "decoder_layers": 1.5}, "'decoder_layers'"),
    ({"model_type": "bart", "decoder_layers": 0}, "'decoder_layers'"),
    ({"model_type": "opt", "hidden_size": "16"}, "'hidden_size'"),
])
def test_config_of_wrong_types(tmp_path, config, key):
    folder = llama_folder(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError) as exc:
        load_checkpoint(folder)
    message = one_line(exc)
    assert "config.json" in message and key in message


def test_index_of_wrong_types(tmp_path):
    folder = llama_folder(tmp_path / "m")
    for index in ([], {"weight_map": []}, {"weight_map": {"lm_head.weight": 3}}, {"weight_map": None}):
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(InputError, match="not a valid shard index"):
            load_checkpoint(folder)


def test_checkpoint_tensor_without_real_numbers(tmp_path):
    folder = llama_folder(tmp_path / "m", norm_dtype=bool)
    with pytest.raises(InputError, match=r"norm\.safetensors: tensor 'model\.norm\.weight' has dtype BOOL"):
        load_checkpoint(folder)


def _sparse():
    return torch.ones(3, 2).to_sparse()


def _quantized():
    return torch.quantize_per_tensor(torch.ones(3, 2), 0.1, 0, torch.qint8)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("make,reason", [
    (_sparse, "sparse_coo tensor"),
    (_quantized, "quantized tensor"),
    (lambda: torch.ones(3, 2, device="meta"), "meta tensor"),
    (lambda: torch.ones(3, 2, dtype=torch.bool), "dtype bool"),
    (lambda: torch.ones(3, 2, dtype=torch.complex64), "complex"),
])
def test_pt_tensors_without_plain_values(tmp_path, make, reason):
    torch.save({"weight": make()}, tmp_path / "m.pt")
    with pytest.raises(InputError) as exc:
        load_layer(tmp_path / "m.pt")
    message = one_line(exc)
    assert "m.pt:weight" in message and reason in message


def test_pickled_module_is_one_short_line(tmp_path):
    torch.save(torch.nn.Linear(2, 3), tmp_path / "module.pt")
    with pytest.raises(InputError) as exc:
        load_layer(tmp_path / "module.pt")
    message = one_line(exc)
    assert "module.pt" in message and "Linear" in message and "state_dict()" in message
    assert len(message) < 400


@pytest.mark.parametrize("weight,reason", [
    (np.ones((3, 2), dtype=bool), "dtype bool"),
    (np.ones((3, 2), dtype=np.complex128), "complex"),
    (np.array([["a", "b"], ["c", "d"]]), "dtype <U1"),
])
def test_npz_weights_without_real_numbers(tmp_path, weight, reason):
    np.savez(tmp_path / "m.npz", weight=weight)
    with pytest.raises(InputError, match=reason):
        load_layer(tmp_path / "m.npz")


def test_norm_vector_without_real_numbers(tmp_path):
    np.savez(tmp_path / "m.npz", weight=np.ones((3, 2)), g=np.array([True, False]))
    with pytest.raises(InputError, match=r"m\.npz: 'g' has dtype bool"):
        load_source(tmp_path / "m.npz", SourceRequest(norm="rmsnorm", norm_weight="g"))


# ---------------------------------------------------------------- the library API (class 10)

@pytest.mark.parametrize("weight,reason", [
    ([[1.0, 2.0], [3.0]], "not a rectangular array"),
    ([[1.0, 2.0], [3.0, [4.0]]], "not a rectangular array"),
    (torch.ones(3, 2, device="meta"), "meta tensor"),
    ({"weight": [1.0]}, "dtype object"),
])
def test_from_arrays_refuses_what_has_no_float64_values(weight, reason):
    with pytest.raises(InputError, match=reason):
        OutputLayer.from_arrays(weight)


def test_from_arrays_checks_finiteness_after_widening():
    if np.finfo(np.longdouble).max <= np.finfo(np.float64).max:
        pytest.skip("long double is float64 on this platform")
    weight = np.array([[1e300, 0.0], [0.0, 1.0]], dtype=np.longdouble) * np.longdouble(1e100)  # finite here
    with pytest.raises(InputError, match="non-finite value"):
        OutputLayer.from_arrays(weight)


@pytest.mark.parametrize("weight", [
    np.ones((1, 3)), np.array([[1.0, 0.0], [0.0, 1.0]]), [[1.0, 2.0]],
    np.array([[1e307, -1e307], [-1e307, 1e307], [5e306, 1e307]]),
    np.array([[1e-320, -1e-320], [-1e-320, 1e-320], [2e-320, 0.0]]),  # subnormal
])
def test_from_arrays_accepts_tiny_and_extreme_layers(weight):
    layer = OutputLayer.from_arrays(weight)
    np.testing.assert_array_equal(layer.weight, np.asarray(weight, dtype=float))


def test_pickle_refusal_with_a_library_warning_is_one_line(tmp_path):
    """torch.load warns (two lines) about a pickle protocol before refusing the file: the CLI printed three
    lines. A library's warnings never add lines to the one error line, and its prose loses its breaks."""
    import pickle  # noqa: PLC0415

    path = tmp_path / "pickled.pt"
    path.write_bytes(pickle.dumps({"weight": [[1.0, 2.0]]}, protocol=4))
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(path)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("argmaxcheck: error:"), proc.stderr
    assert "pickled.pt" in proc.stderr and "\\n" not in proc.stderr


def test_one_line_collapses_a_librarys_line_breaks_and_escapes_the_rest():
    from argmaxcheck._text import one_line  # noqa: PLC0415

    assert one_line("Unsupported operand 149\n\n  Check the documentation\r\n") == \
        "Unsupported operand 149 Check the documentation"
    assert one_line("a\x1b[2J\tb\u2028c") == "a\\x1b[2J\\tb c"


@pytest.mark.parametrize(("code", "shown"), [(0, True), (1, True), (2, False), (3, False)])
def test_library_warnings_are_one_line_after_a_verdict_and_silent_after_a_failure(monkeypatch, capsys, code, shown):
    import warnings  # noqa: PLC0415

    from argmaxcheck import cli  # noqa: PLC0415

    def command(args):
        warnings.warn("Detected pickle protocol 4\n  return Unpickler(file).load()\x1b[2J", UserWarning, stacklevel=1)
        if code == 2:
            raise InputError("m.pt: refused")
        if code == 3:
            raise RuntimeError("a bug")
        return code

    monkeypatch.setattr(cli, "_audit_command", command)
    assert cli.main(["audit", "m.pt"]) == code
    lines = capsys.readouterr().err.splitlines()
    warning = "argmaxcheck: warning: Detected pickle protocol 4 return Unpickler(file).load()\\x1b[2J"
    assert (warning in lines) == shown and len(lines) == (1 if code >= 2 else 1 if shown else 0)


def test_a_layer_copies_its_weights_unless_told_it_may_keep_them():
    """By default a layer never aliases the caller's array; with copy=False it keeps a float64, C-ordered
    one (a folded head nobody else holds) and still turns -0.0 into 0.0 and refuses non-finite values."""
    weight = np.array([[1.0, -0.0], [2.0, 3.0]])
    copied = OutputLayer.from_arrays(weight)
    assert not np.shares_memory(copied.weight, weight) and np.signbit(weight[0, 1])
    kept = OutputLayer.from_arrays(weight, copy=False)
    assert kept.weight is weight and not np.signbit(weight[0, 1])
    strided = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])[:, ::2]  # not C-ordered: copied whatever copy says
    assert not np.shares_memory(OutputLayer.from_arrays(strided, copy=False).weight, strided)
    with pytest.raises(InputError, match=r"non-finite|inf"):
        OutputLayer.from_arrays(np.array([[1.0, np.inf], [2.0, 3.0]]), copy=False)


def test_the_mean_zero_basis_folds_a_block_of_rows_at_a_time_as_it_folds_them_all(rng):
    small = 9
    weight, gamma = rng.normal(size=(11, small)), rng.normal(size=small)
    basis = MeanZeroBasis(small)
    whole = basis.apply(weight * gamma)
    # BLAS may round a row otherwise in a block of another size (so the fold folds distinct rows once).
    np.testing.assert_allclose(basis.apply(weight, gamma, block=3), whole, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(whole, (weight * gamma) @ basis.to_dense(), rtol=1e-13, atol=1e-14)
    assert basis.apply(weight[None], gamma).shape == (1, 11, small - 1)  # leading axes kept
