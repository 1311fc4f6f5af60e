"""The exact step's blocks of tokens: same verdicts as the reference, nothing unchecked, fallback to solve_token."""

from __future__ import annotations

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, Unbounded, audit
from argmaxcheck.engine import block_exact, certify, ipm
from argmaxcheck.engine.competitors import Competitors
from argmaxcheck.engine.options import ExactOptions

FAST = dict(probability_seconds=0)


def _plant(rng, w, b, count):
    """The benchmark's planted shallow rows (benchmarks/bench_block_exact.py), the heads these tests share."""
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_block_exact import plant_shallow  # noqa: PLC0415

    return plant_shallow(rng, w, b, count)


def _head(kind, rng):
    if kind == "duplicates":  # bias, R^d, near-duplicate rows within 1e-5 relative
        n, d = 500, 10
        w = rng.normal(size=(n, d))
        dup = rng.choice(n // 2, size=80, replace=False)
        w[n - dup.size:] = w[dup] * (1 + 1e-5 * rng.normal(size=(dup.size, d)))
        return w, 0.1 * rng.normal(size=n), Unbounded()
    if kind == "shallow":  # anisotropic, log-normal norms, planted shallow rows, no bias, R^d
        n, d = 400, 12
        w = rng.normal(size=(n, d)) * np.exp(-np.arange(d) / (d / 3))
        w *= np.exp(0.15 * rng.normal(size=(n, 1))) / np.linalg.norm(w, axis=1, keepdims=True)
        _plant(rng, w, None, 10)
        return w, None, Unbounded()
    n, d = 400, 10
    w = rng.normal(size=(n, d))
    b = rng.normal(size=n) * (1.0 if kind == "ball" else 3.0)
    _plant(rng, w, b, 10)
    return w, b, (Ball(np.sqrt(d)) if kind == "ball" else Box.symmetric(1.0))


def _assert_checked(report, w, b, domain):
    """Every verdict's proof, checked again from scratch."""
    dom = domain.resolve(w.shape[1])
    norms = np.linalg.norm(w, axis=1)
    for t in report.tokens:
        if t.verdict == "unargmaxable":
            assert certify.check_certificate(w, b, t.id, t.support, t.weights, dom).ok
        elif t.verdict in ("argmaxable", "practically_unreachable"):
            assert certify.check_witness(w, b, t.id, t.witness, dom, norms) > 0


@pytest.mark.parametrize("kind", ["duplicates", "shallow", "ball", "box"])
def test_block_exact_verdicts_match_the_reference(rng, kind):
    w, b, domain = _head(kind, rng)
    report = audit(w, b, domain, options=AuditOptions(**FAST))
    reference = audit(w, b, domain, options=AuditOptions(exact_all=True, **FAST))
    assert [t.verdict for t in report.tokens] == [t.verdict for t in reference.tokens]
    blocks, fallback = report.stats.stage("block_exact"), report.stats.stage("exact")
    assert blocks.tokens_in > 0 and blocks.settled > 0
    assert (fallback.tokens_in if fallback else 0) == blocks.tokens_in - blocks.settled
    _assert_checked(report, w, b, domain)


@pytest.mark.parametrize("kind", ["duplicates", "ball", "box"])
def test_garbage_from_the_batched_solver_never_becomes_a_verdict(rng, monkeypatch, kind):
    w, b, domain = _head(kind, rng)
    reference = audit(w, b, domain, options=AuditOptions(exact_all=True, **FAST))
    noise = np.random.default_rng(7)

    def garbage(a, c, mask, lower, upper, **kw):
        (size, k), d = mask.shape, a[0].shape[1]
        x = noise.normal(scale=3.0, size=(size, d))
        x[::3] = np.nan
        t = noise.choice([-1.0, -1e-9, 0.5, np.nan], size=size)
        duals = noise.exponential(size=(size, k)) * mask
        duals[1::4] = -duals[1::4]
        return block_exact.BatchResult(x, t, duals, noise.random(size) < 0.7, kw.get("t_zero", 1e-7))

    monkeypatch.setattr(block_exact, "solve_chebyshev_batch", garbage)
    report = audit(w, b, domain, options=AuditOptions(**FAST))
    assert [t.verdict for t in report.tokens] == [t.verdict for t in reference.tokens]
    _assert_checked(report, w, b, domain)


def test_tokens_it_cannot_settle_fall_back_to_solve_token(rng, monkeypatch):
    w, b, domain = _head("box", rng)
    reference = audit(w, b, domain, options=AuditOptions(exact_all=True, **FAST))

    def stuck(a, c, mask, lower, upper, **kw):  # never converges, no sign: every token is handed back
        (size, k), d = mask.shape, a[0].shape[1]
        return block_exact.BatchResult(np.zeros((size, d)), np.full(size, -1.0), np.zeros((size, k)),
                                       np.zeros(size, dtype=bool), 1e-7)

    monkeypatch.setattr(block_exact, "solve_chebyshev_batch", stuck)
    monkeypatch.setattr(block_exact, "_beaten_by_one_row", lambda *args: {})  # settles some without a solve
    report = audit(w, b, domain, options=AuditOptions(**FAST))
    blocks = report.stats.stage("block_exact")
    assert blocks.settled == 0 and report.stats.stage("exact").tokens_in == blocks.tokens_in > 0
    assert [t.verdict for t in report.tokens] == [t.verdict for t in reference.tokens]
    assert all(t.stage in ("screen", "batched", "polish", "exact") for t in report.tokens)


@pytest.mark.parametrize("ball", [False, True])
def test_batched_ipm_agrees_with_the_single_one(rng, ball):
    size, k, d = 5, 30, 8
    a = rng.normal(size=(size, k, d))
    a /= np.linalg.norm(a, axis=2, keepdims=True)
    c = 0.5 * rng.normal(size=(size, k))
    mask = np.ones((size, k))
    mask[1, 20:] = 0  # padded rows take no part
    lower, upper = (None, None) if ball else (-3 * np.ones((size, d)), 3 * np.ones((size, d)))
    res = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper, unit_ball=ball, stop_when_positive=10.0)
    for m in range(size):
        rows = mask[m] > 0
        lo, hi = (np.full(d, -np.inf), np.full(d, np.inf)) if ball else (lower[m], upper[m])
        one = ipm.solve_chebyshev(a[m][rows], c[m][rows], lo, hi, unit_ball=ball, stop_when_positive=10.0)
        assert res.converged[m]
        if one.t > 1e-7:  # same optimum (on a ball both stop once the sign is settled)
            assert res.t[m] == pytest.approx(one.t, abs=1e-6)
        else:
            assert res.t[m] <= 1e-7
        assert np.all(res.duals[m][~rows] == 0)


def test_few_rows_on_a_box_are_solved_through_the_pinned_coordinates_and_agree(rng, monkeypatch):
    """A working set of at most d / 2 rows on a box goes through _PinnedSplit (k x k and |F| x |F|
    factors instead of d x d) and reaches the single solver's optimum."""
    size, k, d = 6, 12, 48
    a = rng.normal(size=(size, k, d))
    a /= np.linalg.norm(a, axis=2, keepdims=True)
    c = 0.5 * rng.normal(size=(size, k))
    mask = np.ones((size, k))
    mask[2, 7:] = 0
    lower, upper = -3 * np.ones((size, d)), 3 * np.ones((size, d))
    used = []
    factor = block_exact._PinnedSplit.factor
    monkeypatch.setattr(block_exact._PinnedSplit, "factor",
                        classmethod(lambda cls, *args: used.append(args[2].size) or factor(*args)))
    res = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper, stop_when_positive=10.0)
    assert len(used) > 0 and min(used) < d // 2  # the split ran, with coordinates pinned
    for m in range(size):
        rows = mask[m] > 0
        one = ipm.solve_chebyshev(a[m][rows], c[m][rows], lower[m], upper[m], stop_when_positive=10.0)
        assert res.converged[m]
        assert res.t[m] == pytest.approx(one.t, abs=1e-6)


@pytest.mark.parametrize("pinned_share", [0.5, 0.8, 1.0])
def test_the_pinned_split_solves_the_normal_equations(rng, pinned_share):
    """Against a dense solve, with pinned diagonals from 1 to 1e12 times their column and free ones
    down to 1e-8 of it (both ends of what box_bias 32768 x 512 showed)."""
    k, d = 15, 60
    u = rng.normal(size=(k, d))
    columns = np.einsum("ij,ij->j", u, u)
    pinned = rng.permutation(d) < round(pinned_share * d)  # at most d / 2 free: the split's own rule
    e = columns * np.where(pinned, 10 ** rng.uniform(0, 12, d), 10 ** rng.uniform(-8, -0.01, d))
    free = np.flatnonzero(~(e >= columns))
    part = block_exact._PinnedSplit.factor(u, e, free, np.empty((d, d)))
    normal = u.T @ u + np.diag(e)
    r = rng.normal(size=d) * np.sqrt(e)
    y = part.solve(r)
    # Backward error: the matrix is far too ill-conditioned (1e20) for forward errors to compare.
    dense = np.linalg.solve(normal, r)
    assert np.abs(normal @ y - r).max() <= max(1e-12 * np.abs(r).max(), 10 * np.abs(normal @ dense - r).max())


@pytest.mark.parametrize(("rounds", "fixed", "ball", "expected"), [
    ([1] * 6, 0, True, [300, 150, 75, 64, 64, 64]),  # settled at once: the start halves, down to 64
    ([1, 1, 3, 3, 3, 2], 0, True, [300, 150, 75, 150, 300, 300]),  # three rounds: doubles back, to max(d, 100)
    ([2] * 6, 0, True, [300] * 6),  # two rounds: as it is
    ([1] * 6, 200, True, [200] * 6),  # the options fix it: never changed
    ([1, 1, 3, 3, 3, 2], 0, False, [64] * 6),  # an LP starts small, whatever the rounds
    ([1] * 6, 200, False, [200] * 6),
])
def test_the_start_rows_follow_the_rounds_the_blocks_needed(monkeypatch, rounds, fixed, ball, expected):
    """How many most-violated rows a token starts with adapts, on a ball, to what the blocks before
    needed; on an LP it is the smallest start."""
    from argmaxcheck.engine.competitors import Competitors  # noqa: PLC0415
    from argmaxcheck.engine.exact import ExactResult  # noqa: PLC0415
    from argmaxcheck.engine.options import ExactOptions  # noqa: PLC0415

    d = 300
    comp = Competitors(np.random.default_rng(0).normal(size=(2000, d)), None)
    starts = []

    def recorded(comp_, pos, domain, points, options, kmax, shared, start, *args, **kwargs):
        starts.append(start)
        return [ExactResult(witness=np.zeros(d), witness_gap=1.0, rounds=rounds[len(starts) - 1]) for _ in pos]

    monkeypatch.setattr(block_exact, "_solve_block", recorded)
    domain = (Ball(1.0) if ball else Unbounded()).resolve(d)
    block_exact.solve_blocks(comp, np.arange(8 * 6), domain, None, ExactOptions(initial_rows=fixed),
                             budget_bytes=1)  # blocks of 8 tokens
    assert starts == expected


@pytest.mark.parametrize(("used", "expected"), [
    (1, [8, 8, 16, 32, 32, 32]),  # small working sets: blocks grow, to at most 4 x what full ones allow
    (None, [8] * 6),  # working sets that filled up: blocks stay sized for full ones
])
def test_blocks_are_sized_for_the_working_sets_the_last_block_used(monkeypatch, used, expected):
    """Every block reads all rows a few times: where working sets stay small, more tokens share a block."""
    from argmaxcheck.engine.competitors import Competitors  # noqa: PLC0415
    from argmaxcheck.engine.exact import ExactResult  # noqa: PLC0415
    from argmaxcheck.engine.options import ExactOptions  # noqa: PLC0415

    n, d = 200, 30
    comp = Competitors(np.random.default_rng(0).normal(size=(n, d)), None)
    kmax = 6 * (d + 1)
    sizes = []

    def recorded(comp_, pos, *args, **kwargs):
        sizes.append(pos.size)
        return [ExactResult(witness=np.zeros(d), witness_gap=1.0, rounds=2, rows_used=used or kmax) for _ in pos]

    monkeypatch.setattr(block_exact, "_solve_block", recorded)
    full = 8 * (2 * kmax * d + 3 * d * d + 4 * n)
    block_exact.solve_blocks(comp, np.arange(sum(expected)), Unbounded().resolve(d), None, ExactOptions(),
                             budget_bytes=8 * full)  # full working sets: blocks of 8
    assert sizes == expected


def test_a_restricted_problem_infeasible_only_inside_the_stand_in_bounds_is_solved_again_wider(monkeypatch):
    """On an open box side the block solver bounds x by a stand-in; weights that prove infeasibility
    only inside it fail their check (some v_k of the wrong sign). Pushing the stand-in out settles
    the token in its block instead of the per-token solver, with the same verdicts."""
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import heads  # noqa: PLC0415

    from argmaxcheck.engine import screen  # noqa: PLC0415

    # The screen's start points as they were before it clipped points to float32 bounds: from those,
    # one of these tokens' restricted problems is infeasible only inside the stand-in bounds.
    monkeypatch.setattr(screen, "_inside_float32", lambda lower, upper: (lower, upper))
    head = heads.make("swish_box", "small", 0)
    ids = [116, 173, 405, 572, 624, 644, 671, 742, 764, 845, 963, 1074, 1410, 1449, 1474, 1498, 1726, 2105,
           2217, 2222, 2315, 2843, 3741, 3849, 3854, 3930]  # what the exact step gets on this head (a part)
    ids += [4044, 4059, 4249, 4297, 4538, 4683, 4879, 4931, 5070, 5127, 5803, 6326, 6372, 6968, 7278, 7430,
            7436, 7524, 7667, 7683, 7780, 8150]
    # Without the batched phase, which now settles most of them before (its search with the bias matched),
    # and from as many rows as the blocks started with then (an LP now starts from 64: other restricted
    # problems, none of them infeasible only inside the stand-in bounds).
    options = AuditOptions(batched=False, exact=ExactOptions(initial_rows=256), **FAST)
    wide = audit(head.weight, head.bias, head.domain, tokens=ids, options=options)
    monkeypatch.setattr(block_exact, "_WIDENINGS", 0)
    narrow = audit(head.weight, head.bias, head.domain, tokens=ids, options=options)
    assert narrow.stats.stage("exact").settled >= 1  # without: left to the per-token solver
    assert wide.stats.stage("block_exact").settled == len(ids) and wide.stats.stage("exact") is None
    assert [t.verdict for t in wide.tokens] == [t.verdict for t in narrow.tokens]
    assert not wide.undecided


@pytest.mark.parametrize("bounded", [True, False])
def test_on_a_bounded_domain_only_a_certificates_heavy_rows_join_the_next_blocks(monkeypatch, bounded):
    """Where a solve may end at its dual bound, weights are not converged and spread a little over every
    row they saw: the next blocks start with the rows that carry at least 1 % of the largest weight. On
    R^d the converged weights name their rows, and all of them join."""
    from argmaxcheck.engine.competitors import Competitors  # noqa: PLC0415
    from argmaxcheck.engine.exact import ExactResult  # noqa: PLC0415

    d = 20
    comp = Competitors(np.random.default_rng(0).normal(size=(500, d)), None)
    seen = []
    weights = np.array([0.5, 1e-6, 0.3, 1e-4, 0.2, 3e-3])

    def recorded(comp_, pos, domain, points, options, kmax, shared, start, *args, **kwargs):
        seen.append(np.sort(shared))
        check = certify.CertificateCheck(True, -1.0, "test", "", np.array([10, 11, 12, 13, 14, 15]), weights)
        return [ExactResult(certificate=check, rounds=1) for _ in pos]

    monkeypatch.setattr(block_exact, "_solve_block", recorded)
    domain = Box.symmetric(1.0) if bounded else Unbounded()
    block_exact.solve_blocks(comp, np.arange(100, 116), domain.resolve(d), None, budget_bytes=1)
    assert seen[0].size == 0
    assert seen[1].tolist() == ([10, 12, 14] if bounded else [10, 11, 12, 13, 14, 15])


@pytest.mark.parametrize("bounded", [True, False])
def test_a_deep_infeasible_lp_ends_once_its_dual_bound_over_the_domain_is_negative(rng, bounded):
    """On a box the row weights' dual bound over the domain's own bounds proves t* < 0 long before the
    iterates converge; the solve ends there with weights whose bound is negative. On R^d (every side
    open) no such bound exists until v = 0 exactly: nothing ends early."""
    size, k, d = 4, 30, 8
    a = rng.normal(size=(size, k, d))
    a /= np.linalg.norm(a, axis=2, keepdims=True)
    c = -1.0 - rng.random(size=(size, k))  # every row far out of reach: t* <= -1
    mask = np.ones((size, k))
    lower, upper = -np.ones((size, d)), np.ones((size, d))
    domain_bounds = (-np.ones(d), np.ones(d)) if bounded else (np.full(d, -np.inf), np.full(d, np.inf))
    full = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper)
    early = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper, domain_bounds=domain_bounds)
    assert (full.t < -0.5).all() and (early.t < 0).all() and early.converged.all()
    if not bounded:
        assert early.iterations == full.iterations and np.array_equal(early.t, full.t)
        return
    assert early.iterations < full.iterations
    for m in range(size):
        w = early.duals[m] / early.duals[m].sum()
        bound = w @ c[m] + np.abs(w @ a[m]).sum()  # max over the box [-1, 1]^d of sum_j w_j (c_j - a_j x)
        assert bound == pytest.approx(early.t[m]) and bound >= full.t[m] - 1e-9 and bound < 0


def test_an_lp_iterate_that_already_beats_its_rows_is_handed_back_as_a_witness_candidate(rng):
    """A witness candidate needs a point that beats every working row by ``stop_when_positive``, not
    a primal-feasible iterate: the first iterate (the middle of the bounds) that does is returned at
    once, with its own margin as t, and one that does not is solved as before."""
    size, k, d = 4, 30, 8
    a = rng.normal(size=(size, k, d))
    a /= np.linalg.norm(a, axis=2, keepdims=True)
    c = 0.5 + rng.random(size=(size, k))  # x = 0 beats every row by at least 0.5
    c[2:] -= 2.0  # ... but not these: x = 0 is beaten there
    mask = np.ones((size, k))
    lower, upper = -np.ones((size, d)), np.ones((size, d))
    res = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper, stop_when_positive=1e-3)
    for m in range(size):
        margin = float(np.min(c[m] - a[m] @ res.x[m]))
        assert res.t[m] == pytest.approx(min(margin, 1.0)) if m < 2 else res.t[m] <= margin + 1e-9
    assert np.array_equal(res.x[:2], np.zeros((2, d))) and res.t[:2].min() >= 0.5
    alone = block_exact.solve_chebyshev_batch(a[:2], c[:2], mask[:2], lower[:2], upper[:2], stop_when_positive=1e-3)
    assert alone.iterations == 1


def test_a_start_beaten_by_most_rows_is_moved_towards_the_token_away_from_its_neighbours(rng):
    """A token whose start most rows beat gets the point, along the direction from its nearest rows'
    mean to its own row, that fewer rows beat; a start beaten by few rows is left as it is."""
    from argmaxcheck.engine._blas import rows_times  # noqa: PLC0415
    from argmaxcheck.engine.competitors import Competitors, row_distances  # noqa: PLC0415

    n, d = 400, 8
    w = rng.normal(size=(n, d))
    comp = Competitors(w, None)
    pos = np.arange(6)
    good = w[pos] * 3.0  # each row's own direction: beaten by few rows
    starts = np.vstack([-good[:3], good[3:]])  # the first three point away from their rows
    a_norm = row_distances(comp, pos, np.asarray(rows_times(w, w[pos].T).T), None)
    scores = certify.float64_scores(w, None, starts)

    def beaten(points):
        s = w @ points.T
        return (s > s[pos, np.arange(pos.size)][None, :]).sum(axis=0)

    before = beaten(starts)
    assert (before[:3] > n // 2).all() and (before[3:] < n // 4).all()
    moved, moved_scores = block_exact._nearer_starts(comp, pos, a_norm, starts, scores.copy(),
                                                     Unbounded().resolve(d), 16)
    after = beaten(moved)
    assert (after[:3] < before[:3]).all() and np.array_equal(moved[3:], starts[3:])
    assert np.allclose(moved_scores, w @ moved.T)


@pytest.mark.parametrize("kind", ["box", "ball"])
def test_a_token_some_row_beats_everywhere_is_settled_by_that_row_without_a_solve(rng, monkeypatch, kind):
    """Rows near a shared mean with spread biases, on a bounded domain: a row of larger bias beats such a
    token on the whole domain when its lead exceeds what the token can gain anywhere there. Its one-row
    certificate settles the token before any solve; the others are solved as before, and the verdicts
    are the per-token exact step's."""
    n, d = 300, 8
    w = rng.normal(size=(n, d))
    w[:40] = w.mean(axis=0) + 0.02 * rng.normal(size=(40, d))  # under-trained rows
    b = 0.1 * rng.normal(size=n)
    b[0] = 3.0  # beats every other under-trained row everywhere
    domain = (Box.symmetric(1.0) if kind == "box" else Ball(1.0)).resolve(d)
    comp = Competitors(w, b)
    solved = []
    solve = block_exact.solve_chebyshev_batch

    def spy(a, c, mask, *args, **kwargs):
        solved.append(mask.shape[0])
        return solve(a, c, mask, *args, **kwargs)

    monkeypatch.setattr(block_exact, "solve_chebyshev_batch", spy)
    ids = np.arange(1, 40)
    outs = block_exact.solve_blocks(comp, ids, domain, None)
    one_row = [k for k, out in enumerate(outs) if out is not None and out.rounds == 0]
    assert len(one_row) == ids.size
    for k in one_row:
        cert = outs[k].certificate
        assert cert.ok and cert.support.tolist() == [0]
        assert certify.check_certificate(w, b, int(ids[k]), cert.support, cert.weights, domain).ok
    assert sum(solved) == 0
    reference = audit(w, b, domain, tokens=ids.tolist(), options=AuditOptions(exact_all=True, **FAST))
    assert all(t.verdict == "unargmaxable" for t in reference.tokens)
    monkeypatch.setattr(block_exact, "_beaten_by_one_row", lambda *args: {})
    outs = block_exact.solve_blocks(comp, ids, domain, None)
    assert sum(solved) >= ids.size and all(out is None or out.rounds >= 1 for out in outs)


def test_several_vectors_in_one_pass_over_the_rows_equal_one_pass_each(rng):
    """The batched solve takes the border and the predictor's right-hand side in one product over each
    problem's real rows (padding left out); each column must equal its own product."""
    a = rng.normal(size=(3, 7, 5))
    rows = np.array([7, 4, 0])
    v = rng.normal(size=(3, 7, 2))
    both = block_exact._atv(a, v, rows)
    for col in range(2):
        one = block_exact._atv(a, np.ascontiguousarray(v[..., col]), rows)
        assert np.allclose(both[..., col], one, rtol=1e-14, atol=1e-14)
    assert np.allclose(both[1], a[1][:4].T @ v[1][:4]) and np.all(both[2] == 0)


@pytest.mark.parametrize("ball", [False, True])
def test_rows_kept_from_round_to_round_equal_rows_stacked_afresh(rng, ball):
    """The block keeps each token's constraint rows and adds only what a round added; the slab a token
    ends with, and a solve on the shared buffer (``members``), equal those of rows built in one go."""
    w = rng.normal(size=(40, 6))
    b = rng.normal(size=40)
    comp = Competitors(w, b)
    domain = (Ball(3.0, center=rng.normal(size=6)) if ball else Unbounded()).resolve(6)
    pos = np.array([3, 17, 25])
    a_norm = np.linalg.norm(w[None, :, :] - w[pos][:, None, :], axis=2)
    a_norm[np.arange(3), pos] = np.inf
    stack = block_exact._Stack(comp, pos, a_norm, domain, ball, most=30)
    working = [np.array([0, 1, 2]), np.array([5]), np.array([7, 8])]
    stack.rows(np.arange(3), working)
    working = [np.concatenate([working[0], [9, 10, 11, 12]]), working[1], np.concatenate([working[2], [30]])]
    a, c, mask = stack.rows(np.array([0, 2]), working)
    assert mask.shape == (2, 7) and a[0].shape[0] >= 7 and a[2].shape[0] >= 3
    for m, t in enumerate((0, 2)):
        rows = working[t]
        unit = (w[rows] - w[pos[t]]) / a_norm[t, rows][:, None]
        const = (b[pos[t]] - b[rows]) / a_norm[t, rows]
        if ball:
            const, unit = const - unit @ domain.anchor(), domain.ray_reach * unit
        assert np.allclose(a[t][:rows.size], unit, rtol=1e-15, atol=0) and np.allclose(c[m, :rows.size], const)
        assert mask[m].sum() == rows.size
    lower, upper = (None, None) if ball else (-2 * np.ones((2, 6)), 2 * np.ones((2, 6)))
    shared = block_exact.solve_chebyshev_batch(a, c, mask, lower, upper, unit_ball=ball, members=np.array([0, 2]))
    padded = np.zeros((2, 7, 6))
    padded[0], padded[1, :3] = a[0][:7], a[2][:3]
    alone = block_exact.solve_chebyshev_batch(padded, c, mask, lower, upper, unit_ball=ball)
    assert np.array_equal(shared.t, alone.t) and np.array_equal(shared.x, alone.x)


def test_a_token_out_of_room_takes_twice_the_rows_while_the_block_has_bytes_to_spare():
    rng = np.random.default_rng(0)
    n, d, cap = 400, 10, 12
    w, b = rng.normal(size=(n, d)), rng.normal(size=n)
    pos = np.arange(8)
    w[pos] *= 0.3  # deep inside a ball's hull: certificates of more than `cap` rows
    comp, domain = Competitors(w, b), Ball(np.sqrt(d)).resolve(d)
    one_more = (2 * cap - cap) * d * 8  # what one token's doubled cap takes
    for spare, most_grown in [(0, 0), (one_more, 1), (256 << 20, pos.size)]:
        out = block_exact.solve_blocks(comp, pos, domain, None, max_rows=cap, budget_bytes=spare)
        grown = [o for o in out if o is not None and o.rows_used > cap]
        assert len(grown) <= most_grown and all(o.rows_used <= 2 * cap for o in grown)
        for p, o in zip(pos.tolist(), out, strict=True):
            if o is not None and o.certificate is not None:
                assert certify.check_certificate(w, b, p, o.certificate.support, o.certificate.weights, domain).ok
        if spare == 0:
            left = sum(o is None for o in out)
            assert left > 0
    assert sum(o is None for o in out) < left and grown
