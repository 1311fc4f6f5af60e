"""Chunked and resumable audits: same verdicts as one call, a journal that survives SIGKILL, refusals."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Box, audit
from argmaxcheck.cli import main
from argmaxcheck.report.model import AuditReport, TokenResult
from argmaxcheck.runner import audit_sharded, merge_reports, plan_chunks
from argmaxcheck.runner.journal import STORED_FIELDS

ROOT = Path(__file__).resolve().parents[2]
CHUNK = 8


@pytest.fixture(scope="module")
def layer_file(tmp_path_factory):
    """60 rows in 5-d: 20 averages of others (unargmaxable, decided by the exact step), a tie, the rest reachable."""
    rng = np.random.default_rng(7)
    weight = rng.normal(size=(60, 5))
    weight[30:50] = rng.dirichlet(np.ones(4), size=20) @ weight[:4]
    weight[55] = weight[56]
    path = tmp_path_factory.mktemp("layer") / "layer.npz"
    np.savez(path, weight=weight, tokens=np.array([f"t{i}" for i in range(60)]))
    return path


def _flags(path, journal, *extra):
    return [str(path), "--chunk-size", str(CHUNK), "--resume", str(journal), "--format", "json", "--quiet", *extra]


def _comparable(report_json: Path) -> dict:
    """The JSON report without what may differ between runs: timings, stage records and the total time."""
    data = json.loads(report_json.read_text())
    data.pop("timings")
    data.pop("stages")
    data["summary"].pop("seconds")
    return data


def _certificates(path: Path) -> dict:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def reference(layer_file, tmp_path_factory):
    """An uninterrupted chunked run: its JSON report and certificate file."""
    out = tmp_path_factory.mktemp("reference")
    code = main(["audit", *_flags(layer_file, out / "journal", "--output", str(out / "r.json"),
                                  "--save-certificates", str(out / "c.npz"))])
    assert code == 1
    return _comparable(out / "r.json"), _certificates(out / "c.npz")


def _assert_same_as_reference(reference, report_json: Path, certs: Path):
    ref_json, ref_certs = reference
    assert _comparable(report_json) == ref_json
    got = _certificates(certs)
    assert got.keys() == ref_certs.keys()
    for key, value in ref_certs.items():
        assert np.array_equal(got[key], value), key  # witnesses, margins and certificates, bit for bit


def test_chunks_are_sorted_consecutive_blocks_and_merging_checks_coverage():
    chunks = plan_chunks([9, 3, 3, 7, 1, 12], 20, chunk_size=2)
    assert [c.tolist() for c in chunks] == [[1, 3], [7, 9], [12]]
    assert [c.size for c in plan_chunks(None, 10, 4)] == [4, 4, 2]
    w = np.vstack([np.eye(3), -np.ones((1, 3))])
    parts = [audit(w, tokens=[0, 1]), audit(w, tokens=[2, 3])]
    merged = merge_reports(parts[::-1], np.arange(4))
    assert [t.id for t in merged.tokens] == [0, 1, 2, 3]
    assert merged.seconds == pytest.approx(parts[0].seconds + parts[1].seconds)
    with pytest.raises(RuntimeError, match="2 repeated"):
        merge_reports([parts[0], parts[0], parts[1]], np.arange(4))
    with pytest.raises(RuntimeError, match="2 missing"):
        merge_reports(parts[:1], np.arange(4))


def test_journal_stores_every_field_of_a_token_result():
    assert {f.name for f in fields(TokenResult)} == STORED_FIELDS


def test_chunked_run_has_the_verdicts_of_one_call(rng):
    weight = rng.normal(size=(90, 4))
    weight[40:60] = rng.dirichlet(np.ones(3), size=20) @ weight[:3]
    options = AuditOptions(probability_seconds=0.0)
    whole = audit(weight, domain=Box.symmetric(3.0), options=options)
    chunked = audit_sharded(weight, domain=Box.symmetric(3.0), options=options, chunk_size=7)
    assert isinstance(chunked, AuditReport)
    assert [(t.id, t.verdict) for t in chunked.tokens] == [(t.id, t.verdict) for t in whole.tokens]
    assert {k: v for k, v in chunked.summary().items() if k != "seconds"} == \
        {k: v for k, v in whole.summary().items() if k != "seconds"}
    assert chunked.timings["chunks"] == 13
    assert chunked.timings.get("exact_tokens", 0) + chunked.timings.get("batched_tokens", 0) >= 20


def _child(flags: list[str], hook: str) -> subprocess.Popen:
    """The CLI in a child process, with ``hook`` (Python) run first to slow it down or kill it."""
    code = f"import sys\n{hook}\nfrom argmaxcheck.cli import main\nsys.exit(main({['audit', *flags]!r}))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_run_then_resume_decides_only_the_rest(layer_file, reference, tmp_path):
    journal = tmp_path / "journal"
    # Each chunk takes at least 0.3 s in the child, so the kill lands after the first chunk, well before the last.
    slow = ("import time, argmaxcheck.runner.executors as e\norig = e.audit_chunk\n"
            "e.audit_chunk = lambda *a, **k: (time.sleep(0.3), orig(*a, **k))[1]")
    child = _child(_flags(layer_file, journal, "--output", str(tmp_path / "never.json")), slow)
    deadline = time.monotonic() + 60
    while not (journal / "chunk-000000.json").exists():
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = len(list(journal.glob("chunk-*.json")))
    total = len(plan_chunks(None, 60, CHUNK))
    assert 1 <= finished < total and not (tmp_path / "never.json").exists()

    code = main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "r.json"),
                                  "--save-certificates", str(tmp_path / "c.npz"))])
    assert code == 1
    _assert_same_as_reference(reference, tmp_path / "r.json", tmp_path / "c.npz")
    timings = json.loads((tmp_path / "r.json").read_text())["timings"]
    assert (timings["chunks"], timings["chunks_from_journal"]) == (total, finished)


def test_sigkill_inside_a_write_leaves_no_half_chunk(layer_file, reference, tmp_path):
    journal = tmp_path / "journal"
    # Killed between writing the second chunk's temporary file and renaming it into place.
    hook = ("import os, signal\nreal = os.replace\ncalls = []\n"
            "def replace(a, b):\n    calls.append(b)\n"
            "    if str(b).endswith('chunk-000001.npz'): os.kill(os.getpid(), signal.SIGKILL)\n"
            "    real(a, b)\nos.replace = replace")
    child = _child(_flags(layer_file, journal), hook)
    child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert [p.name for p in journal.glob(".argmaxcheck-tmp-*")]  # the interrupted write, under a temporary name
    assert not (journal / "chunk-000001.npz").exists()

    code = main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "r.json"),
                                  "--save-certificates", str(tmp_path / "c.npz"))])
    assert code == 1
    _assert_same_as_reference(reference, tmp_path / "r.json", tmp_path / "c.npz")
    assert not list(journal.glob(".argmaxcheck-tmp-*"))
    assert json.loads((tmp_path / "r.json").read_text())["timings"]["chunks_from_journal"] == 1


def test_damaged_chunk_is_decided_again_with_a_note(layer_file, reference, tmp_path, capsys):
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "first.json"))]) == 1
    data = journal / "chunk-000002.npz"
    data.write_bytes(data.read_bytes()[:100])  # truncated
    (journal / "chunk-000004.json").unlink()  # never committed: redone silently
    capsys.readouterr()
    code = main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "r.json"),
                                  "--save-certificates", str(tmp_path / "c.npz"))])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chunk 2 (tokens 16-23) is damaged" in err[0] and "deciding it again" in err[0]
    _assert_same_as_reference(reference, tmp_path / "r.json", tmp_path / "c.npz")
    total = len(plan_chunks(None, 60, CHUNK))
    assert json.loads((tmp_path / "r.json").read_text())["timings"]["chunks_from_journal"] == total - 2


def test_journal_of_other_inputs_or_flags_is_refused(layer_file, tmp_path, capsys):
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-20", "--output", str(tmp_path / "a.json"))]) == 1
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    other = tmp_path / "other.npz"
    weight = np.load(layer_file)["weight"].copy()
    weight[3, 1] += 1e-12
    np.savez(other, weight=weight, tokens=np.load(layer_file)["tokens"])
    cases = [
        ([layer_file, "--chunk-size", "8", "--tokens", "0-20", "--domain", "box", "--bound", "2"], "domain"),
        ([layer_file, "--chunk-size", "8", "--tokens", "0-21"], "audited tokens"),
        ([layer_file, "--chunk-size", "4", "--tokens", "0-20"], "chunk size"),
        ([other, "--chunk-size", "8", "--tokens", "0-20"], "weights"),
        ([layer_file, "--chunk-size", "8", "--tokens", "0-20", "--precision", "float32"], "options"),
    ]
    for args, what in cases:
        capsys.readouterr()
        assert main(["audit", *map(str, args), "--resume", str(journal), "--format", "json"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "other inputs or flags" in err and f"differs in: {what}" in err, err
    assert {p.name: p.read_bytes() for p in journal.iterdir()} == before  # nothing the user had is touched

    (journal / "header.json").write_text((journal / "header.json").read_text().replace('"chunks"', '"chunkz"'))
    assert main(["audit", str(layer_file), "--chunk-size", "8", "--tokens", "0-20", "--resume", str(journal)]) == 2
    assert "header.json is corrupt" in capsys.readouterr().err

    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert main(["audit", str(layer_file), "--resume", str(stranger)]) == 2
    assert "not an argmaxcheck journal" in capsys.readouterr().err
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]
    assert main(["audit", str(layer_file), "--resume", str(tmp_path / "no" / "such")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- a journal is a cache, not a proof


def _forge(journal: Path, k: int, edit) -> None:
    """Edit chunk ``k``'s arrays with ``edit(arrays)`` and recompute every hash, as a forger who knows the format."""
    import hashlib  # noqa: PLC0415
    import io  # noqa: PLC0415

    data, manifest = journal / f"chunk-{k:06d}.npz", journal / f"chunk-{k:06d}.json"
    with np.load(data) as z:
        arrays = {key: z[key].copy() for key in z.files}
    edit(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data.write_bytes(buffer.getvalue())
    meta = json.loads(manifest.read_text())
    meta.pop("checksum", None)
    meta["sha256"] = hashlib.sha256(buffer.getvalue()).hexdigest()
    meta["checksum"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps(meta, indent=1) + "\n")


def _forge_meta(journal: Path, k: int, **changes) -> None:
    import hashlib  # noqa: PLC0415

    manifest = journal / f"chunk-{k:06d}.json"
    meta = json.loads(manifest.read_text())
    meta.pop("checksum", None)
    meta.update(changes)
    meta["checksum"] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
    manifest.write_text(json.dumps(meta, indent=1) + "\n")


def test_forged_journal_is_rechecked_and_decided_again(layer_file, reference, tmp_path, capsys):
    """Hashes recomputed, so only checking the proofs again catches it: wrong witness, wrong certificate."""
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "first.json"))]) == 1

    def swap_witness(a):  # token 5 (argmaxable) gets token 6's witness: it proves 6, not 5
        rows = np.flatnonzero(a["has_witness"])
        assert a["id"][rows[5]] == 5 and a["id"][rows[6]] == 6
        a["witness"][5] = a["witness"][6]

    def break_certificate(a):  # token 33 (an average of rows 0-3) gets all its weight on one row
        k = int(np.flatnonzero(a["id"] == 33)[0])
        assert a["verdict"][k] == "unargmaxable"
        s = int(np.cumsum(a["has_support"])[k]) - 1
        lo, hi = a["support_ptr"][s], a["support_ptr"][s + 1]
        a["weights"][lo:hi] = 0.0
        a["weights"][lo] = 1.0

    _forge(journal, 0, swap_witness)
    _forge(journal, 4, break_certificate)
    capsys.readouterr()
    code = main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "r.json"),
                                  "--save-certificates", str(tmp_path / "c.npz"))])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2, err
    assert "chunk 0 (tokens 0-7) from the journal: 1 token(s)" in err[0] and "ids 5)" in err[0], err
    assert "chunk 4 (tokens 32-39) from the journal: 1 token(s)" in err[1] and "ids 33)" in err[1], err
    assert all("deciding them again" in line for line in err)
    data = json.loads((tmp_path / "r.json").read_text())
    assert 33 in data["unargmaxable"] and 5 not in data["unargmaxable"] + data["undecided"]
    # Same verdicts as the reference (a token decided alone may get another, equally checked, certificate).
    ref = reference[0]
    for key in ("unargmaxable", "practically_unreachable", "undecided"):
        assert data[key] == ref[key], key
    assert {k: v for k, v in data["summary"].items() if k != "seconds"} == ref["summary"]


def test_forged_verdicts_and_manifests_are_damaged_chunks(layer_file, reference, tmp_path, capsys):
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "first.json"))]) == 1

    def unknown_verdict(a):
        a["verdict"] = np.array(["maybe", *a["verdict"][1:].tolist()])

    def absurd_ids(a):
        a["id"] = a["id"] + 10 ** 9

    _forge(journal, 1, unknown_verdict)
    _forge(journal, 2, absurd_ids)
    # A manifest that claims another domain (box [0, 1] where R^d is audited), every hash recomputed.
    _forge_meta(journal, 3, domain={"kind": "box", "lower": 0.0, "upper": 1.0})
    (journal / "chunk-000005.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    capsys.readouterr()
    code = main(["audit", *_flags(layer_file, journal, "--output", str(tmp_path / "r.json"),
                                  "--save-certificates", str(tmp_path / "c.npz"))])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all("is damaged" in line and "deciding it again" in line for line in err), err
    assert "unknown verdict 'maybe'" in err[0] and "other tokens" in err[1] and "another domain" in err[2]
    assert "nested too deeply" in err[3]
    _assert_same_as_reference(reference, tmp_path / "r.json", tmp_path / "c.npz")


def test_ray_like_worker_results_are_rechecked(rng):
    """A chunk from another process (here an executor that lies) is checked here and decided again."""
    from argmaxcheck.runner.chunks import audit_chunk  # noqa: PLC0415

    weight = rng.normal(size=(30, 4))
    weight[20] = weight[:3].mean(axis=0)

    class Lying:
        name = "liar"

        def run(self, layer, domain, jobs, progress=None):
            for k, ids, options in jobs:
                report = audit_chunk(layer, domain, ids, options)
                report.tokens = [TokenResult(t.id, t.token, "argmaxable", 1.0, "exact", witness=np.ones(4))
                                 if t.id == 20 else t for t in report.tokens]
                yield k, report

    notes = []
    report = audit_sharded(weight, chunk_size=8, executor=Lying(), log=notes.append)
    assert 20 in report.unargmaxable
    assert [t.verdict for t in report.tokens] == [t.verdict for t in audit(weight).tokens]
    assert len(notes) == 1 and "chunk 2 (tokens 16-23) from liar: 1 token(s)" in notes[0]


def test_deeply_nested_header_is_one_line(layer_file, tmp_path, capsys):
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 1
    (journal / "header.json").write_text("[" * 100_000 + "]" * 100_000)
    capsys.readouterr()
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "header.json is corrupt" in err, err


def test_resume_on_a_dangling_link_is_one_line(layer_file, tmp_path, capsys):
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    assert main(["audit", *_flags(layer_file, dangling, "--tokens", "0-9")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err, err
    assert not (tmp_path / "nowhere").exists()


def test_sweep_resume_on_a_file_is_one_line_and_creates_nothing(layer_file, tmp_path, capsys):
    regular = tmp_path / "file"
    regular.write_text("mine")
    out = tmp_path / "sweep-out"
    assert main(["sweep", str(layer_file), "--output", str(out), "--resume", str(regular), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a folder" in err, err
    assert not out.exists() and regular.read_text() == "mine"


def test_only_the_run_holding_the_journal_cleans_it(layer_file, tmp_path, capsys):
    import fcntl  # noqa: PLC0415

    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 1
    in_flight = journal / ".argmaxcheck-tmp-chunk-000001.npz.99999"
    in_flight.write_bytes(b"another run's write")
    # A refused run (other flags) must not touch it.
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-11")]) == 2
    assert in_flight.exists()
    # A second run while another holds the journal is refused in one line, and touches nothing.
    with open(journal / ".argmaxcheck-lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        capsys.readouterr()
        assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "another argmaxcheck run is using it" in err, err
        assert in_flight.exists()
    # Once it is free, the run holding it clears the leftovers of interrupted writes.
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 1
    assert not in_flight.exists()


def test_no_report_lands_in_the_journal(layer_file, tmp_path, capsys):
    journal = tmp_path / "journal"
    assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9")]) == 1
    before = {p.name: p.read_bytes() for p in journal.iterdir()}
    for target in (journal / "header.json", journal / "chunk-000000.json", journal / "new.json", journal):
        capsys.readouterr()
        assert main(["audit", *_flags(layer_file, journal, "--tokens", "0-9", "--json", str(target))]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "resume journal" in err, (target, err)
    assert {p.name: p.read_bytes() for p in journal.iterdir()} == before


def test_no_report_is_written_through_a_hub_cache_link(layer_file, tmp_path, capsys):
    """A hub cache snapshot's files are links to the cached blobs."""
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / "abc").mkdir(parents=True)
    (repo / "blobs" / "f00d").write_text("{}")
    (repo / "snapshots" / "abc" / "config.json").symlink_to(Path("../../blobs/f00d"))
    for target in (repo / "snapshots" / "abc" / "config.json", repo / "snapshots" / "abc" / "report.json"):
        assert main(["audit", str(layer_file), "--tokens", "0-3", "--json", str(target)]) == 2
        assert "hub cache" in capsys.readouterr().err
    assert (repo / "blobs" / "f00d").read_text() == "{}"


def test_sweep_never_replaces_its_own_list(layer_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    listing = out / "sweep.md"
    listing.write_text(f"{layer_file}\n")
    assert main(["sweep", f"@{listing}", "--output", str(out), "--quiet", "--no-max-probability"]) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert listing.read_text() == f"{layer_file}\n" and sorted(p.name for p in out.iterdir()) == ["sweep.md"]


def test_read_only_output_folder_is_refused_even_for_root(layer_file, tmp_path, capsys):
    """Mode bits, not os.access: root passes os.access everywhere."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert main(["audit", str(layer_file), "--tokens", "0-3", "--json", str(locked / "r.json")]) == 2
        assert "not writable" in capsys.readouterr().err
        assert main(["sweep", str(layer_file), "--output", str(locked / "s"), "--quiet"]) == 2
        assert "not writable" in capsys.readouterr().err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("domain", [Box.symmetric(2.0), Box(0.0, 1.0), Box(0.5, 2.0), None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_genuine_chunks_pass_the_recheck(rng, domain, with_bias):
    """Rechecking honest reports decides nothing again: bias-free certificates proven on the domain's cone
    (exact equalities, enclosed weights) hold on the closed box too."""
    from argmaxcheck.runner.executors import LocalExecutor  # noqa: PLC0415

    class Foreign(LocalExecutor):  # another process's results, as far as the runner knows
        name, in_process = "foreign", False

    weight = rng.normal(size=(48, 4))
    bias = rng.normal(size=48) if with_bias else None
    notes = []
    options = AuditOptions(probability_seconds=0.0)
    checked = audit_sharded(weight, bias, domain=domain, options=options, chunk_size=8, executor=Foreign(),
                            log=notes.append)
    local = audit_sharded(weight, bias, domain=domain, options=options, chunk_size=8)
    assert notes == []
    assert [(t.id, t.verdict, t.margin) for t in checked.tokens] == [(t.id, t.verdict, t.margin) for t in local.tokens]


def test_recheck_never_accepts_a_tie_or_a_near_miss_as_a_witness(rng):
    """The float32 pass's bound is rigorous: an exact tie is never a proof, a lead of about 1e-11 still is
    (settled by the float64 check that float32 hands it to)."""
    from argmaxcheck import Unbounded  # noqa: PLC0415
    from argmaxcheck.layer import OutputLayer  # noqa: PLC0415
    from argmaxcheck.runner.recheck import failing_tokens  # noqa: PLC0415

    weight = rng.normal(size=(200, 16))
    x = weight[0] * 3.0
    u = x / np.linalg.norm(x)
    weight[1] = weight[0]  # ties row 0 at every point
    weight[2] = weight[0] + 1e-12 * u  # beats rows 0 and 1 at x by about 1e-12 |x|
    weight[3] = weight[2] - 1e-13 * u  # and row 3 by a tenth of that
    layer = OutputLayer.from_arrays(weight)
    tokens = [TokenResult(i, None, "argmaxable", 1.0, "exact", witness=x) for i in (0, 2, 3, 5)]
    report = AuditReport(200, 16, {"kind": "unbounded"}, False, "float64", 0.0, tokens)
    assert failing_tokens(report, layer, Unbounded()) == [0, 2, 3]  # 0 ties 1; 3 loses to 2; 5 loses to 2
