"""Fuzz the command line with truncated and byte-flipped copies of every file format it reads.

Each case must end as the README promises: exit 0 or 1 with a report, or exit 2 with one line on
stderr. Never a traceback (exit 3, an internal error, fails the test), never more than 2 GB of
memory or 60 s in all. The cases run in one child process (imports once), under an address-space
limit and with a per-case alarm, so a hang or a runaway allocation fails the test instead of CI.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

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
    listing = tmp_path / "cases.json"
    listing.write_text(json.dumps(cases))
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(listing)], capture_output=True, text=True, check=False,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = json.loads(proc.stdout)
    bad = []
    for r in outcome["results"]:
        if r["code"] in (0, 1):
            ok = bool(r["stdout"])  # a report was printed
        elif r["code"] == 2:
            ok = r["stderr"].count("\n") == 1 and r["stderr"].startswith("argmaxcheck: error:")
        else:
            ok = False
        if not ok:
            bad.append((Path(r["case"]).name, r["code"], r["stderr"][-300:]))
    assert not bad, f"{len(bad)} of {len(outcome['results'])} cases broke the promise: {bad[:5]}"
    assert outcome["peak_mb"] < 2048, outcome["peak_mb"]
