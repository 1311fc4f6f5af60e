"""d >= 64, where the exact step runs the dense interior-point method first."""

import numpy as np
import pytest
from conftest import full_lp_radius

from argmaxcheck import AuditOptions, Ball, Box, ExactOptions, audit
from argmaxcheck.engine import ipm
from argmaxcheck.engine.competitors import Competitors
from argmaxcheck.engine.seeding import _smoothed_line_search, seed_points


def interior_layer(rng, n=900, d=72, planted=6):
    weight = rng.normal(size=(n, d))
    ids = rng.choice(n, size=planted, replace=False)
    for i in ids:
        rows = rng.choice(np.setdiff1d(np.arange(n), ids), size=3 * d, replace=False)
        weight[i] = rng.dirichlet(np.ones(rows.size)) @ weight[rows]
    return weight, set(ids.tolist())


def test_planted_rows_found_by_interior_point_path(rng):
    weight, planted = interior_layer(rng)
    report = audit(weight, options=AuditOptions(exact_all=True))  # every token through the exact step
    assert set(report.unargmaxable) == planted
    assert report.undecided == []
    for i in planted:
        assert report.tokens[i].check.startswith("verified")


@pytest.mark.parametrize("interior_point", [True, False])
@pytest.mark.parametrize("lower,upper", [(0.0, 0.4), (-0.3, np.inf)])
def test_box_with_bias_against_full_lp(rng, interior_point, lower, upper):
    n, d = 400, 64
    weight = rng.normal(size=(n, d))
    bias = 4 * rng.normal(size=n)
    sample = list(range(0, n, 8))
    report = audit(weight, bias, domain=Box(lower, upper), tokens=sample,
                   options=AuditOptions(exact_all=True, exact=ExactOptions(interior_point=interior_point)))
    hi = None if not np.isfinite(upper) else upper
    radius = {i: full_lp_radius(weight, bias, i, [lower] * d, [hi] * d) for i in sample}
    assert report.undecided == []
    for t in report.tokens:
        assert (t.verdict == "unargmaxable") == (radius[t.id] < 0), t.id
    if upper == 0.4:  # this draw mixes both verdicts (14 argmaxable, 36 not)
        assert 0 < len(report.unargmaxable) < len(sample)


def test_interior_point_and_simplex_agree(rng):
    weight, _ = interior_layer(rng, n=500, d=64, planted=4)
    bias = rng.normal(size=500)
    a = audit(weight, bias, options=AuditOptions(exact=ExactOptions(interior_point=True)))
    b = audit(weight, bias, options=AuditOptions(exact=ExactOptions(interior_point=False)))
    assert a.unargmaxable == b.unargmaxable
    assert a.undecided == b.undecided == []


@pytest.mark.parametrize("shift", [0.5, -0.5])
def test_ball_interior_point_reaches_the_socp_optimum(rng, shift):
    """The IPM's one quadratic constraint against Clarabel, on a feasible and an infeasible draw."""
    cp = pytest.importorskip("cvxpy")

    k, d = 300, 64
    a = rng.normal(size=(k, d))
    a /= np.linalg.norm(a, axis=1)[:, None]
    c = 0.3 * rng.normal(size=k) + shift
    res = ipm.solve_chebyshev(a, c, np.full(d, -np.inf), np.full(d, np.inf), 1.0, unit_ball=True)
    x, t = cp.Variable(d), cp.Variable()
    cp.Problem(cp.Maximize(t), [a @ x + t <= c, cp.norm(x) <= 1, t <= 1]).solve(solver=cp.CLARABEL)
    assert res.converged
    assert res.t == pytest.approx(t.value, abs=1e-7)
    assert np.linalg.norm(res.x) <= 1.0
    if res.t > 0:  # the returned point achieves the value it reports
        assert np.min(c - a @ res.x) == pytest.approx(res.t, abs=1e-9)
    else:  # the returned weights prove the bound: lam.c + ||lam^T a|| = max over the ball of the dual
        assert res.duals.sum() == pytest.approx(1.0) and (res.duals >= 0).all()
        assert res.duals @ c + np.linalg.norm(res.duals @ a) == pytest.approx(res.t, abs=1e-12)


def test_ball_interior_point_and_clarabel_agree(rng):
    weight, planted = interior_layer(rng, n=400, d=48, planted=4)
    bias = 0.5 * rng.normal(size=400)
    domain = Ball(3.0, 0.1 * rng.normal(size=48))
    a = audit(weight, bias, domain=domain, options=AuditOptions(exact_all=True))
    b = audit(weight, bias, domain=domain, tokens=list(range(0, 400, 4)),
              options=AuditOptions(exact_all=True, exact=ExactOptions(interior_point=False)))
    assert a.undecided == b.undecided == []
    assert planted <= set(a.unargmaxable)
    assert [i for i in a.unargmaxable if i % 4 == 0] == b.unargmaxable
    assert 0 < len(a.unargmaxable) < 400


def test_ball_seeding_changes_no_verdict_and_moves_towards_the_best_point(rng):
    """The smoothed max-min seed only picks the first working set: verdicts must not depend on it."""
    weight = rng.normal(size=(1500, 70)) + 0.5 * rng.normal(size=70)
    weight[:40] = weight[40:].mean(axis=0) + 0.05 * rng.normal(size=(40, 70))  # near the mean: hard tokens
    bias = 0.1 * rng.normal(size=1500)
    domain = Ball(6.0, center=0.1 * rng.normal(size=70))
    tokens = list(range(40))
    reports = [audit(weight, bias, domain=domain, tokens=tokens,
                     options=AuditOptions(exact_all=True, probability_seconds=0, exact=ExactOptions(seed_steps=k)))
               for k in (0, 8)]
    assert [t.verdict for t in reports[0].tokens] == [t.verdict for t in reports[1].tokens]
    assert not reports[1].undecided and 0 < len(reports[1].unargmaxable) < 40
    comp = Competitors(weight, bias)
    a_norm = np.linalg.norm(weight - weight[3], axis=1)
    a_norm[3] = np.inf
    resolved = domain.resolve(70)
    x = seed_points(comp, np.array([3]), resolved, resolved.center[None, :], steps=8)[0]
    assert np.linalg.norm(x - resolved.center) <= 6.0
    scores = weight @ x + bias
    slack = np.delete((scores[3] - scores) / a_norm, 3)
    s0 = weight @ resolved.center + bias
    slack0 = np.delete((s0[3] - s0) / a_norm, 3)
    assert slack.min() > slack0.min()  # closer to where token 3 does best


def test_seeding_in_blocks_matches_seeding_one_token_at_a_time(rng):
    """The audit seeds its exact tokens in blocks (matrix products); a block must give each token
    the point it would get alone, and a block boundary must not matter."""
    weight = rng.normal(size=(900, 40)) + 0.3 * rng.normal(size=40)
    bias = 0.1 * rng.normal(size=900)
    domain = Ball(4.0, center=0.1 * rng.normal(size=40)).resolve(40)
    comp = Competitors(weight, bias)
    tokens = np.array([3, 17, 250, 600, 899])
    starts = domain.center + 0.5 * rng.normal(size=(5, 40))
    together = seed_points(comp, tokens, domain, starts, steps=6, block=2)
    alone = np.array([seed_points(comp, tokens[k:k + 1], domain, starts[k:k + 1], steps=6)[0] for k in range(5)])
    np.testing.assert_allclose(together, alone, atol=1e-4)  # float32 products: GEMM and GEMV round apart
    assert np.all(np.linalg.norm(together - domain.center, axis=1) <= 4.0)


def test_smoothed_line_search_finds_the_maximiser(rng):
    tau = 0.05
    for _ in range(20):
        r = rng.uniform(0.0, 1.0, size=300)
        r_y = r + rng.normal(scale=2.0, size=300)
        grid = np.linspace(0.0, 1.0, 20001)
        values = [-tau * np.log(np.exp(-(r + g * (r_y - r)) / tau).sum()) for g in grid]
        best = grid[int(np.argmax(values))]
        assert abs(_smoothed_line_search(r, r_y, tau) - best) < 2e-3
