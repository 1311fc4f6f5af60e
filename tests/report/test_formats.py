"""The report formats: the JSON schema, Markdown, GitHub annotations and JUnit."""

import json
import xml.etree.ElementTree as ET

import jsonschema
import numpy as np
import pytest
from cli_helpers import ROOT, TINY, run

from argmaxcheck import (
    GatePolicy,
    audit,
    evaluate_gate,
)
from argmaxcheck.report.formats import FORMATS

SCHEMA = json.loads((ROOT / "argmaxcheck" / "report" / "report.schema.json").read_text())


def test_json_report_follows_the_schema_on_every_kind_of_token(tmp_path):
    out = tmp_path / "r.json"
    proc = run("audit", TINY, "--quiet", "--json", out, "--format", "text")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["schema_version"] == "1.2"
    assert report["summary"]["not_round_trip"] == 0 and report["not_round_trip"] == []  # its tokenizer.json
    verdicts = {t["verdict"] for t in report["tokens"] if t.get("kind") != "special"}
    assert verdicts == {"unargmaxable", "practically_unreachable"}
    # Its two special (added) tokens have a record whatever their verdict, with their round trip.
    assert {t["id"] for t in report["tokens"] if t.get("kind") == "special"} == {0, 1}
    assert report["gate"]["passed"] is False
    # The text report printed the same counts and the explanation of a tie.
    assert "9 unargmaxable, 1 practically unreachable" in proc.stdout
    assert "tie: identical weights and bias" in proc.stdout
    for tok in report["tokens"]:
        assert tok["explanation"]
        if tok["verdict"] == "argmaxable":  # an added token's record: reachable, no bound to give
            continue
        p = tok["max_probability"]
        assert 0 < p["reached"] <= p["upper_bound"] * (1 + 1e-9) <= 1


def test_schema_rejects_a_broken_report(tmp_path):
    report = json.loads(run("audit", TINY, "--quiet", "--format", "json").stdout)
    report["tokens"][0]["verdict"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(report, SCHEMA)


def test_markdown_github_and_junit(planted):
    report = audit(planted)
    report.source = "layer.npz"
    gate = evaluate_gate(report, GatePolicy(ignore=["name:<unused>"]))
    md = FORMATS["markdown"](report, gate)
    assert "| 7 | `'tok7'` |" in md and "gate failed" in md
    gh = FORMATS["github"](report, gate).splitlines()
    errors = [line for line in gh if line.startswith("::error")]
    assert len(errors) == len(gate.counted())
    assert any("token 30 '<unused>'" in line for line in gh if line.startswith("::notice"))
    assert all("\n" not in line for line in gh)
    suite = ET.fromstring(FORMATS["junit"](report, gate))
    assert int(suite.get("failures")) == len(gate.counted())
    failed = {c.get("name").split()[0] for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {str(i) for i in gate.counted()}
    assert int(suite.get("skipped")) == 1


def test_github_annotations_escape_newlines_and_percent():
    weight = np.vstack([np.eye(3), np.eye(3)[:1]])
    report = audit(weight, names=["a", "b", "c", "bad\n%token"])
    gate = evaluate_gate(report)
    line = next(x for x in FORMATS["github"](report, gate).splitlines() if x.startswith("::error"))
    assert "%25" in line and "\n" not in line
