"""The audit reports every stage it runs, with totals it then reaches (what the progress display shows)."""

import numpy as np

from argmaxcheck import AuditOptions, Ball, audit


class _Recorder:
    def __init__(self):
        self.stages = []

    def stage(self, name, total):
        self.stages.append([name, total, 0])

    def advance(self, n=1):
        self.stages[-1][2] += n


def test_every_stage_is_announced_and_completed():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3000, 24))
    weight[5] = weight[:40].mean(axis=0)  # inside the hull: reaches the exact step
    weight[7] = weight[8]  # same weights, different bias: one is dominated
    recorder = _Recorder()
    audit(weight, rng.normal(size=3000) * 0.1, domain=Ball(3.0), progress=recorder,
          options=AuditOptions(probability_seconds=5.0))
    names = [s[0] for s in recorder.stages]
    assert names[0] == "identical rows" and names[1].startswith("screen")
    assert {"seeding the exact step", "exact step, in blocks of tokens", "best margins of narrow winners",
            "highest probabilities (time budget)"} <= set(names)
    for name, total, done in recorder.stages:
        assert done == total, (name, total, done)
    assert recorder.stages[0][1] == 1 and recorder.stages[1][1] == 2999  # row 7 or 8 is dominated


def test_a_plain_callable_still_hears_the_counts():
    seen = []
    audit(np.random.default_rng(1).normal(size=(50, 4)), progress=seen.append)
    assert sum(seen) >= 50


# ---------------------------------------------------------------- the command line's plain lines (CI logs)

PLAIN = r"argmaxcheck: [^\x1b]+ \d+/\d+( \(\d+%\))? \d+ s elapsed(, eta \d+ s)?"


def test_plain_progress_lines_at_each_stage_and_every_interval():
    import io  # noqa: PLC0415

    from argmaxcheck.cli import _progress  # noqa: PLC0415

    now = [100.0]
    stream = io.StringIO()
    with _progress(50257, quiet=False, interval=30, stream=stream, clock=lambda: now[0]) as progress:
        progress.stage("screen", 50257)
        progress.advance(6000)  # 0 s in: no line
        now[0] += 31
        progress.advance(6000)
        now[0] += 10
        progress.advance(100)  # 10 s after the last line: none
        progress.stage("exact step", 0)
    assert stream.getvalue().splitlines() == [
        "argmaxcheck: screen 0/50257 (0%) 0 s elapsed",
        "argmaxcheck: screen 12000/50257 (23%) 31 s elapsed, eta 99 s",
        "argmaxcheck: exact step 0/0 0 s elapsed"]
    quiet = io.StringIO()
    with _progress(10, quiet=True, stream=quiet) as progress:
        assert progress is None
    assert quiet.getvalue() == ""


def test_cli_audit_in_a_log_prints_plain_progress_lines(tmp_path, capsys, monkeypatch):
    """stderr not a terminal: the audit printed nothing until it ended."""
    import re  # noqa: PLC0415

    from argmaxcheck.cli import main  # noqa: PLC0415

    np.savez(tmp_path / "m.npz", weight=np.random.default_rng(2).normal(size=(300, 4)))
    monkeypatch.setenv("ARGMAXCHECK_PROGRESS_INTERVAL", "0")  # a line at every advance
    assert main(["audit", str(tmp_path / "m.npz"), "--format", "json", "--no-max-probability"]) in (0, 1)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.fullmatch(PLAIN, line) for line in lines), lines
    screen = [line for line in lines if line.startswith("argmaxcheck: screen")]
    assert len(screen) >= 2 and screen[0].endswith(" 0 s elapsed")  # the stage's start, then periodic lines
    assert main(["audit", str(tmp_path / "m.npz"), "--format", "json", "--quiet", "--no-max-probability"]) in (0, 1)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("ARGMAXCHECK_PROGRESS_INTERVAL", "soon")
    assert main(["audit", str(tmp_path / "m.npz"), "--format", "json"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
