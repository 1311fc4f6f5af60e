"""Planted structure in high dimension: interior combinations, duplicates, zero rows."""

import numpy as np
from scipy.spatial import ConvexHull

from argmaxcheck import Ball, Box, audit
from argmaxcheck.report import ARGMAXABLE


def planted_layer(rng, n=600, d=48, planted=12):
    weight = rng.normal(size=(n, d))
    ids = rng.choice(n, size=planted, replace=False)
    for i in ids:
        others = rng.choice(np.setdiff1d(np.arange(n), ids), size=4 * d, replace=False)
        lam = rng.dirichlet(np.ones(others.size))
        weight[i] = lam @ weight[others]  # deep inside the hull: many rows, spread weights
    return weight, set(ids.tolist())


def test_planted_interior_rows_are_found(rng):
    weight, planted = planted_layer(rng)
    report = audit(weight)
    assert set(report.unargmaxable) == planted
    assert report.undecided == []
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            assert t.margin > 0 and t.witness is not None
        else:
            assert t.support.size <= weight.shape[1] + 1 or t.check.startswith("verified")
            assert abs(t.weights.sum() - 1) < 1e-9 and (t.weights >= 0).all()


def test_planted_rows_with_bias_and_box(rng):
    weight, planted = planted_layer(rng, n=400, d=24, planted=8)
    bias = np.zeros(400)
    report = audit(weight, bias + 0.0, domain=Box.symmetric(100.0))
    assert planted <= set(report.unargmaxable)


def test_duplicates_and_zero_rows_are_ties(rng):
    weight = rng.normal(size=(300, 16))
    weight[7] = weight[3]
    weight[8] = weight[3]
    weight[20] = 0.0
    weight[21] = -0.0  # the same row as +0.0
    report = audit(weight)
    by_id = {t.id: t for t in report.tokens}
    for i in (3, 7, 8):
        assert by_id[i].verdict == "unargmaxable" and by_id[i].stage == "tie"
        assert by_id[i].tie_with in {3, 7, 8} - {i}
        assert by_id[i].margin == 0.0
    assert by_id[20].tie_with == 21 and by_id[21].tie_with == 20
    # other tokens still decided against the deduplicated competitors
    assert report.undecided == []


def test_same_weights_lower_bias_is_dominated(rng):
    weight = rng.normal(size=(50, 6))
    bias = rng.normal(size=50)
    weight[10] = weight[11]
    bias[10] = bias[11] - 0.5
    report = audit(weight, bias)
    t = report.tokens[10]
    assert t.verdict == "unargmaxable" and t.stage == "dominated" and t.tie_with is None
    assert t.margin <= -0.5 + 1e-12


def test_fewer_rows_than_dim_plus_one(rng):
    weight = np.round(rng.normal(size=(5, 10)) * 8)  # small integers: sums are exact
    assert audit(weight).all_argmaxable
    weight[4] = (weight[0] + weight[1]) / 2  # exactly on the segment
    report = audit(weight)
    assert report.unargmaxable == [4]
    assert report.tokens[4].check == "exact rational arithmetic"


def test_rounded_combination_is_undecided_not_guessed(rng):
    weight = rng.normal(size=(5, 10))
    weight[4] = weight[0] / 3 + 2 * weight[1] / 3  # off the segment by rounding only
    report = audit(weight)
    t = report.tokens[4]
    assert t.verdict == "undecided"
    assert "precision" in t.reason and "rounding" in t.reason
    assert np.isnan(t.margin)


def test_exact_midpoint_is_unargmaxable():
    # 0.5*a + 0.5*b is exact in binary floating point for these values.
    weight = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    report = audit(weight)
    t = report.tokens[2]
    assert t.verdict == "unargmaxable"
    assert set(t.support.tolist()) == {0, 1}


def test_rank_deficient_layer(rng):
    coef = rng.normal(size=(200, 3))
    weight = np.zeros((200, 12))
    weight[:, :3] = coef  # exactly rank 3: nine zero columns
    report = audit(weight)
    assert report.undecided == []
    interior = set(range(200)) - set(ConvexHull(coef).vertices.tolist())
    assert set(report.unargmaxable) == interior


def test_ties_on_a_ball_with_bias(rng):
    """A ball has no exact-equality fallback: ties must pass the interval check by themselves."""
    weight, bias = rng.normal(size=(80, 5)), rng.normal(size=80)
    weight[9], bias[9] = weight[4], bias[4]
    report = audit(weight, bias, domain=Ball(1.0, rng.normal(size=5)))
    assert report.tokens[9].verdict == "unargmaxable" and report.tokens[9].tie_with == 4
    assert report.tokens[4].tie_with == 9
    assert report.undecided == []
