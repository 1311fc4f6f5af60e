"""The CI gate: thresholds, ignores, baselines, and bad gate options refused in one line."""

import json
import math

import numpy as np
import pytest
from cli_helpers import ROOT, run

from argmaxcheck import GatePolicy, InputError, assert_all_argmaxable, audit, evaluate_gate
from argmaxcheck.layer import OutputLayer
from argmaxcheck.report.gate import Baseline, parse_fail_on

SCHEMA = json.loads((ROOT / "argmaxcheck" / "report" / "report.schema.json").read_text())


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
