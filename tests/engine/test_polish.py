"""The move of a near miss's best guess (:mod:`argmaxcheck.engine.polish`) and the block witness check."""

from __future__ import annotations

import sys
from pathlib import Path

import cvxpy as cp
import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, Unbounded, audit
from argmaxcheck.engine import certify, polish
from argmaxcheck.engine.competitors import Competitors

_QUICK = AuditOptions(probability_seconds=0)


def _family(name: str, size: str):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import heads  # noqa: PLC0415

    return heads.make(name, size, 0)


@pytest.mark.parametrize("k", [1, 3, 12])
def test_the_least_move_is_the_least_norm_point_of_the_constraints(rng, k):
    d = 20
    diff = rng.normal(size=(k, d))
    need = rng.normal(size=k)
    u = polish._least_move(diff, need)
    x = cp.Variable(d)
    cp.Problem(cp.Minimize(cp.sum_squares(x)), [diff @ x >= need]).solve()
    assert u is not None
    assert (diff @ u >= need - 1e-9).all()
    assert np.linalg.norm(u) <= np.linalg.norm(x.value) + 1e-6
    assert np.allclose(u, x.value, atol=1e-5)


def test_no_move_is_claimed_for_contradictory_rows(rng):
    row = rng.normal(size=8)
    assert polish._least_move(np.vstack([row, -row]), np.array([1.0, 1.0])) is None


@pytest.mark.parametrize("domain", [Unbounded(), Ball(2.0), Box(-1.0, 1.0)], ids=["R^d", "ball", "box"])
def test_the_block_check_gives_the_one_token_check(rng, domain):
    weight, bias = rng.normal(size=(300, 10)), rng.normal(scale=0.1, size=300)
    resolved = domain.resolve(10)
    comp = Competitors(weight, bias)
    points = 0.2 * rng.normal(size=(40, 10))
    points[::3] *= 20  # some outside the bounded domains: -inf
    rows = np.argmax(points @ weight.T + bias, axis=1)  # winners where the point is inside
    rows[::4] = rng.integers(0, 300, size=rows[::4].size)  # and some losers
    block = certify.check_witnesses(weight, bias, rows, points, resolved, comp.norms)
    one = np.array([certify.check_witness(weight, bias, int(r), x, resolved, comp.norms)
                    for r, x in zip(rows, points, strict=True)])
    assert np.array_equal(block > 0, one > 0) and (block > 0).any() and (block <= 0).any()
    assert np.allclose(block[np.isfinite(one)], one[np.isfinite(one)], rtol=1e-9, atol=1e-12)


def test_twins_are_moved_into_their_cells_and_each_witness_wins_in_plain_float64():
    head = _family("near_dup", "2000x64")
    report = audit(head.weight, head.bias, options=_QUICK)
    moved = [t for t in report.tokens if t.stage == "polish"]
    assert len(moved) > 100 and all(t.verdict == "argmaxable" and t.margin > 0 for t in moved)
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    for t in moved:
        s = w @ t.witness + b
        assert s[t.id] > np.delete(s, t.id).max()
    drawn = [t.id for t in moved[:: max(1, len(moved) // 12)]]
    reference = audit(head.weight, head.bias, tokens=drawn, options=AuditOptions(exact_all=True, probability_seconds=0))
    assert [t.verdict for t in reference.tokens] == ["argmaxable"] * len(drawn)


def test_moved_points_are_float32_numbers_proven_by_the_float32_scores_that_moved_them(monkeypatch):
    """The last round's float32 scores prove the twins' points (their rows rescored in float64); no
    float64 product of every row is made for points the float32 check proves."""
    head = _family("near_dup", "2000x64")
    fresh = []
    check = certify.check_witnesses

    def counted(*args, **kwargs):
        fresh.append(len(args[2]))
        return check(*args, **kwargs)

    monkeypatch.setattr(certify, "check_witnesses", counted)
    report = audit(head.weight, head.bias, options=_QUICK)
    moved = [t for t in report.tokens if t.stage == "polish"]
    assert len(moved) > 100 and sum(fresh) < len(moved) / 10
    for t in moved:
        assert np.array_equal(t.witness.astype(np.float32).astype(np.float64), t.witness)


def test_moves_past_a_balls_sphere_land_inside_it_where_the_check_accepts_them(monkeypatch):
    """Twins on a ball: the screen's points lie on the sphere and so do the moves projected back onto
    it, which the witness check refuses (a norm's rounding may put them outside). Projected a hair
    inside, far more are proven; each claimed point lies in the ball and wins there in float64."""
    head = _family("near_dup", "2000x64")
    ball = Ball(8.0)

    def polished():  # by the first polish, from the screen's points (polish_seeded gets the rest later)
        report = audit(head.weight, head.bias, ball, options=_QUICK)
        first = next(s for s in report.stats.stages if s.name == "polish")
        return first.settled, [t for t in report.tokens if t.stage == "polish"]

    inside, moved = polished()
    monkeypatch.setattr(polish, "_INSET", 0.0)
    on_sphere, _ = polished()
    assert inside > 1.2 * on_sphere
    w, b = head.weight.astype(np.float64), head.bias.astype(np.float64)
    for t in moved:
        assert np.linalg.norm(t.witness) <= 8.0
        s = w @ t.witness + b
        assert s[t.id] > np.delete(s, t.id).max()


def test_rows_per_column_lists_the_few_and_gives_up_on_the_crowded(rng):
    mask = rng.random((500, 6)) < 0.01
    mask[:, 2] = True  # every row in the way
    mask[:, 4] = False
    lists = polish._rows_per_column(mask, 40)
    assert lists[2] is None and lists[4].size == 0
    for c in (0, 1, 3, 5):
        np.testing.assert_array_equal(lists[c], np.flatnonzero(mask[:, c]))


def test_rows_inside_the_hull_are_never_moved_into_a_verdict():
    head = _family("shallow", "2000x64")  # planted rows just inside a facet: unargmaxable
    comp = Competitors(head.weight.astype(np.float64), None)
    domain = Unbounded().resolve(64)
    starts = comp.weight[head.planted] - comp.weight.mean(axis=0)  # where each does best, roughly
    xs, gaps = polish.polish(comp, head.planted, domain, starts)
    assert xs.shape == starts.shape and not (gaps > 0).any()


@pytest.mark.parametrize("family", ["layernorm_ball", "swish_box"])
def test_moves_on_bounded_domains_stay_inside_and_agree_with_exact_all(family):
    head = _family(family, "2000x64")
    report = audit(head.weight, head.bias, head.domain, options=_QUICK)
    moved = [t for t in report.tokens if t.stage == "polish"]
    assert moved
    resolved = head.domain.resolve(64)
    assert all(resolved.contains(t.witness) for t in moved)
    drawn = [t.id for t in moved[:10]]
    reference = audit(head.weight, head.bias, head.domain, tokens=drawn,
                      options=AuditOptions(exact_all=True, probability_seconds=0))
    assert [t.verdict for t in reference.tokens] == ["argmaxable"] * len(drawn)
