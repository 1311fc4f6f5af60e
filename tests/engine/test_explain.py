"""explain: one token in depth, and its smallest bias increase as a true bracket."""

import json

import numpy as np
import pytest
from cli_helpers import ROOT, TINY, run

from argmaxcheck import (
    Ball,
    Box,
    Unbounded,
    audit,
    explain_token,
)
from argmaxcheck.layer import OutputLayer

SCHEMA = json.loads((ROOT / "argmaxcheck" / "report" / "report.schema.json").read_text())


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
