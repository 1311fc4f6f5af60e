"""Fuzz the command line with truncated and byte-flipped copies of every file format it reads.

Each case must end as the README promises: exit 0 or 1 with a report, or exit 2 with one line on
stderr. Never a traceback (exit 3, an internal error, fails the test), never more than 2 GB of
memory or 60 s in all. The cases run in one child process (imports once), under an address-space
limit and with a per-case alarm, so a hang or a runaway allocation fails the test instead of CI.
"""

import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

DRIVER = r"""
import io, json, resource, signal, sys, contextlib
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # virtual: BLAS pools reserve more than they touch
from argmaxcheck.cli import main

def alarm(*_):
    raise TimeoutError("case took too long")

signal.signal(signal.SIGALRM, alarm)
results = []
for case in json.loads(Path(sys.argv[1]).read_text()):
    err, out = io.StringIO(), io.StringIO()
    signal.alarm(20)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["audit", case, "--quiet", "--format", "text", "--no-max-probability"])
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:  # what main() let through: a failure of the promise
        code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
    results.append({"case": case, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()[:200]})
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"results": results, "peak_mb": peak_mb}))
"""


def _seeds(tmp: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(40, 6)).astype(np.float32)
    seeds = []
    np.savez(tmp / "layer.npz", weight=weight, bias=rng.normal(size=40).astype(np.float32),
             tokens=np.array([f"t{i}" for i in range(40)]))
    seeds.append(tmp / "layer.npz")
    np.save(tmp / "layer.npy", weight)
    seeds.append(tmp / "layer.npy")
    from safetensors.numpy import save_file  # noqa: PLC0415

    save_file({"weight": weight, "bias": rng.normal(size=40).astype(np.float32)}, str(tmp / "layer.safetensors"))
    seeds.append(tmp / "layer.safetensors")
    torch = pytest.importorskip("torch")
    torch.save({"weight": torch.from_numpy(weight)}, tmp / "layer.pt")
    seeds.append(tmp / "layer.pt")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    graph = helper.make_graph(
        [helper.make_node("Relu", ["h"], ["x"]), helper.make_node("MatMul", ["x", "W"], ["z"]),
         helper.make_node("Add", ["z", "b"], ["y"]), helper.make_node("Softmax", ["y"], ["p"])], "g",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 6])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 40])],
        [numpy_helper.from_array(weight.T.copy(), "W"), numpy_helper.from_array(rng.normal(size=40).astype(np.float32),
                                                                                "b")])
    onnx.save(helper.make_model(graph), str(tmp / "model.onnx"))
    seeds.append(tmp / "model.onnx")
    return seeds


def _mutations(data: bytes, rng: np.random.Generator) -> list[bytes]:
    """Truncations at fixed and random places, and single-byte flips."""
    n = len(data)
    cuts = sorted({0, 1, 8, 64, n // 4, n // 2, 3 * n // 4, n - 1, *rng.integers(0, n, 4).tolist()})
    out = [data[:c] for c in cuts if c < n]
    for pos in rng.integers(0, n, 10).tolist():
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        out.append(bytes(flipped))
    return out


def _one_line_error(result: dict) -> bool:
    """The promise for a run that gave no report: exit 2 and one line on stderr, ours."""
    return result["code"] == 2 and result["stderr"].count("\n") == 1 \
        and result["stderr"].startswith("argmaxcheck: error:")


def test_fuzzed_inputs_end_in_a_report_or_one_line(tmp_path):
    rng = np.random.default_rng(1)
    cases = []
    seed_dir = tmp_path / "seeds"
    seed_dir.mkdir()
    for seed in _seeds(seed_dir):
        for k, data in enumerate(_mutations(seed.read_bytes(), rng)):
            target = tmp_path / f"{seed.stem}-{k}{seed.suffix}"
            target.write_bytes(data)
            cases.append(str(target))
    # A checkpoint folder: its config.json, tokenizer.json and weights, each mutated in turn.
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        original = (ROOT / "data" / "tiny-gpt2" / name).read_bytes()
        for k, data in enumerate(_mutations(original, rng)[::2]):
            folder = tmp_path / f"ckpt-{name}-{k}"
            shutil.copytree(ROOT / "data" / "tiny-gpt2", folder)
            (folder / name).write_bytes(data)
            cases.append(str(folder))
    _assert_promise_kept(cases, tmp_path)


def _assert_promise_kept(cases: list[str], tmp_path: Path, env: dict | None = None) -> list[dict]:
    """Run ``argmaxcheck audit CASE`` for every case in one child process; each must end in a report
    (exit 0 or 1) or one error line (exit 2). Returns the results."""
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps(cases))
    full_env = None if env is None else {**{k: v for k, v in os.environ.items() if not k.startswith("HF_")}, **env}
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(listing)], capture_output=True, text=True, check=False,
                          timeout=120, cwd=ROOT, env=full_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout)
    bad = []
    for r in outcome["results"]:
        if r["code"] in (0, 1):
            ok = bool(r["stdout"])  # a report was printed
        else:
            ok = _one_line_error(r)
        if not ok:
            bad.append((Path(r["case"]).name, r["code"], r["stderr"][-300:]))
    assert not bad, f"{len(bad)} of {len(outcome['results'])} cases broke the promise: {bad[:5]}"
    assert outcome["peak_mb"] < 2048, outcome["peak_mb"]
    return outcome["results"]


# ---------------------------------------------------------------- GGUF headers

def _header_fields(data: bytes) -> list[tuple[int, str]]:
    """(offset, struct format) of every count and length in a little-endian GGUF header: the tensor and
    metadata counts, each string and array length, each value and array type, each tensor's dimension
    count, dimensions, ggml type and data offset."""
    fields, pos = [(8, "<Q"), (16, "<Q")], 24
    tensors, kvs = struct.unpack_from("<QQ", data, 8)

    def string():
        nonlocal pos
        fields.append((pos, "<Q"))
        pos += 8 + struct.unpack_from("<Q", data, pos)[0]

    def value(kind):
        nonlocal pos
        sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
        if kind in sizes:
            pos += sizes[kind]
        elif kind == 8:
            string()
        else:  # an array
            item, n = struct.unpack_from("<IQ", data, pos)
            fields.extend([(pos, "<I"), (pos + 4, "<Q")])
            pos += 12
            for _ in range(n):
                value(item)

    for _ in range(kvs):
        string()
        fields.append((pos, "<I"))
        pos += 4
        value(struct.unpack_from("<I", data, pos - 4)[0])
    for _ in range(tensors):
        string()
        n_dims = struct.unpack_from("<I", data, pos)[0]
        fields.append((pos, "<I"))
        fields.extend((pos + 4 + 8 * k, "<Q") for k in range(n_dims))
        pos += 4 + 8 * n_dims
        fields.extend([(pos, "<I"), (pos + 4, "<Q")])
        pos += 12
    return fields


def test_fuzzed_gguf_headers_end_in_a_report_or_one_line(tmp_path):
    """Every count and length of a small GGUF's header set to 0, small, 2^40 and the maximum (a
    claimed 2^40-entry array ran GGUFReader past 2 GB), plus truncations and byte flips."""
    from gguf_helpers import write_gguf  # noqa: PLC0415

    rng = np.random.default_rng(3)
    seed = write_gguf(tmp_path / "seed.gguf", rng.normal(size=(8, 32)).astype(np.float32), np.ones(32),
                      tokens=[f"t{i}" for i in range(8)], token_types=[1] * 8)
    data = seed.read_bytes()
    values = {"<Q": (0, 7, 2**40, 2**64 - 1), "<I": (0, 13, 2**32 - 1)}
    cases = []
    for k, (at, fmt) in enumerate(_header_fields(data)):
        for value in values[fmt]:
            mutated = bytearray(data)
            struct.pack_into(fmt, mutated, at, value)
            target = tmp_path / f"field{k}-{value}.gguf"
            target.write_bytes(bytes(mutated))
            cases.append(str(target))
    for k, mutated in enumerate(_mutations(data, rng)):
        (tmp_path / f"mutated{k}.gguf").write_bytes(mutated)
        cases.append(str(tmp_path / f"mutated{k}.gguf"))
    results = _assert_promise_kept(cases, tmp_path)
    assert len(results) > 120 and sum(r["code"] == 2 for r in results) > 100


# ---------------------------------------------------------------- Hugging Face cache layouts

def test_hub_cache_layouts_end_in_a_report_or_one_line(tmp_path):
    """refs/ files that escape the cache or are not files, snapshots and files linked outside it, and
    revisions that walk paths: each an exit-2 line (a refs/ escape was a ValueError, exit 3)."""
    from hub_helpers import COMMIT, OTHER, cache_repo, tiny_files  # noqa: PLC0415

    cache, outside = tmp_path / "hub", tmp_path / "outside"
    outside.mkdir()
    files = tiny_files()
    for name, data in files.items():
        (outside / name).write_bytes(data)
    (outside / "ref").write_text(COMMIT)
    cases = []

    def repo(k: int) -> Path:
        cases.append(f"org/c{k}")
        return cache_repo(cache, f"org/c{k}", {"config.json": files["config.json"]})

    refs = ["../../../../outside", "/etc/passwd", "", "\x00\x01", COMMIT + "\n", COMMIT.upper(), "x" * 5000, OTHER,
            "../" + COMMIT[3:], "snapshots/../../" + COMMIT[:24]]
    for k, text in enumerate(refs):
        (repo(k) / "refs" / "main").write_text(text)
    k = len(refs)
    ref = repo(k) / "refs" / "main"  # linked outside the cache
    ref.unlink()
    ref.symlink_to(outside / "ref")
    ref = repo(k + 1) / "refs" / "main"  # a folder
    ref.unlink()
    ref.mkdir()
    ref = repo(k + 2) / "refs" / "main"  # a FIFO: opening it would block
    ref.unlink()
    os.mkfifo(ref)
    ref = repo(k + 3) / "refs" / "main"  # dangling, and a loop
    ref.unlink()
    ref.symlink_to(tmp_path / "nowhere")
    ref = repo(k + 4) / "refs" / "main"
    ref.unlink()
    ref.symlink_to(ref)
    snapshot = repo(k + 5) / "snapshots" / COMMIT  # the snapshot folder linked outside
    shutil.rmtree(snapshot)
    snapshot.symlink_to(outside)
    snapshot = repo(k + 6) / "snapshots" / COMMIT  # a file, not a folder
    shutil.rmtree(snapshot)
    snapshot.write_text("x")
    for j, target in enumerate([outside / "config.json", tmp_path / "nowhere", None]):
        link = repo(k + 7 + j) / "snapshots" / COMMIT / "config.json"  # a file linked outside, dangling, a loop
        link.unlink()
        link.symlink_to(target or link)
    (repo(k + 10) / "blobs" / next(p.name for p in (cache / "models--org--c" f"{k + 10}" / "blobs").iterdir())
     ).write_bytes(b"{not json")
    root = repo(k + 11)  # the repository's whole folder linked outside the cache
    shutil.move(str(root), str(outside / "repo"))
    root.symlink_to(outside / "repo")
    repo(k + 12)
    cases += [f"org/c{k + 12}@{rev}" for rev in ("..", "main/../../x", "a//b", f"{COMMIT}/../x", "./main",
                                                  "refs/pr/1", OTHER)]
    results = _assert_promise_kept(cases, tmp_path, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert all(r["code"] == 2 for r in results), [r for r in results if r["code"] != 2]




# --------------------------------------------------------------------------- resume journals

JOURNAL_DRIVER = r"""
import io, json, resource, signal, sys, contextlib
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
from argmaxcheck.cli import main

def alarm(*_):
    raise TimeoutError("case took too long")

signal.signal(signal.SIGALRM, alarm)
spec = json.loads(Path(sys.argv[1]).read_text())
results = []
for folder in spec["cases"]:
    err, out = io.StringIO(), io.StringIO()
    signal.alarm(20)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(["audit", spec["layer"], "--chunk-size", "8", "--resume", folder, "--quiet",
                         "--format", "json", "--no-max-probability", "--save-certificates", folder + ".npz"])
    except SystemExit as exc:
        code = exc.code
    except BaseException as exc:
        code, err = -1, io.StringIO(f"{type(exc).__name__}: {exc}")
    finally:
        signal.alarm(0)
    results.append({"case": folder, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print(json.dumps(results))
"""


def _rehash(folder: Path, k: int, raw: bytes | None = None, meta: dict | None = None) -> None:
    """Write chunk ``k``'s data and/or manifest with every hash recomputed (a forger who knows the format)."""
    import hashlib  # noqa: PLC0415

    manifest = folder / f"chunk-{k:06d}.json"
    if raw is not None:
        (folder / f"chunk-{k:06d}.npz").write_bytes(raw)
    meta = dict(json.loads(manifest.read_text()) if meta is None else meta)
    meta.pop("checksum", None)
    if raw is not None:
        meta["sha256"] = hashlib.sha256(raw).hexdigest()
    with contextlib.suppress(TypeError, ValueError):
        meta["checksum"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps(meta))


def _array_forgeries(arrays: dict, rng: np.random.Generator) -> list[dict]:
    """Edited chunk arrays: verdicts, witnesses, certificates, ids and shapes changed."""
    out = []
    n = arrays["id"].size
    for _ in range(10):
        a = {k: v.copy() for k, v in arrays.items()}
        what = int(rng.integers(0, 7))
        k = int(rng.integers(0, n))
        if what == 0:
            verdicts = a["verdict"].tolist()
            verdicts[k] = str(rng.choice(["argmaxable", "unargmaxable", "practically_unreachable", "undecided",
                                          "maybe", ""]))
            a["verdict"] = np.array(verdicts)
        elif what == 1 and a["witness"].size:
            a["witness"] = a["witness"] + rng.normal(size=a["witness"].shape) * 10.0 ** rng.integers(-12, 2)
        elif what == 2 and a["weights"].size:
            a["weights"] = rng.permutation(a["weights"])
        elif what == 3 and a["support"].size:
            a["support"] = rng.integers(-2, 45, size=a["support"].size)
        elif what == 4:
            a["id"] = a["id"] + int(rng.choice([-1, 1, 10 ** 9, -(10 ** 9)]))
        elif what == 5:
            key = str(rng.choice(sorted(a)))
            a[key] = a[key][: max(0, a[key].shape[0] - 1)] if a[key].ndim else a[key]
        else:
            a["tie_with"] = rng.integers(-1, 40, size=n)
        out.append(a)
    return out


def _json_forgeries(meta: dict, rng: np.random.Generator) -> list[dict]:
    junk = [None, "x", -1, 10 ** 30, 1e308, [], {}, [[[[1]]]], True, {"kind": "box", "lower": 0.0, "upper": 1.0}]
    out = []
    for _ in range(8):
        m = dict(meta)
        key = str(rng.choice(sorted(m)))
        if rng.random() < 0.3:
            del m[key]
        else:
            m[key] = junk[int(rng.integers(0, len(junk)))]
        out.append(m)
    return out


def _proofs_hold(certificates: Path, weight: np.ndarray) -> bool:
    """Every witness and certificate in a certificate file checks out on R^d."""
    from argmaxcheck import Unbounded  # noqa: PLC0415
    from argmaxcheck.engine import certify  # noqa: PLC0415

    with np.load(certificates) as z:
        c = {k: z[k] for k in z.files}
    norms = np.linalg.norm(weight, axis=1)
    for i, x in zip(c["witness_ids"], c["witness"], strict=True):
        if not certify.check_witness(weight, None, int(i), x, Unbounded().resolve(weight.shape[1]), norms) > 0:
            return False
    for k, i in enumerate(c["cert_ids"]):
        lo, hi = c["cert_ptr"][k], c["cert_ptr"][k + 1]
        if not certify.check_certificate(weight, None, int(i), c["cert_support"][lo:hi], c["cert_weights"][lo:hi],
                                         Unbounded()).ok:
            return False
    return True


def test_fuzzed_journals_end_in_a_correct_report_or_one_line(tmp_path):
    """Byte flips, truncations and format-aware forgeries of a real journal: never a wrong verdict or exit 3."""
    import io  # noqa: PLC0415

    from argmaxcheck import audit  # noqa: PLC0415
    from argmaxcheck.cli import main  # noqa: PLC0415

    rng = np.random.default_rng(2)
    weight = rng.normal(size=(40, 5))
    weight[20:30] = rng.dirichlet(np.ones(4), size=10) @ weight[:4]
    layer = tmp_path / "layer.npz"
    np.savez(layer, weight=weight)
    truth = {t.id: t.verdict for t in audit(weight).tokens}
    seed = tmp_path / "seed"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["audit", str(layer), "--chunk-size", "8", "--resume", str(seed), "--quiet",
                     "--format", "json", "--no-max-probability"]) in (0, 1)
    cases: list[str] = []

    def case(edit) -> None:
        folder = tmp_path / f"case-{len(cases)}"
        shutil.copytree(seed, folder)
        (folder / ".argmaxcheck-lock").unlink(missing_ok=True)
        edit(folder)
        cases.append(str(folder))

    for name in ("header.json", "chunk-000001.json", "chunk-000002.npz"):
        original = (seed / name).read_bytes()
        for data in _mutations(original, rng)[::2]:
            case(lambda f, name=name, data=data: (f / name).write_bytes(data))
    for depth in (1000, 100_000):
        for name in ("header.json", "chunk-000003.json"):
            case(lambda f, name=name, depth=depth: (f / name).write_text("[" * depth + "]" * depth))
    with np.load(seed / "chunk-000003.npz") as z:
        arrays = {k: z[k] for k in z.files}
    for forged in _array_forgeries(arrays, rng):
        buffer = io.BytesIO()
        np.savez(buffer, **forged)
        raw = buffer.getvalue()
        case(lambda f, raw=raw: _rehash(f, 3, raw=raw))
    meta = json.loads((seed / "chunk-000004.json").read_text())
    for forged in _json_forgeries(meta, rng):
        case(lambda f, m=forged: _rehash(f, 4, meta=m))

    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps({"layer": str(layer), "cases": cases}))
    proc = subprocess.run([sys.executable, "-c", JOURNAL_DRIVER, str(listing)], capture_output=True, text=True,
                          check=False, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = []
    for r in json.loads(proc.stdout):
        if r["code"] in (0, 1):
            report = json.loads(r["stdout"])
            claimed = {t["id"]: t["verdict"] for t in report["tokens"]}
            wrong = [i for i, v in truth.items() if claimed.get(i, "argmaxable") != v]
            ok = not wrong and report["summary"]["domain"] == {"kind": "unbounded"} and \
                _proofs_hold(Path(r["case"] + ".npz"), weight)
        else:
            ok = _one_line_error(r)
        if not ok:
            bad.append((Path(r["case"]).name, r["code"], r["stderr"][-300:]))
    assert not bad, f"{len(bad)} of {len(cases)} journal cases broke the promise: {bad[:5]}"
