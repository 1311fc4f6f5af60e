"""The command line as a user runs it: exit codes, one-line errors, reports, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PPOCR = ROOT / "data" / "ppocrv4_rec_head.npz"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "argmaxcheck", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


@pytest.fixture
def layer_file(tmp_path, rng):
    weight = rng.normal(size=(150, 3))
    weight[10] = weight[11]  # a tie
    path = tmp_path / "layer.npz"
    np.savez(path, weight=weight, tokens=np.array([f"t{i}" for i in range(150)]))
    return path, weight


def test_json_report_and_exit_code(layer_file, tmp_path):
    path, _ = layer_file
    out = tmp_path / "report.json"
    proc = run("audit", path, "--format", "json", "--output", out)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    s = report["summary"]
    assert (s["num_classes"], s["dim"], s["domain"]) == (150, 3, {"kind": "unbounded"})
    assert s["argmaxable"] + s["unargmaxable"] + s["undecided"] == 150
    assert report["unargmaxable"] == sorted(report["unargmaxable"])
    assert {10, 11} <= set(report["unargmaxable"])
    tie = next(t for t in report["tokens"] if t["id"] == 10)
    assert tie["tie_with"] == 11 and tie["token"] == "t10"
    assert all(t["verdict"] != "argmaxable" for t in report["tokens"])
    assert "seconds" in s


def test_all_argmaxable_exits_zero(tmp_path, rng):
    path = tmp_path / "simplex.npy"
    np.save(path, np.vstack([np.eye(4), -np.ones((1, 4))]))
    proc = run("audit", path)
    assert proc.returncode == 0, proc.stderr
    assert "5 argmaxable, 0 unargmaxable, 0 practically unreachable, 0 undecided" in proc.stdout


def test_table_names_tokens_and_explains(layer_file):
    path, _ = layer_file
    proc = run("audit", path, "--tokens", "10,t12,20-22")
    assert proc.returncode == 1
    assert "audited 5" in proc.stdout
    assert "tie" in proc.stdout and "'t10'" in proc.stdout


def test_subset_and_domains(layer_file, tmp_path):
    path, _ = layer_file
    for extra in (["--domain", "box", "--bound", "2"], ["--domain", "box", "--lower", "0"],
                  ["--domain", "ball", "--radius", "3"]):
        out = tmp_path / "r.json"
        proc = run("audit", path, "--tokens", "0-30", "--format", "json", "--output", out, *extra)
        assert proc.returncode in (0, 1), proc.stderr
        assert json.loads(out.read_text())["summary"]["audited"] == 31


def test_save_certificates(layer_file, tmp_path):
    path, _ = layer_file
    certs = tmp_path / "c.npz"
    proc = run("audit", path, "--save-certificates", certs, "--quiet")
    assert proc.returncode == 1
    data = np.load(certs)
    assert data["ids"].size == 150 and data["cert_ids"].size + data["witness_ids"].size == 150


@pytest.mark.parametrize("args,fragment", [
    (["audit", "{missing}"], "no such file"),
    (["audit", "{path}", "--weight", "W"], "no array named 'W'; it has: weight float64[150, 3], tokens"),
    (["audit", "{path}", "--domain", "ball"], "--domain ball needs --radius"),
    (["audit", "{path}", "--radius", "2"], "--radius needs --domain ball"),
    (["audit", "{path}", "--bound", "2"], "--bound needs --domain box"),
    (["audit", "{path}", "--domain", "box"], "--domain box needs --bound"),
    (["audit", "{path}", "--domain", "box", "--bound", "-1"], "--bound must be"),
    (["audit", "{path}", "--domain", "box", "--lower", "1", "--upper", "0"], "lower > upper"),
    (["audit", "{path}", "--tokens", "999"], "out of range"),
    (["audit", "{path}", "--tokens", "zzz"], "neither a row id"),
    (["audit", "{path}", "--output", "{tmp}/no/such/dir/r.json"], "does not exist"),
    (["audit", "{path}", "--save-certificates", "{tmp}/c.txt"], "must end in .npz"),
    (["audit", "{nan}"], "row 4"),
    (["audit", "{path}", "--format", "xml"], "invalid choice"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_2(layer_file, tmp_path, args, fragment):
    path, weight = layer_file
    bad = weight.copy()
    bad[4, 0] = np.nan
    np.savez(tmp_path / "nan.npz", weight=bad)
    subs = {"path": path, "missing": tmp_path / "missing.npz", "tmp": tmp_path, "nan": tmp_path / "nan.npz"}
    proc = run(*[a.format(**subs) for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert fragment in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    if "usage" not in proc.stderr:
        assert len(lines) == 1


def test_failed_run_leaves_existing_output_untouched(layer_file, tmp_path):
    path, _ = layer_file
    out = tmp_path / "keep.json"
    out.write_text("precious")
    proc = run("audit", path, "--tokens", "999", "--format", "json", "--output", out)
    assert proc.returncode == 2
    assert out.read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".argmaxcheck-")] == []


def test_bundled_ppocr_subset_names_characters(tmp_path):
    """The default data: a slice of the real PP-OCRv4 head, with characters by name."""
    out = tmp_path / "pp.json"
    proc = run("audit", PPOCR, "--tokens", "30-200", "--format", "json", "--output", out)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["bias"] is True and report["summary"]["source_dtype"] == "float32"
    found = {t["id"]: t for t in report["tokens"]}
    assert 37 in found and found[37]["token"] == "刈"
    assert found[37]["certificate"]["top"][0]["token"]
