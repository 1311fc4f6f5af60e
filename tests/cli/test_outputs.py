"""Report outputs: checked before the audit, never over an input, written all or none (argmaxcheck.outputs).

The README's promises have tests named after them: ``test_input_never_modified_*``,
``test_nothing_half_written_*`` and ``test_one_line_exit_2_*``.
"""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import cli
from argmaxcheck.errors import InputError
from argmaxcheck.outputs import TEMP_PREFIX, plan_outputs
from argmaxcheck.report.formats import FORMATS, Format

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "data" / "tiny-gpt2"
OUTPUT_OPTIONS = ["--output", "--json", "--html", "--markdown", "--junit", "--save-certificates"]


@pytest.fixture
def layer(tmp_path, rng):
    path = tmp_path / "in.npz"
    np.savez(path, weight=rng.normal(size=(24, 3)))
    return path


def run_main(capsys, *args):
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err, *fragments):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("argmaxcheck: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], err


def temp_files(folder: Path):
    return sorted(p.name for p in folder.rglob(f"{TEMP_PREFIX}*"))


def _spellings(path: Path, tmp_path: Path):
    link = tmp_path / "link.npz"  # .npz: --save-certificates accepts the name, so the refusal is about the input
    link.symlink_to(path)
    sub = tmp_path / "sub"
    sub.mkdir()
    hard = tmp_path / "hard.npz"
    os.link(path, hard)
    return {"as given": path, "x/../": sub / ".." / path.name, "symlink": link, "hard link": hard,
            "relative": os.path.relpath(path)}


@pytest.mark.parametrize("option", OUTPUT_OPTIONS)
@pytest.mark.parametrize("spelling", ["as given", "x/../", "symlink", "hard link", "relative"])
def test_input_never_modified_output_is_the_input_npz(layer, tmp_path, capsys, no_load, option, spelling):
    before = layer.read_bytes()
    target = _spellings(layer, tmp_path)[spelling]
    code, _, err = run_main(capsys, "audit", layer, "--format", "json", option, target)
    assert code == 2
    assert_one_line_error(err, f"{option} {target}", "would overwrite an input")
    assert layer.read_bytes() == before
    assert temp_files(tmp_path) == []


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors"])
def test_input_never_modified_checkpoint_files(tmp_path, capsys, no_load, name):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY, ckpt)
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    alias = tmp_path / "alias"  # the checkpoint reached through a symlinked folder
    alias.symlink_to(ckpt)
    for target in (ckpt / name, alias / name, ckpt / "." / name):
        code, _, err = run_main(capsys, "audit", ckpt, "--json", target)
        assert code == 2
        assert_one_line_error(err, f"--json {target}", "input folder")
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def test_input_never_modified_hub_cache_blob_behind_a_symlink(tmp_path, capsys, no_load):
    """A hub cache's snapshot holds symlinks to blobs: the blob is the input, wherever it lives."""
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshot"
    blobs.mkdir()
    snap.mkdir()
    for p in TINY.iterdir():
        shutil.copy(p, blobs / f"blob-{p.name}")
        (snap / p.name).symlink_to(blobs / f"blob-{p.name}")
    before = (blobs / "blob-config.json").read_bytes()
    code, _, err = run_main(capsys, "audit", snap, "--json", blobs / "blob-config.json")
    assert code == 2
    assert_one_line_error(err, "input of the audit")
    assert (blobs / "blob-config.json").read_bytes() == before


def test_input_never_modified_baseline(layer, tmp_path, capsys, no_load):
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"schema_version": "1.0", "summary": {"num_classes": 24}, "tokens": []}))
    before = base.read_bytes()
    code, _, err = run_main(capsys, "audit", layer, "--baseline", base, "--json", base)
    assert code == 2
    assert_one_line_error(err, f"--json {base}", "would overwrite an input")
    assert base.read_bytes() == before


def _onnx_with_external_data(folder: Path, location: str) -> Path:
    onnx = pytest.importorskip("onnx")
    TensorProto, helper, numpy_helper = onnx.TensorProto, onnx.helper, onnx.numpy_helper

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["logits"])], "g",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "W")])
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), path, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location, size_threshold=0)
    return path


def test_input_never_modified_onnx_external_data(tmp_path):
    model = _onnx_with_external_data(tmp_path, "weights.report.json")  # named like a report on purpose
    (tmp_path / "old-report.json").write_text("{}")
    with pytest.raises(InputError, match="input of the audit"):
        plan_outputs([("--json", str(tmp_path / "weights.report.json"))], [model])
    plan = plan_outputs([("--json", str(tmp_path / "old-report.json")), ("--html", str(tmp_path / "w.bin"))],
                        [model])  # listed precisely: other files next to the model may be written
    assert [t.kind for t in plan.targets] == ["file", "file"]


def test_input_never_modified_unreadable_onnx_protects_its_folder(tmp_path):
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\xff\xff not a protobuf")
    (tmp_path / "broken.onnx.data").write_bytes(b"\0" * 16)
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(InputError, match="may be its external data"):
        plan_outputs([("--json", str(tmp_path / "broken.onnx.data"))], [model])
    assert plan_outputs([("--json", str(tmp_path / "old.json"))], [model]).targets[0].kind == "file"


def test_one_line_exit_2_folder_missing_folder_and_empty_name(layer, tmp_path, capsys, no_load):
    cases = [(tmp_path, "is a folder"), (f"{tmp_path}/new/", "names a folder"),
             (tmp_path / "no" / "such" / "r.json", "does not exist"), ("", "not a file name"),
             (layer / "x.json", "cannot be used")]
    for target, fragment in cases:
        code, _, err = run_main(capsys, "audit", layer, "--json", target)
        assert code == 2
        assert_one_line_error(err, fragment)


def test_one_line_exit_2_read_only_file_is_refused_and_unchanged(layer, tmp_path, capsys, no_load):
    target = tmp_path / "locked.json"
    target.write_text("precious")
    target.chmod(0o444)
    code, _, err = run_main(capsys, "audit", layer, "--json", target)
    assert code == 2
    assert_one_line_error(err, "read-only")
    assert stat.S_IMODE(target.stat().st_mode) == 0o444 and target.read_text() == "precious"


def test_one_line_exit_2_unwritable_folder(layer, tmp_path, capsys, no_load, monkeypatch):
    folder = tmp_path / "locked"
    folder.mkdir()
    (folder / "old.json").write_text("old")
    real_access = os.access
    # root writes anywhere, so the refusal of a folder the user cannot write is exercised through access()
    monkeypatch.setattr("argmaxcheck.outputs.os.access",
                        lambda p, mode: False if Path(p) == folder else real_access(p, mode))
    for target in (folder / "new.json", folder / "old.json"):
        code, _, err = run_main(capsys, "audit", layer, "--json", target)
        assert code == 2
        assert_one_line_error(err, "not writable")


def test_one_line_exit_2_same_target_twice_and_stdout_twice(layer, tmp_path, capsys, no_load):
    same = tmp_path / "r.json"
    cases = [(["--json", same, "--html", tmp_path / "x" / ".." / "r.json"], "already writes there"),
             (["--json", "-"], "standard output already carries"),
             (["--json", "/dev/stdout"], "standard output already carries"),
             (["--output", "-", "--markdown", "-"], "already writes there")]
    for flags, fragment in cases:
        (tmp_path / "x").mkdir(exist_ok=True)
        code, _, err = run_main(capsys, "audit", layer, *flags)
        assert code == 2
        assert_one_line_error(err, fragment)
    assert not same.exists()


def test_one_line_exit_2_socket_target(layer, tmp_path, capsys, no_load):
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        code, _, err = run_main(capsys, "audit", layer, "--json", path)
    assert code == 2
    assert_one_line_error(err, "socket")


def test_fifo_is_written_in_place_not_replaced(layer, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = run_main(capsys, "audit", layer, "--json", fifo, "--format", "text", "--quiet")
    reader.join(timeout=20)
    assert code in (0, 1), err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert received and json.loads(received[0])["summary"]["num_classes"] == 24
    assert temp_files(tmp_path) == []


def test_dev_stdout_writes_to_the_redirected_file_without_replacing_it(layer, tmp_path):
    out = tmp_path / "captured.txt"
    with out.open("wb") as f:
        inode = os.fstat(f.fileno()).st_ino
        proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(layer), "--format", "json",
                               "--output", "/dev/stdout", "--quiet"], stdout=f, stderr=subprocess.PIPE,
                              cwd=ROOT, timeout=120, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    assert out.stat().st_ino == inode, "the file behind /dev/stdout was replaced"
    assert json.loads(out.read_text())["summary"]["num_classes"] == 24
    assert temp_files(tmp_path) == []


def test_existing_report_keeps_its_mode_and_symlink_is_written_through(tmp_path):
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    real = tmp_path / "real.md"
    real.write_text("old")
    link = tmp_path / "link.md"
    link.symlink_to(real)
    plan = plan_outputs([("--json", str(kept)), ("--markdown", str(link)), ("--html", str(tmp_path / "n.html"))])
    plan.write_all({"--json": "{}\n", "--markdown": "# new\n", "--html": b"<p>new</p>"})
    assert kept.read_text() == "{}\n" and stat.S_IMODE(kept.stat().st_mode) == 0o640
    assert link.is_symlink() and real.read_text() == "# new\n"
    assert (tmp_path / "n.html").read_bytes() == b"<p>new</p>"
    assert temp_files(tmp_path) == []


def test_nothing_half_written_when_a_render_fails(layer, tmp_path, capsys, monkeypatch):
    def broken(*_args):
        raise RuntimeError("render failed")

    monkeypatch.setitem(FORMATS, "html", Format("html", broken))
    old = tmp_path / "old.json"
    old.write_text("precious")
    new = {o: tmp_path / f"new{o}.out" for o in ("--markdown", "--junit")}
    certs = tmp_path / "certs.npz"
    code, _, err = run_main(capsys, "audit", layer, "--json", old, "--html", tmp_path / "r.html",
                              "--markdown", new["--markdown"], "--junit", new["--junit"],
                              "--save-certificates", certs, "--quiet")
    assert code == 3, err
    assert "internal error: RuntimeError: render failed" in err and len(err.strip().splitlines()) == 1
    assert old.read_text() == "precious"
    assert not any(p.exists() for p in (*new.values(), certs, tmp_path / "r.html"))
    assert temp_files(tmp_path) == []


def test_nothing_half_written_when_a_file_cannot_be_written(tmp_path, monkeypatch):
    first, second = tmp_path / "a.json", tmp_path / "b.md"
    first.write_text("old a")
    plan = plan_outputs([("--json", str(first)), ("--markdown", str(second))])
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr("argmaxcheck.outputs.os.fsync", failing_fsync)
    with pytest.raises(InputError, match=r"--markdown .*No space left on device.*no report file was changed"):
        plan.write_all({"--json": "new a", "--markdown": "new b"})
    assert first.read_text() == "old a" and not second.exists()
    assert temp_files(tmp_path) == []


_SLOW_WRITER = textwrap.dedent("""
    import os, signal, sys, time
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, whatever launched us
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from argmaxcheck import cli
    real_fsync, calls = os.fsync, []
    def slow_fsync(fd):  # the second report file is being written when the signal comes
        real_fsync(fd)
        calls.append(fd)
        if len(calls) == 2:
            print("writing", flush=True)
            time.sleep(60)
    os.fsync = slow_fsync
    sys.exit(cli.main(sys.argv[1:]))
""")


@pytest.mark.parametrize("signum,code,word", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_nothing_half_written_on_a_signal_while_writing(layer, tmp_path, signum, code, word):
    a, b, c = tmp_path / "a.json", tmp_path / "b.md", tmp_path / "c.xml"
    a.write_text("old a")
    b.write_text("old b")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, "audit", str(layer), "--json", str(a),
                             "--markdown", str(b), "--junit", str(c), "--output", str(tmp_path / "o.txt"),
                             "--format", "text", "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing", proc.stderr.read() if proc.poll() is not None else ""
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert err.strip() == f"argmaxcheck: {word}"
    assert (a.read_text(), b.read_text()) == ("old a", "old b")
    assert not c.exists() and not (tmp_path / "o.txt").exists()
    assert temp_files(tmp_path) == []
