"""The "practically unreachable" label: best margins below what the logits' precision resolves."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Box, audit
from argmaxcheck.engine.competitors import Competitors
from argmaxcheck.engine.narrow import decide_narrow
from argmaxcheck.engine.precision import unit_roundoff
from argmaxcheck.report import TokenResult

ROOT = Path(__file__).resolve().parents[2]


def _layer(lead):
    """Token 3 can lead by at most `lead` on [-1, 1]^2 (at x = (0, 1))."""
    weight = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    bias = np.array([0.0, 0.0, 0.0, -(1.0 - lead)])
    return weight, bias


@pytest.mark.parametrize("precision,expected", [("float64", "argmaxable"), ("float32", "practically_unreachable"),
                                                ("bfloat16", "practically_unreachable")])
def test_a_lead_of_1e9_is_below_float32_but_not_float64(precision, expected):
    weight, bias = _layer(1e-9)
    report = audit(weight, bias, domain=Box(-1.0, 1.0), options=AuditOptions(precision=precision))
    t = report.tokens[3]
    assert t.verdict == expected
    assert t.witness is not None and t.margin > 0  # still proven argmaxable in exact arithmetic
    if expected != "argmaxable":
        assert t.best_margin == pytest.approx(1e-9, rel=1e-3, abs=1e-12)
        assert t.threshold == pytest.approx(unit_roundoff(precision) * 1.0, rel=1e-6)
        assert report.practically_unreachable == [3]
    assert [x.verdict for x in report.tokens[:3]] == ["argmaxable"] * 3


def test_a_clear_lead_stays_argmaxable_even_in_bfloat16():
    weight, bias = _layer(0.1)
    report = audit(weight, bias, domain=Box(-1.0, 1.0), options=AuditOptions(precision="bfloat16"))
    assert report.tokens[3].verdict == "argmaxable"


def test_small_witness_gap_but_large_best_margin_is_not_labelled(rng):
    """A witness that wins narrowly must not condemn a token that can win clearly elsewhere."""
    weight, bias = _layer(0.25)
    report = audit(weight, bias, domain=Box(-1.0, 1.0), options=AuditOptions(precision="bfloat16"))
    first = report.tokens[3]
    # Re-label from a deliberately poor witness: x = (0, 0.75 + 1e-3) leads by only 1e-3.
    comp = Competitors(weight, bias)
    results = {3: TokenResult(3, None, "argmaxable", 1e-3, "screen", witness=np.array([0.0, 0.751]))}
    record = decide_narrow(results, comp, np.arange(4), Box(-1.0, 1.0).resolve(2), unit_roundoff("bfloat16"))
    assert record.counts["checked"] == 1 and results[3].verdict == "argmaxable" and first.verdict == "argmaxable"


def test_unbounded_with_bias_gets_no_label():
    weight, bias = _layer(1e-9)
    report = audit(weight, bias, options=AuditOptions(precision="bfloat16"))
    assert report.practically_unreachable == []
    assert report.timings["practical_checked"] == 0


@pytest.mark.parametrize("excess,expected", [(1e-5, "practically_unreachable"), (0.1, "argmaxable")])
def test_bias_free_rd_measures_margins_on_the_unit_ball(excess, expected):
    """Four unit rows at 0, 90, 180, 270 degrees; token 4 at 45 degrees, just past their chord."""
    angles = np.deg2rad([0, 90, 180, 270, 45])
    weight = np.column_stack([np.cos(angles), np.sin(angles)])
    weight[4] *= np.sqrt(0.5) * (1 + excess)  # the chord's midpoint has norm sqrt(1/2)
    report = audit(weight, options=AuditOptions(precision="float16"))  # threshold ~ 2^-11 * 0.7
    t = report.tokens[4]
    assert t.verdict == expected
    if expected != "argmaxable":  # best lead at unit |x|: sqrt(1/2) * excess
        assert t.best_margin == pytest.approx(np.sqrt(0.5) * excess, rel=1e-3)


def test_tiny_checkpoint_near_tie_is_practically_unreachable():
    """data/tiny-gpt2: the fourth averaged row wins by ~5e-9 after float32 rounding."""
    out = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(ROOT / "data" / "tiny-gpt2"),
                          "--format", "json", "--quiet"], capture_output=True, text=True, check=False)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    practical = [t for t in report["tokens"] if t["verdict"] == "practically_unreachable"]
    assert len(practical) == 1 and report["summary"]["practically_unreachable"] == 1
    assert 0 < practical[0]["best_margin"] < practical[0]["threshold"]
    assert report["summary"]["unargmaxable"] == 9
