"""Narrow winners decided by the batched ascent and checked dual bounds (argmaxcheck.engine.narrow):
the same labels as the per-token best margins, and nothing unchecked is believed."""

import json
from pathlib import Path

import cvxpy as cp
import jsonschema
import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, audit
from argmaxcheck.engine import certify, narrow
from argmaxcheck.engine.narrow import Candidate

EXCESS = [0.05, 0.15, 0.3, 0.6, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.6, 3.0]  # multiples of the threshold's guess
K = 16  # polygon corners


def _polygon_head(domain_scale: float, unit: float, with_bias: bool, dtype=np.float64):
    """K unit rows on a circle (coordinates 0, 1), two rows along coordinate 2, and one row per
    edge at its midpoint pushed out by a factor 1 + e: its best margin grows with e. The e are
    spread around where that margin meets the precision threshold (u |s|, |s| ~ the domain's scale)."""
    rng = np.random.default_rng(5)
    angles = 2 * np.pi * np.arange(K) / K
    corners = np.column_stack([np.cos(angles), np.sin(angles), np.zeros(K)])
    rows = [corners, np.array([[0.0, 0.0, 0.5], [0.0, 0.0, -0.5]])]
    edge = np.cos(np.pi / K)
    for k, f in enumerate(EXCESS):
        mid = (corners[k] + corners[(k + 1) % K]) / 2
        rows.append((mid * (1 + f * unit / edge))[None, :])
    weight = np.vstack(rows).astype(dtype)
    bias = None
    if with_bias:  # the same small bias on every polygon row keeps the geometry; the others get their own
        bias = np.zeros(weight.shape[0])
        bias[K:K + 2] = rng.normal(size=2) * 0.01
    return weight, bias


def _labels(report):
    return [t.verdict for t in report.tokens]


def _oracle(weight, bias, p, domain, unit):
    """The label from an independent conic solve of max_x min_j s_p - s_j (cvxpy, Clarabel), with the
    threshold at its optimum: what both paths should find."""
    weight = weight.astype(np.float64)
    bias = np.zeros(weight.shape[0]) if bias is None else bias
    dom = domain.resolve(weight.shape[1])
    x, t = cp.Variable(weight.shape[1]), cp.Variable()
    others = np.delete(np.arange(weight.shape[0]), p)
    cons = [(weight[p] - weight[others]) @ x + (bias[p] - bias[others]) >= t, *dom.cvxpy_constraints(x)]
    cp.Problem(cp.Maximize(t), cons).solve(solver=cp.CLARABEL)
    tau = unit * np.abs(weight @ x.value + bias).max()
    return "practically_unreachable" if t.value < tau else "argmaxable"


@pytest.mark.parametrize("domain,with_bias,dtype,precision", [
    (Ball(1.0), True, np.float64, "float16"),
    (Ball(1.0, center=np.array([0.05, -0.02, 0.0])), True, np.float64, "bfloat16"),
    (Box(-1.0, 1.0), True, np.float64, "float16"),
    (Box(-1.0, 1.0), False, np.float64, "float32"),
    (Ball(1.0), False, np.float16, None),  # fp16 weights: the threshold at float16
])
def test_labels_equal_the_per_token_path(monkeypatch, domain, with_bias, dtype, precision):
    unit = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, None: 2.0**-11}[precision]
    weight, bias = _polygon_head(1.0, unit, with_bias, dtype)
    opts = AuditOptions(precision=precision, probability_seconds=0)
    fast = audit(weight, bias, domain=domain, options=opts)
    monkeypatch.setattr(narrow, "STEPS", 0)  # every narrow winner to the per-token best margin, as before
    slow = audit(weight, bias, domain=domain, options=opts)
    narrow_ids = range(K + 2, K + 2 + len(EXCESS))
    if unit >= 2.0**-11:  # the conic solver resolves margins to ~1e-8: float16 and bfloat16 thresholds only
        decided = [i for i in narrow_ids if fast.tokens[i].verdict != "unargmaxable"]
        assert [fast.tokens[i].verdict for i in decided] == [_oracle(weight, bias, i, domain, unit) for i in decided]
    # The per-token path agrees but where its best margin, an upper bound, was left loose by an
    # unconverged solve (a 2x bound kept two box tokens argmaxable whose checked bounds are below tau;
    # on the float32 box, four: a witness the exact step found a few ulps lower, 6.45173031e-08 instead
    # of 6.45173033e-08, let the fast path bracket one more below tau, [6.4517e-08, 6.5810e-08] < 6.97e-08;
    # since the batched phase hands out witnesses of its own (points along a separating direction, not the
    # exact step's most central ones), five: tokens 18-22 bracketed from [3.0e-09, 3.5e-09] up to
    # [4.86e-08, 5.64e-08], each below its tau of 5.9e-08 to 7.0e-08, where the per-token solve found nothing).
    assert _labels(fast)[:K + 2] == _labels(slow)[:K + 2]
    differ = [i for i in narrow_ids if fast.tokens[i].verdict != slow.tokens[i].verdict]
    assert len(differ) <= 5
    for i in differ:  # each difference rests on a checked bound below tau, or a checked point above it
        tok = fast.tokens[i]
        assert (tok.verdict == "practically_unreachable" and tok.bracket_upper < tok.threshold) or \
            (tok.verdict == "argmaxable" and tok.bracket_lower >= tok.threshold)
    if dtype != np.float16:  # float16 storage rounds the pushes to whole ulps: fewer kinds survive
        assert {fast.tokens[i].verdict for i in narrow_ids} == {"argmaxable", "practically_unreachable"}
    t = fast.timings
    assert t["practical_checked"] == slow.timings["practical_checked"] > 0
    assert t["practical_ascent_settled"] + t["practical_dual_settled"] + t["practical_stragglers"] \
        == t["practical_checked"]
    if unit >= 2.0**-11:  # float32 thresholds (~6e-8 |s|) are beyond a few dozen first-order steps
        assert t["practical_ascent_settled"] + t["practical_dual_settled"] > 0
    assert slow.timings["practical_stragglers"] == slow.timings["practical_checked"]
    for tok in fast.tokens:
        if tok.verdict == "argmaxable":  # every witness, new or old, still checks
            assert tok.margin > 0
        if np.isfinite(tok.bracket_lower):  # decided without a best margin: a checked bracket
            assert tok.bracket_lower > 0 and tok.threshold > 0
            if tok.verdict == "practically_unreachable":
                assert tok.bracket_lower <= tok.best_margin == tok.bracket_upper < tok.threshold
            else:
                assert tok.bracket_lower >= tok.threshold
            record = tok.to_dict()
            assert record["best_margin_bracket"][0] == tok.bracket_lower and record["threshold"] == tok.threshold


def test_brackets_are_in_the_layers_own_units():
    """The audit scales the layer by a power of two; brackets come back scaled like the margins."""
    weight, bias = _polygon_head(1.0, 2.0**-11, True)
    opts = AuditOptions(precision="float16", probability_seconds=0)
    base = audit(weight, bias, domain=Ball(1.0), options=opts)
    big = audit(weight * 2.0**20, bias * 2.0**20, domain=Ball(1.0), options=opts)
    assert _labels(base) == _labels(big)
    for a, b in zip(base.tokens, big.tokens, strict=True):
        for f in ("margin", "best_margin", "threshold", "bracket_lower", "bracket_upper"):
            x, y = getattr(a, f), getattr(b, f)
            assert (np.isnan(x) and np.isnan(y)) or y == pytest.approx(x * 2.0**20, rel=1e-9)


def test_bogus_points_and_weights_are_rejected(monkeypatch):
    """An ascent that claims every token settled, with points outside the domain and weights that
    name the token itself or bound nothing, settles none: the checks decide, and the labels are
    those of the per-token path."""
    weight, bias = _polygon_head(1.0, 2.0**-11, True)
    domain = Box(-1.0, 1.0)
    opts = AuditOptions(precision="float16", probability_seconds=0)
    monkeypatch.setattr(narrow, "STEPS", 0)
    reference = audit(weight, bias, domain=domain, options=opts)
    monkeypatch.setattr(narrow, "STEPS", 40)

    def bogus(comp, rows, starts, dom, unit, steps):
        out = []
        for k, p in enumerate(rows):
            far = starts[:, k] * 50.0  # outside the box: its gap would be huge, were it believed
            if k % 2:  # the token itself among its competitors
                support, lam = np.array([p, (p + 1) % comp.weight.shape[0]]), np.array([0.5, 0.5])
            else:  # a genuine but useless weight: one far row, whose bound is large
                support, lam = np.array([(p + K // 2) % K]), np.array([1.0])
            out.append(Candidate(far, support, lam, lower=1.0, upper=-1.0))
        return out

    monkeypatch.setattr(narrow, "_ascend", bogus)
    report = audit(weight, bias, domain=domain, options=opts)
    assert _labels(report) == _labels(reference)
    assert report.timings["practical_ascent_settled"] == 0 and report.timings["practical_dual_settled"] == 0
    assert report.timings["practical_stragglers"] == report.timings["practical_checked"] > 0


@pytest.mark.parametrize("domain", [Ball(1.5, center=np.array([0.3, -0.2, 0.1, 0.0])), Box(-1.0, 2.0)])
def test_best_gap_bound_is_an_upper_bound(rng, domain):
    weight = rng.normal(size=(30, 4))
    bias = rng.normal(size=30)
    dom = domain.resolve(4)
    lam = rng.random(29)
    support = np.arange(1, 30)
    bound = certify.best_gap_bound(weight, bias, 0, support, lam, dom)
    # The weighted gap it bounds, at many points of the domain (corners and the sphere included).
    pts = dom.project(rng.normal(size=(4, 4000)) * 3)
    weighted = lam @ ((weight[0] @ pts + bias[0])[None, :] - (weight[support] @ pts + bias[support, None]))
    assert bound >= weighted.max() / lam.sum()
    v = lam @ (weight[0] - weight[support])
    exact = (-dom.linear_min(-v)[0] + lam @ (bias[0] - bias[support])) / lam.sum()
    assert bound == pytest.approx(exact, rel=1e-12, abs=1e-12) and bound >= exact
    assert certify.best_gap_bound(weight, bias, 0, np.array([0, 1]), np.array([0.5, 0.5]), dom) == np.inf
    assert certify.best_gap_bound(weight, bias, 0, np.array([1]), np.array([np.nan]), dom) == np.inf
    assert certify.best_gap_bound(weight, bias, 0, np.array([1]), np.array([0.0]), dom) == np.inf


def test_brackets_in_the_json_report_follow_the_schema():
    schema = json.loads((Path(__file__).resolve().parents[2] / "argmaxcheck" / "report" /
                         "report.schema.json").read_text())
    weight, bias = _polygon_head(1.0, 2.0**-11, True)
    report = audit(weight, bias, domain=Ball(1.0), options=AuditOptions(precision="float16", probability_seconds=0))
    record = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(record, schema)
    brackets = [t for t in record["tokens"] if "best_margin_bracket" in t]
    assert brackets and all(len(t["best_margin_bracket"]) == 2 and "threshold" in t for t in brackets)
