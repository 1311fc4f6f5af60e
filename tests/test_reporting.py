"""Reports and gates: JSON schema, Markdown, GitHub annotations, JUnit, baselines, ignores, explain."""

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from argmaxcheck import (
    Ball,
    Box,
    GatePolicy,
    InputError,
    Unbounded,
    assert_all_argmaxable,
    audit,
    evaluate_gate,
    explain_token,
)
from argmaxcheck.engine.probability import log_probability, max_probability
from argmaxcheck.layer import OutputLayer
from argmaxcheck.report.formats import FORMATS
from argmaxcheck.report.gate import Baseline, parse_fail_on

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "argmaxcheck" / "report" / "report.schema.json").read_text())
TINY = ROOT / "data" / "tiny-gpt2"


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "argmaxcheck", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


@pytest.fixture
def planted(rng):
    """60 rows in 4-D with bias; row 7 is an average of rows 0-2, rows 20/21 tie, row 30 is '<unused>'."""
    weight = rng.normal(size=(60, 4))
    bias = 0.1 * rng.normal(size=60)
    weight[7] = weight[:3].mean(axis=0)
    bias[7] = bias[:3].mean() - 0.05
    weight[21], bias[21] = weight[20], bias[20]
    weight[30], bias[30] = weight[3], bias[3] - 1.0  # dominated by row 3
    names = [f"tok{i}" for i in range(60)]
    names[30] = "<unused>"
    return OutputLayer.from_arrays(weight, bias, names)


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


def test_gate_thresholds_ignores_and_categories(planted):
    report = audit(planted)
    flagged = {t.id: t.verdict for t in report.tokens if t.verdict != "argmaxable"}
    assert {7, 20, 21, 30} <= set(flagged)
    assert not evaluate_gate(report).passed
    n = sum(1 for v in flagged.values() if v == "unargmaxable")
    assert evaluate_gate(report, GatePolicy({"unargmaxable": n})).passed
    assert not evaluate_gate(report, GatePolicy({"unargmaxable": n - 1})).passed
    ignore = ["7", "20-21", "name:<unused>"]  # an id, a range, a string
    gate = evaluate_gate(report, GatePolicy(ignore=ignore))
    assert set(gate.ignored) == {7, 20, 21, 30}
    assert gate.passed == (set(flagged) == {7, 20, 21, 30})
    assert set(evaluate_gate(report, GatePolicy(ignore=["re:^tok(7|2[01])$", "re:unused"])).ignored) == {7, 20, 21, 30}
    with pytest.raises(InputError, match="unknown category"):
        GatePolicy({"bogus": 0})
    assert parse_fail_on(["unargmaxable=3,undecided=never"]) == {"unargmaxable": 3, "undecided": math.inf}
    for bad in ("unargmaxable", "unargmaxable=-1", "unargmaxable=x", "nothing=1"):
        with pytest.raises(InputError):
            parse_fail_on([bad])


def test_baseline_counts_only_new_tokens_and_lists_recovered(planted, tmp_path):
    base = audit(planted)
    path = tmp_path / "base.json"
    path.write_text(json.dumps(base.to_dict()))
    baseline = Baseline.load(path)
    assert evaluate_gate(base, baseline=baseline).passed
    # Copy one argmaxable row onto another (a new tie) and give row 7 a large bias (it recovers;
    # rows it now beats everywhere become newly unargmaxable too).
    a, b = [i for i in base.ids("argmaxable") if i >= 40][:2]
    weight, bias = planted.weight.copy(), planted.bias.copy()
    weight[a], bias[a] = weight[b], bias[b]
    bias[7] += 5.0
    after = audit(OutputLayer.from_arrays(weight, bias, planted.tokens))
    gate = evaluate_gate(after, baseline=baseline)
    assert not gate.passed
    was = {t.id: t.verdict for t in base.tokens}
    expected = {t.id for t in after.tokens if t.verdict == "unargmaxable" and was[t.id] != "unargmaxable"}
    assert set(gate.failing["unargmaxable"]) == expected and {a, b} <= expected
    assert 7 in gate.recovered
    assert {20, 21, 30} <= set(gate.already_in_baseline)


def test_bad_baselines_and_gate_flags_exit_2_with_one_line(tmp_path, planted):
    data = tmp_path / "layer.npz"
    np.savez(data, weight=planted.weight, bias=planted.bias)
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema_version": "1.0", "summary": {"num_classes": 5}, "tokens": []}))
    future = tmp_path / "future.json"
    future.write_text(json.dumps({"schema_version": "2.0", "summary": {}, "tokens": []}))
    cases = [(["--baseline", tmp_path / "missing.json"], "no such file"),
             (["--baseline", garbage], "not a JSON report"),
             (["--baseline", other], "not the same output layer"),
             (["--baseline", future], "schema_version 2.0"),
             (["--fail-on", "unargmaxable=lots"], "not a count"),
             (["--ignore", "re:("], "bad regular expression"),
             (["--ignore", "70-80"], "out of range (the layer has 60 rows: 0..59)")]
    for flags, message in cases:
        proc = run("audit", data, *flags)
        assert proc.returncode == 2, (flags, proc.stdout, proc.stderr)
        assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (flags, proc.stderr)


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


def _raised(layer, p, delta):
    bias = np.zeros(layer.num_classes) if layer.bias is None else layer.bias.copy()
    bias[p] += delta
    return OutputLayer.from_arrays(layer.weight, bias)


@pytest.mark.parametrize("domain", [Unbounded(), Box.symmetric(2.0), Ball(1.5)], ids=["Rd", "box", "ball"])
def test_explain_bias_increase_is_a_true_bracket(planted, domain):
    _, exp = explain_token(planted, domain, 7)
    assert exp.result.verdict == "unargmaxable"
    lo, hi = exp.bias_increase_lower, exp.bias_increase
    assert 0 <= lo <= hi + 1e-9
    # Raising the bias a little past the verified amount makes the token reachable...
    after = audit(_raised(planted, 7, hi + 1e-6 + 1e-6 * abs(hi)), domain=domain, tokens=[7])
    assert after.tokens[0].verdict in ("argmaxable", "practically_unreachable")
    # ...and raising it by clearly less than the lower bound does not.
    if lo > 1e-6:
        before = audit(_raised(planted, 7, 0.9 * lo), domain=domain, tokens=[7])
        assert before.tokens[0].verdict == "unargmaxable"
    assert len(exp.rivals) == 5 and exp.rivals[0]["gap"] >= exp.rivals[-1]["gap"]
    assert "beaten everywhere by" in exp.sentence


def test_explain_cli_by_id_and_string(tmp_path):
    proc = run("explain", TINY, "200")
    assert proc.returncode == 1, proc.stderr
    assert "token 200 'tok200': unargmaxable" in proc.stdout
    assert "smallest bias increase" in proc.stdout and "highest probability" in proc.stdout
    proc = run("explain", TINY, "name:<unused_3>", "--format", "json")
    data = json.loads(proc.stdout)
    assert data["token"]["id"] == 253 and data["token"]["tie_with"] is not None
    proc = run("explain", TINY, "5")
    assert proc.returncode == 0 and "argmaxable" in proc.stdout and "at its witness" in proc.stdout
    proc = run("explain", TINY, "no-such-token")
    assert proc.returncode == 2 and "is not a row id or an id range" in proc.stderr


def test_max_probability_brackets_the_true_maximum(rng):
    weight = rng.normal(size=(40, 3))
    bias = 0.3 * rng.normal(size=40)
    weight[5] = weight[:4].mean(axis=0)
    domain = Box.symmetric(1.0).resolve(3)
    found = max_probability(weight, bias, 5, domain, rows=8)
    assert found is not None and 0 < found.reached <= found.upper * (1 + 1e-9)
    assert math.isclose(found.reached, math.exp(log_probability(weight, bias, 5, found.x)), rel_tol=1e-12)
    assert np.all(np.abs(found.x) <= 1.0)
    # Dense sampling of the box never beats the upper bound, and the bound is tight.
    grid = rng.uniform(-1, 1, size=(20000, 3))
    scores = grid @ weight.T + bias
    logp = scores[:, 5] - scores.max(axis=1) - np.log(np.exp(scores - scores.max(axis=1, keepdims=True)).sum(1))
    assert np.exp(logp.max()) <= found.upper * (1 + 1e-9)
    assert found.upper <= found.reached * (1 + 2e-4)


@pytest.mark.parametrize("domain", [Ball(1.0), Box.symmetric(1.0)], ids=["ball", "box"])
def test_max_probability_cone_phase_agrees_with_frank_wolfe(rng, domain):
    weight = rng.normal(size=(300, 6))
    weight[9] = weight[:5].mean(axis=0)
    bias = 0.2 * rng.normal(size=300)
    domain = domain.resolve(6)
    fw = max_probability(weight, bias, 9, domain)
    cone = max_probability(weight, bias, 9, domain, rows=64, fw_steps=1)  # almost all the work in cvxpy
    for found in (fw, cone):
        assert found.upper >= found.reached and found.upper <= found.reached * (1 + 2e-4)
    assert cone.reached <= fw.upper * (1 + 1e-9) and fw.reached <= cone.upper * (1 + 1e-9)


def test_assert_all_argmaxable(planted):
    with pytest.raises(AssertionError, match="tok7"):
        assert_all_argmaxable(planted)
    simplex = np.vstack([np.eye(3), -np.ones((1, 3))])
    assert assert_all_argmaxable(simplex).all_argmaxable
    report = audit(planted)
    with pytest.raises(AssertionError):
        assert_all_argmaxable(report, ignore=["7"])
    flagged = [str(i) for i in report.ids("unargmaxable") + report.ids("undecided") + report.ids(
        "practically_unreachable")]
    assert_all_argmaxable(report, ignore=flagged)
