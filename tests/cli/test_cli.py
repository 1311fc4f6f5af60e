"""The command line as a user runs it: exit codes, one-line errors, reports, nothing half-written."""

import json
import shutil
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import cli

ROOT = Path(__file__).resolve().parents[2]
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
    proc = run("audit", path, "--tokens", "10,20-22,name:t12")
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
    (["audit", "{path}", "--tokens", "zzz"], "is not a row id or an id range; select a token by its text with name:"),
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


# --- exit codes: 2 bad input (one line), 3 internal error, 130 interrupted; checks before the audit ---

def _main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def small(tmp_path, rng):
    path = tmp_path / "small.npz"
    np.savez(path, weight=rng.normal(size=(24, 3)), tokens=np.array([f"t{i}" for i in range(24)]))
    return path


def test_internal_error_is_exit_3_one_line_and_debug_shows_the_traceback(small, capsys, monkeypatch):
    def crash(*_args, **_kwargs):
        raise RuntimeError("solver exploded\n\x1b[2Jsecond line")

    monkeypatch.setattr(cli, "audit", crash)
    code, _, err = _main(capsys, "audit", small)
    assert code == cli.EXIT_INTERNAL == 3
    assert err.count("\n") == 1 and "\x1b" not in err and "Traceback" not in err
    assert err.startswith("argmaxcheck: internal error: RuntimeError: solver exploded\\n\\x1b[2Jsecond line")
    assert err.rstrip().endswith("(run with --debug for the traceback)")
    for args in (["--debug", "audit", small], ["audit", small, "--debug"]):
        code, _, err = _main(capsys, *args)
        assert code == 3
        assert "Traceback (most recent call last)" in err and "in crash" in err
        assert err.strip().splitlines()[-1] == "argmaxcheck: internal error: RuntimeError: solver exploded\\n" \
                                               "\\x1b[2Jsecond line"


def test_keyboard_interrupt_is_exit_130_one_line(small, capsys, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "audit", interrupted)
    try:
        code, _, err = _main(capsys, "audit", small)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main() (a traceback for the user)")
    assert code == 130 and err == "argmaxcheck: interrupted\n"


def test_sigint_during_the_audit_is_exit_130_without_traceback(small):
    child = textwrap.dedent("""
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from argmaxcheck import cli
        def slow_audit(*args, **kwargs):
            print("auditing", flush=True)
            time.sleep(60)
        cli.audit = slow_audit
        sys.exit(cli.main(sys.argv[1:]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, "audit", str(small), "--quiet"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "auditing"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err == "argmaxcheck: interrupted\n"


def test_one_line_exit_2_deeply_nested_config_json(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ROOT / "data" / "tiny-gpt2", ckpt)
    (ckpt / "config.json").write_text("[" * 200_000 + "]" * 200_000)
    code, _, err = _main(capsys, "audit", ckpt)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(ckpt) in lines[0] and "Traceback" not in err


def _baselines(folder: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file content, fragment of the one-line error)."""
    def js(obj):
        return json.dumps(obj).encode()

    ok = {"schema_version": "1.0", "summary": {"num_classes": 24}}
    return {
        "list": (b"[]", "not an argmaxcheck JSON report"),
        "null": (b"null", "not an argmaxcheck JSON report"),
        "nested": (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
        "nested-object": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        "not-utf8": (b'{"summary": "\xff\xfe"}', "not a JSON report"),
        "summary-list": (js({"summary": [], "tokens": []}), "'summary' object"),
        "tokens-string": (js({**ok, "tokens": "abc"}), "'tokens' list"),
        "token-int": (js({**ok, "tokens": [1]}), "token record 0 is not an object"),
        "id-string": (js({**ok, "tokens": [{"id": "3", "verdict": "unargmaxable"}]}), "token record 0"),
        "id-bool": (js({**ok, "tokens": [{"id": True, "verdict": "unargmaxable"}]}), "token record 0"),
        "id-float": (js({**ok, "tokens": [{"id": 2.5, "verdict": "unargmaxable"}]}), "token record 0"),
        "verdict-int": (js({**ok, "tokens": [{"id": 1, "verdict": 5}]}), "token record 0"),
        "token-list": (js({**ok, "tokens": [{"id": 1, "verdict": "undecided", "token": []}]}), "'token' must be"),
        "num-classes-string": (js({**ok, "summary": {"num_classes": "many"}, "tokens": []}), "num_classes"),
        "version-object": (js({**ok, "schema_version": {"x": 1}, "tokens": []}), "schema_version dict"),
        "folder": (None, "is a folder"),
    }


@pytest.mark.parametrize("name", list(_baselines(Path())))
def test_one_line_exit_2_bad_baseline_before_audit(small, tmp_path, capsys, no_load, name):
    content, fragment = _baselines(tmp_path)[name]
    path = tmp_path / f"{name}.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code, _, err = _main(capsys, "audit", small, "--baseline", path)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"argmaxcheck: error: --baseline {path}: "), err
    assert fragment in lines[0]


@pytest.mark.parametrize("flags,fragment", [
    (["--ignore", "re:("], "--ignore 're:(': bad regular expression"),
    (["--ignore", "re:a{99999999999}"], "bad regular expression"),
    (["--ignore", "re:" + "(" * 5000 + ")" * 5000], "bad regular expression"),
    (["--ignore", "9-3"], "--ignore: range '9-3' is empty"),
    (["--ignore", "0-99999999999999999999999"], "--ignore: range 0-99999999999999999999999 is out of range"),
    (["--fail-on", "unargmaxable=-1"], "--fail-on unargmaxable"),
    (["--fail-on", "unargmaxable=1e9"], "not a count"),
    (["--fail-on", "bogus=1"], "unknown category 'bogus'"),
    (["--tokens", "0-5", "--json", "-"], "standard output already carries"),
])
def test_one_line_exit_2_bad_gate_options_before_audit(small, capsys, no_load, flags, fragment):
    code, _, err = _main(capsys, "audit", small, *flags)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err


def test_ignore_ids_are_checked_against_the_rows_before_the_audit(small, capsys, monkeypatch):
    def forbidden(*_args, **_kwargs):
        raise AssertionError("audited before --ignore was checked against the layer")

    monkeypatch.setattr(cli, "audit", forbidden)
    code, _, err = _main(capsys, "audit", small, "--ignore", "20-99")
    assert code == 2 and "--ignore: range 20-99 is out of range (the layer has 24 rows: 0..23)" in err


@pytest.mark.parametrize("command", [["audit", "{path}", "--tokens", "3,0-2999999"],
                                     ["explain", "{path}", "0-2999999"]])
def test_one_line_exit_2_huge_token_range_is_refused_before_expanding(small, capsys, command):
    tracemalloc.start()
    try:
        code, _, err = _main(capsys, *[a.format(path=small) for a in command])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2
    assert err.strip().count("\n") == 0 and "range 0-2999999 is out of range" in err and "0..23" in err
    assert peak < 20e6, f"{peak / 1e6:.0f} MB allocated for a refused range"


def test_help_documents_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["audit", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for line in ("0    the gate passed", "1    the gate failed", "2    bad input or usage",
                 "3    internal error", "130  interrupted"):
        assert line in out
