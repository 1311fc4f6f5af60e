"""Clusters of near-duplicate rows: one exact question per cluster, a checked certificate per member."""

from __future__ import annotations

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Box, Unbounded, audit
from argmaxcheck.engine import block_exact, certify
from argmaxcheck.engine.clusters import near_duplicate_groups, simplex_certificates
from argmaxcheck.engine.competitors import Competitors
from argmaxcheck.engine.options import ExactOptions

_QUICK = AuditOptions(probability_seconds=0, batched=False)


def _clustered(rng, n=300, d=6, members=12, inside=True, spread=1e-7):
    """A head with one cluster of ``members`` rows within ``spread`` of a centre: the rows' mean with a
    low bias (inside the hull of the others), or beyond the farthest row (outside it)."""
    weight = rng.normal(size=(n, d))
    bias = rng.normal(scale=0.1, size=n)
    centre = weight.mean(axis=0) if inside else 1.5 * weight[np.argmax(np.linalg.norm(weight, axis=1))]
    ids = np.arange(n - members, n)
    weight[ids] = centre + spread * rng.normal(size=(members, d))
    bias[ids] = (-1.0 if inside else 0.0) + spread * rng.normal(size=members)
    return weight, bias, ids


def test_groups_are_the_planted_clusters_and_nothing_else(rng):
    weight, bias, ids = _clustered(rng)
    comp = Competitors(weight, bias)
    groups = near_duplicate_groups(comp, np.arange(weight.shape[0]))
    assert [sorted(g.tolist()) for g in groups] == [ids.tolist()]
    assert near_duplicate_groups(Competitors(rng.normal(size=(200, 6)), None), np.arange(200)) == []


def test_excluded_rows_never_enter_a_certificate(rng):
    weight, bias, ids = _clustered(rng)
    comp = Competitors(weight, bias)
    domain = Unbounded().resolve(weight.shape[1])
    plain, = block_exact.solve_blocks(comp, ids[:1], domain, None)
    used = plain.certificate.support
    out, = block_exact.solve_blocks(comp, ids[:1], domain, None, exclude=[np.union1d(ids, used)])
    assert out.certificate is not None and out.certificate.ok  # the token is deep: other rows do
    assert not np.isin(out.certificate.support, np.union1d(ids, used)).any()


@pytest.mark.parametrize("domain", [Unbounded(), Box(-1.0, 1.0)], ids=["R^d", "box"])
def test_a_cluster_inside_is_settled_as_one_with_certificates_that_recheck(rng, domain):
    weight, bias, ids = _clustered(rng)
    report = audit(weight, bias, domain, options=_QUICK)
    stage = next(s for s in report.stats.stages if s.name == "cluster")
    assert stage.tokens_in == ids.size and stage.counts["clusters"] == 1
    by_id = {t.id: t for t in report.tokens}
    for i in ids:
        t = by_id[int(i)]
        assert t.verdict == "unargmaxable" and t.stage == "cluster", (i, t.stage)
        assert not np.isin(t.support, ids).any()
        assert certify.check_certificate(weight, bias, t.id, t.support, t.weights, domain).ok
    reference = audit(weight, bias, domain, tokens=ids.tolist(), options=AuditOptions(exact_all=True,
                                                                                        probability_seconds=0))
    assert all(t.verdict == "unargmaxable" for t in reference.tokens)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_cluster_outside_the_hull_gets_the_same_verdicts_as_the_exact_step(seed):
    weight, bias, ids = _clustered(np.random.default_rng(seed), inside=False, spread=1e-6)
    report = audit(weight, bias, options=_QUICK)
    reference = audit(weight, bias, options=AuditOptions(exact_all=True, probability_seconds=0))
    assert [t.verdict for t in report.tokens] == [t.verdict for t in reference.tokens]
    assert any(report.tokens[i].verdict == "argmaxable" for i in ids)  # the cluster is exposed


@pytest.mark.parametrize("domain", [Unbounded(), Box(-1.0, 1.0), Box(-0.5, np.inf)], ids=["R^d", "box", "half-open"])
def test_a_large_cluster_is_decided_from_one_simplex_with_certificates_that_recheck(rng, domain):
    weight, bias, ids = _clustered(rng, n=400, d=4, members=40)
    report = audit(weight, bias, domain, options=_QUICK)
    stage = next(s for s in report.stats.stages if s.name == "cluster")
    assert stage.counts["mates from a simplex"] >= 30  # of 39 mates: d + 1 = 5 corner solves decide them
    by_id = {t.id: t for t in report.tokens}
    for i in ids:
        t = by_id[int(i)]
        assert t.verdict == "unargmaxable" and t.stage == "cluster"
        assert not np.isin(t.support, ids).any()
        assert certify.check_certificate(weight, bias, t.id, t.support, t.weights, domain).ok
    reference = audit(weight, bias, domain, tokens=ids.tolist(), options=AuditOptions(exact_all=True,
                                                                                        probability_seconds=0))
    assert all(t.verdict == "unargmaxable" for t in reference.tokens)


def test_unchecked_corner_weights_are_never_marked_ok(rng):
    weight, bias, ids = _clustered(rng)
    out, = block_exact.solve_blocks(Competitors(weight, bias), ids[:1], Unbounded().resolve(6), None,
                                    exclude=[ids], unchecked=True)
    assert out.certificate is not None and not out.certificate.ok and out.chebyshev_radius < 0


def test_a_simplex_whose_corners_are_not_inside_settles_nothing(rng):
    weight, bias, ids = _clustered(rng, n=400, d=4, members=40, inside=False)  # beyond the farthest row
    comp = Competitors(weight, bias)
    found = simplex_certificates(comp, ids[1:], ids, Unbounded().resolve(4), ExactOptions())
    assert found == [None] * (ids.size - 1)


def test_twins_that_both_win_somewhere_are_proven_by_the_polish_before_any_cluster_question(rng):
    """Near-duplicate pairs of an LM head usually both win somewhere: the screen misses them by the
    twin's hair and the polish's small move proves them; asking their clusters' hull question first
    (a linear program each) cost 11.8 s of near_dup 16384 x 768's 17 s. The cluster stage only sees
    what the polish leaves."""
    weight = rng.normal(size=(400, 8))
    twins = np.arange(0, 60, 2)
    weight[twins + 1] = weight[twins] + 1e-7 * rng.normal(size=(twins.size, 8))
    report = audit(weight, options=_QUICK)
    reference = audit(weight, options=AuditOptions(exact_all=True, probability_seconds=0))
    assert [t.verdict for t in report.tokens] == [t.verdict for t in reference.tokens]
    polish = report.stats.stage("polish")
    cluster = report.stats.stage("cluster")
    assert polish is not None and polish.settled > 0
    assert cluster is None or cluster.tokens_in < polish.tokens_in - polish.settled + 1
    assert all(report.tokens[i].stage != "cluster" for i in range(400) if report.tokens[i].verdict == "argmaxable")
