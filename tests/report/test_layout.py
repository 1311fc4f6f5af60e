"""The pipeline's two registries: every source and every format is reachable through them."""

import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import audit
from argmaxcheck.report.formats import FORMATS, print_terminal
from argmaxcheck.report.gate import GatePolicy, evaluate
from argmaxcheck.report.sweep import SweepResult, SweepRow, render_html, render_markdown, render_text
from argmaxcheck.sources import SOURCES, SourceRequest, load_source

ROOT = Path(__file__).resolve().parents[2]


def test_sources_are_picked_by_the_registry(tmp_path):
    np.savez(tmp_path / "m.npz", weight=np.eye(3))
    picked = {s.name: s.matches(p) for s in SOURCES for p in [tmp_path / "m.npz"]}
    assert picked == {"huggingface": False, "onnx": False, "gguf": False, "hub": False, "arrays": True}
    assert [s.name for s in SOURCES if s.matches(ROOT / "data" / "tiny-gpt2")] == ["huggingface"]
    folder = load_source(ROOT / "data" / "tiny-gpt2")
    assert folder.norm == "layernorm" and "LayerNorm" in folder.domain_reason and folder.raw is not None
    plain = load_source(tmp_path / "m.npz")
    assert plain.info == {} and plain.layer is plain.raw and plain.domain_reason.startswith("R^d")
    folded = load_source(ROOT / "data" / "ppocrv4_rec_head.npz", SourceRequest(no_bias=True))
    assert folded.layer.bias is None


def _flagged_report(names=None):
    """An audit on R^d with one unargmaxable row (0 lies inside the hull of +-e1, +-e2): no probability brackets."""
    return audit(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 0.0]]), names=names)


def _terminal_text(report, gate) -> str:
    from rich.console import Console  # noqa: PLC0415

    buf = io.StringIO()
    print_terminal(report, gate, console=Console(file=buf, width=200, color_system=None, force_terminal=False))
    return buf.getvalue()


def _states_gate(name: str, text: str, gate) -> bool:
    """Whether ``text``, rendered by format ``name``, says what ``gate`` says (passed, or which tokens fail)."""
    word = "PASSED" if gate.passed else "FAILED"
    if name in ("table", "text", "html"):
        return f"gate: {word}" in text and f"gate: {'FAILED' if gate.passed else 'PASSED'}" not in text
    if name == "markdown":
        status = " — gate passed" if gate.passed else " — **gate failed**"
        return text.splitlines()[0].endswith(status) and f"- gate: {word}" in text
    if name == "json":
        data = json.loads(text)["gate"]
        return data["passed"] is gate.passed and data["failed"] == sorted(gate.failures())
    if name == "github":
        errors = {int(line.split("::token ")[1].split()[0]) for line in text.splitlines() if line.startswith("::error")}
        return errors == set(gate.failures()) and f"gate: {word}" in text.splitlines()[-1]
    if name == "junit":
        suite = ET.fromstring(text)
        return int(suite.get("failures")) == len(gate.failures()) and (gate.passed == (not gate.failures()))
    raise AssertionError(f"format {name!r} has no gate check here: add one")


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_renders_the_same_gate(name):
    report = _flagged_report()
    failing = evaluate(report)
    passing = evaluate(report, GatePolicy({"unargmaxable": math.inf}))
    assert not failing.passed and failing.failures() == {4} and passing.passed and not passing.failures()
    for gate in (failing, passing):
        text = FORMATS[name](report, gate, None)
        assert isinstance(text, str) and text.endswith("\n")
        assert _states_gate(name, text, gate), (name, gate.passed, text[-2000:])
        assert not _states_gate(name, text, failing if gate is passing else passing), (name, gate.passed)
        if FORMATS[name].terminal is not None:
            assert _states_gate(name, _terminal_text(report, gate), gate)


def test_a_column_no_row_has_a_value_in_is_left_out():
    # On R^d no token has a max-probability bracket, and without names no token has a name.
    report = _flagged_report()
    gate = evaluate(report)
    header = "| id | margin | gate | why |"
    assert header in FORMATS["markdown"](report, gate).splitlines()
    assert "|---:|---:|---|---|" in FORMATS["markdown"](report, gate).splitlines()
    assert FORMATS["text"](report, gate).splitlines()[-1].split("\t")[:4] == ["4", "unargmaxable", "0", "fails"]
    shown = _terminal_text(report, gate)
    assert "max prob" not in shown and "token" not in shown.split("Unargmaxable")[1].splitlines()[2]
    assert "max prob" not in FORMATS["html"](report, gate)
    # Without a gate, the gate column goes too; with names, the token column comes back.
    assert "| id | margin | why |" in FORMATS["markdown"](report, None)
    named = _flagged_report([f"t{i}" for i in range(5)])
    assert "| id | token | margin | gate | why |" in FORMATS["markdown"](named, evaluate(named))
    assert FORMATS["text"](named, evaluate(named)).splitlines()[-1].split("\t")[:3] == ["4", "'t4'", "unargmaxable"]


def test_the_sweep_tables_leave_out_columns_no_source_has():
    failed = SweepResult([SweepRow("a.npz", "a", error="boom"), SweepRow("b.npz", "b", error="bang")])
    columns = ["model", "gate", "report"]
    assert render_markdown(failed).splitlines()[2] == "| " + " | ".join(columns) + " |"
    assert render_text(failed).splitlines()[0].split() == columns
    assert "<th>domain</th>" not in render_html(failed) and "<th>report</th>" in render_html(failed)
    audited = SweepResult([SweepRow("c.npz", "c", 3, 2, "R^d", {"argmaxable": 3, "practically_unreachable": 0,
                                                                 "unargmaxable": 0, "undecided": 0},
                                    3, 0.5, True, "models/c.json"), *failed.rows])
    assert render_markdown(audited).splitlines()[2].count(" | ") == 10  # every column
