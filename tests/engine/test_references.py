"""The engine against independent references: Qhull and a full LP / SOCP per token."""

import cvxpy as cp
import numpy as np
import pytest
from conftest import full_lp_radius
from scipy.spatial import ConvexHull

from argmaxcheck import AuditOptions, Ball, Box, audit


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dim", [2, 3, 4])
def test_no_bias_matches_qhull(seed, dim):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(120, dim))
    report = audit(weight)
    interior = set(range(120)) - set(ConvexHull(weight).vertices.tolist())
    assert set(report.unargmaxable) == interior
    assert report.undecided == []


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dim", [2, 3])
def test_bias_matches_lifted_upper_hull(seed, dim):
    """With bias, token i can win iff (w_i, b_i) is a vertex of the upper hull of the lifted points."""
    rng = np.random.default_rng(100 + seed)
    weight, bias = rng.normal(size=(150, dim)), rng.normal(size=150)
    hull = ConvexHull(np.column_stack([weight, bias]))
    upper = {int(v) for simplex, eq in zip(hull.simplices, hull.equations, strict=True) if eq[-2] > 1e-12
             for v in simplex}
    report = audit(weight, bias)
    assert set(report.unargmaxable) == set(range(150)) - upper
    assert report.undecided == []


@pytest.mark.parametrize("lower,upper", [(-0.5, 0.5), (0.0, np.inf), (-1.0, 2.0), (-np.inf, 0.3)])
def test_box_matches_full_lp(rng, lower, upper):
    n, d = 160, 5
    weight, bias = rng.normal(size=(n, d)), 3 * rng.normal(size=n)
    report = audit(weight, bias, domain=Box(lower, upper))
    lo = [None if not np.isfinite(lower) else lower] * d
    hi = [None if not np.isfinite(upper) else upper] * d
    radius = np.array([full_lp_radius(weight, bias, i, lo, hi) for i in range(n)])
    assert np.abs(radius).min() > 1e-7  # no borderline cases in this draw
    assert set(report.unargmaxable) == set(np.flatnonzero(radius < 0).tolist())
    assert report.undecided == []


def test_ball_matches_full_socp(rng):
    n, d = 60, 4
    weight, bias = rng.normal(size=(n, d)), rng.normal(size=n)
    center = rng.normal(size=d) * 0.3
    report = audit(weight, bias, domain=Ball(1.5, center))
    expected = set()
    for i in range(n):
        x, t = cp.Variable(d), cp.Variable()
        mask = np.arange(n) != i
        a = weight[mask] - weight[i]
        cons = [a @ x + t * np.linalg.norm(a, axis=1) <= bias[i] - bias[mask], cp.norm(x - center) <= 1.5, t <= 1]
        cp.Problem(cp.Maximize(t), cons).solve(solver=cp.CLARABEL)
        assert abs(t.value) > 1e-6
        if t.value < 0:
            expected.add(i)
    assert set(report.unargmaxable) == expected
    assert report.undecided == []


def test_ball_at_origin_without_bias_is_scale_free(rng):
    weight = rng.normal(size=(80, 3))
    on_ball = audit(weight, domain=Ball(0.01))
    on_rd = audit(weight)
    assert on_ball.unargmaxable == on_rd.unargmaxable
    for t in on_ball.tokens:
        if t.witness is not None:
            assert np.linalg.norm(t.witness) <= 0.01


@pytest.mark.parametrize("domain", [None, Box(-2.0, 2.0), Box(0.0, np.inf), Ball(2.0)])
def test_exact_all_agrees_with_screen(rng, domain):
    weight, bias = rng.normal(size=(90, 4)), rng.normal(size=90)
    fast = audit(weight, bias, domain=domain)
    slow = audit(weight, bias, domain=domain, options=AuditOptions(exact_all=True))
    assert fast.unargmaxable == slow.unargmaxable
    assert all(t.stage == "exact" for t in slow.tokens)
