"""The batched phase: shared-basis certificates for rows deep inside the hull, checked, never guessed."""

from __future__ import annotations

import importlib
import itertools

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, Unbounded, audit
from argmaxcheck.engine import batched, certify
from argmaxcheck.engine.backend import NUMPY_OPS, TorchOps
from argmaxcheck.engine.batched import _max_entropy_weights, _Support, interior_certificates, support_rows
from argmaxcheck.engine.competitors import Competitors


def _planted(rng, n=1500, d=24, planted=30, bias=False):
    weight = rng.normal(size=(n, d))
    ids = rng.choice(n, size=planted, replace=False)
    pool = np.setdiff1d(np.arange(n), ids)
    for i in ids:  # spread convex combinations: deep inside the hull
        rows = rng.choice(pool, size=4 * d, replace=False)
        weight[i] = rng.dirichlet(np.ones(rows.size)) @ weight[rows]
    b = None
    if bias:
        b = rng.normal(scale=0.01, size=n)
        b[ids] = -1.0  # well below any average of the others: still unargmaxable
    return weight, b, np.sort(ids)


@pytest.mark.parametrize("with_bias", [False, True])
def test_deep_rows_are_settled_in_the_batched_phase_with_certificates_that_recheck(rng, with_bias):
    weight, bias, ids = _planted(rng, bias=with_bias)
    report = audit(weight, bias, options=AuditOptions(probability_seconds=0))
    batched = [t for t in report.tokens if t.stage == "batched" and t.verdict == "unargmaxable"]
    assert {t.id for t in batched} == set(ids.tolist())
    assert report.timings["batched_tokens"] >= ids.size
    for t in batched:
        assert t.id not in t.support
        again = certify.check_certificate(weight, bias, t.id, t.support, t.weights, Unbounded())
        assert again.ok, again.reason
    reference = audit(weight, bias, tokens=ids.tolist(), options=AuditOptions(batched=False, probability_seconds=0))
    assert all(t.verdict == "unargmaxable" and t.stage == "exact" for t in reference.tokens)


def test_rows_on_the_hull_and_outside_the_support_go_on_to_the_exact_step(rng):
    weight, _, ids = _planted(rng, planted=5)
    comp = Competitors(weight, None)
    ordinary = np.setdiff1d(np.arange(40), ids)[:20]  # vertices of the hull: argmaxable
    checks, _ = interior_certificates(comp, ordinary, Unbounded().resolve(weight.shape[1]))
    assert checks == [None] * ordinary.size
    # A deep row whose own certificate would need rows outside the support is not decided here
    # if the support cannot hold it; whatever it gets is checked.
    mixed = np.r_[ids, ordinary]
    for pos, check in zip(mixed, interior_certificates(comp, mixed, Unbounded().resolve(weight.shape[1]))[0],
                          strict=True):
        if check is not None:
            assert pos in ids and check.ok


def test_shared_basis_check_refuses_what_is_not_a_certificate(rng):
    weight, _, ids = _planted(rng, planted=4)
    d = weight.shape[1]
    comp = Competitors(weight, None)
    support = np.setdiff1d(support_rows(comp, 8 * d), ids)
    lams = np.full((support.size, ids.size), 1.0 / support.size)  # the plain average: not w_q
    basis = np.arange(d + 1)
    assert certify.check_on_shared_basis(weight, None, ids, support, lams, basis, Unbounded().resolve(d)) \
        == [None] * ids.size
    nan = np.full_like(lams, np.nan)
    assert certify.check_on_shared_basis(weight, None, ids, support, nan, basis, Unbounded().resolve(d)) \
        == [None] * ids.size
    own = np.r_[support[:-1], ids[0]]  # a token may not support itself
    assert certify.check_on_shared_basis(weight, None, ids, own, lams, basis, Unbounded().resolve(d)) \
        == [None] * ids.size


def test_bias_that_lets_a_deep_row_win_is_not_overruled(rng):
    """A row inside the hull of the weights with a large enough bias is argmaxable on R^d: the
    enclosed weights' bias check must refuse it (the audit's screen finds its witness)."""
    weight, bias, ids = _planted(rng, planted=6, bias=True)
    bias[ids[:3]] = 5.0
    comp = Competitors(weight, bias)
    checks, _ = interior_certificates(comp, ids, Unbounded().resolve(weight.shape[1]))
    assert checks[:3] == [None] * 3 and all(c is not None and c.ok for c in checks[3:])
    report = audit(weight, bias, tokens=ids.tolist(), options=AuditOptions(probability_seconds=0))
    assert [t.verdict for t in report.tokens] == ["argmaxable"] * 3 + ["unargmaxable"] * 3


def test_not_run_off_r_d(rng):
    weight, _, ids = _planted(rng, planted=5)
    report = audit(weight, rng.normal(scale=0.01, size=weight.shape[0]), domain=Ball(1.0),
                   tokens=ids.tolist(), options=AuditOptions(probability_seconds=0))
    assert "batched_tokens" not in report.timings and {t.stage for t in report.tokens} <= {"screen", "exact"}


def test_wide_layers_skip_the_phase_without_d_by_d_work(rng):
    import tracemalloc  # noqa: PLC0415

    weight = rng.normal(size=(6, 20000))
    weight[3] = 0.25 * weight[0] + 0.25 * weight[1] + 0.5 * weight[4]
    comp = Competitors(weight, None)
    tracemalloc.start()
    checks, _ = interior_certificates(comp, np.array([3]), Unbounded().resolve(20000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert checks == [None] and peak < 50 * 2**20  # a d x d matrix would be 3.2 GB


def test_same_chunks_give_the_same_batched_certificates_bit_for_bit(rng):
    """What resumed and Ray runs rely on: a chunk's batched certificates depend only on the chunk."""
    from argmaxcheck.runner import audit_sharded  # noqa: PLC0415

    weight, _, ids = _planted(rng, n=1200, d=16, planted=40)
    options = AuditOptions(probability_seconds=0)
    first = audit_sharded(weight, options=options, chunk_size=300)
    second = audit_sharded(weight, options=options, chunk_size=300)
    batched = [(a, b) for a, b in zip(first.tokens, second.tokens, strict=True) if a.stage == "batched"]
    assert len(batched) >= ids.size  # the planted rows, and any row of the cloud that is inside too
    for a, b in batched:
        assert np.array_equal(a.support, b.support) and np.array_equal(a.weights, b.weights)


def test_tokens_hugging_a_face_do_not_spoil_the_block_for_deep_rows():
    """Found in review: near-face tokens put their weight on that face's rows; a basis averaged
    over them was singular and refused every deep row of the block."""
    rng = np.random.default_rng(2)
    n, d = 2000, 12
    weight = rng.integers(-64, 65, size=(n, d)) * 2.0**-7
    weight[:, 0] = np.minimum(weight[:, 0], 0.5)
    face = rng.choice(n, 400, replace=False)
    weight[face, 0] = 0.5  # a facet {x_0 = 0.5}
    rest = np.setdiff1d(np.arange(n), face)
    deep, flat, pool = rest[:20], rest[20:40], rest[40:]
    for i in deep:
        weight[i] = rng.dirichlet(np.ones(48)) @ weight[rng.choice(pool, 48, replace=False)]
    for i in flat:  # on the facet, a hair inside
        weight[i] = weight[rng.choice(face, 64, replace=False)].sum(axis=0) / 64
        weight[i, 0] -= 1e-13
    report = audit(weight, tokens=np.r_[deep, flat].tolist(), options=AuditOptions(probability_seconds=0))
    stage = {t.id: (t.stage, t.verdict) for t in report.tokens}
    assert all(stage[int(i)] == ("batched", "unargmaxable") for i in deep)


def test_the_announced_stage_is_completed_when_the_phase_is_skipped(rng):
    weight = rng.normal(size=(20, 16))
    weight[5] = weight[:4].mean(axis=0)
    seen = []

    class Recorder:
        def stage(self, name, total):
            seen.append([name, total, 0])

        def advance(self, n):
            seen[-1][2] += n

    audit(weight, options=AuditOptions(probability_seconds=0), progress=Recorder())
    assert all(done == total for _, total, done in seen), seen


def test_a_non_finite_bias_proves_nothing(rng):
    weight, _, ids = _planted(rng, planted=4)
    comp = Competitors(weight, None)
    support = np.setdiff1d(support_rows(comp, 8 * weight.shape[1]), ids)
    lams, converged = _max_entropy_weights(_Support(comp, support), weight[ids], steps=120, refresh=4)
    assert converged.all()
    basis = np.sort(np.argpartition(-lams.mean(axis=1), weight.shape[1])[: weight.shape[1] + 1])
    domain = Unbounded().resolve(weight.shape[1])
    good = certify.check_on_shared_basis(weight, None, ids, support, lams, basis, domain)
    assert all(c is not None for c in good)
    for poison in (np.nan, np.inf):
        bias = np.zeros(weight.shape[0])
        bias[support[0]] = poison
        with np.errstate(invalid="ignore"):
            bad = certify.check_on_shared_basis(weight, bias, ids, support, lams, basis, domain)
        assert bad == [None] * ids.size


def test_without_the_qr_retry_what_is_settled_is_still_checked(rng, monkeypatch):
    """Above _QR_RETRY_MAX_DIM the block's second basis is the refused tokens' own average weights
    and no QR follows; tokens it cannot prove go on to the exact step, never a guess."""
    from argmaxcheck.engine import batched  # noqa: PLC0415

    monkeypatch.setattr(batched, "_QR_RETRY_MAX_DIM", 0)
    weight, _, ids = _planted(rng)
    report = audit(weight, options=AuditOptions(probability_seconds=0))
    assert all(t.verdict == "unargmaxable" for t in report.tokens if t.id in set(ids.tolist()))
    assert report.timings["batched_tokens"] > 0
    for t in report.tokens:
        if t.stage == "batched" and t.verdict == "unargmaxable":
            assert certify.check_certificate(weight, None, t.id, t.support, t.weights, Unbounded()).ok
        elif t.stage == "batched":  # a witness from the search's separating direction
            assert certify.check_witness(weight, None, t.id, t.witness, Unbounded(), np.linalg.norm(weight, axis=1)) > 0


def test_later_blocks_reuse_the_basis_inverse_that_proved_the_first(rng, monkeypatch):
    """Blocks in the same part of the hull share a basis: its verified inverse is computed once,
    and the tokens it proves still carry certificates that recheck on their own."""
    weight, _, ids = _planted(rng, planted=40)
    comp = Competitors(weight, None)
    inverted = []
    original = certify.invert_basis
    monkeypatch.setattr(certify, "invert_basis", lambda *a: inverted.append(1) or original(*a))
    checks, spent = interior_certificates(comp, ids, Unbounded().resolve(weight.shape[1]), block=8)
    assert all(c is not None for c in checks)
    assert len(inverted) < 5  # five blocks
    for row, check in zip(ids, checks, strict=True):
        assert certify.check_certificate(weight, None, int(row), check.support, check.weights, Unbounded()).ok
    assert set(spent) == {"support", "search", "check"}


def test_tokens_dropped_as_stalled_are_searched_again_with_more_patience(rng, monkeypatch):
    """A token the stall rule dropped (NaN weights) gets one more search, with five times the
    patience and twice the steps; what that proves is checked like any certificate."""
    from argmaxcheck.engine import batched  # noqa: PLC0415

    weight, _, ids = _planted(rng, planted=12)
    comp = Competitors(weight, None)
    calls = []
    original = batched._max_entropy_weights

    def first_stalls(support, targets, steps, refresh, **kwargs):
        calls.append((targets.shape[0], steps, kwargs["patience"]))
        lams, converged = original(support, targets, steps, refresh, **kwargs)
        if len(calls) == 1:  # as if the first three had stalled
            lams[:, :3], converged[:3] = np.nan, False
        return lams, converged

    monkeypatch.setattr(batched, "_max_entropy_weights", first_stalls)
    # Below _PERSIST_MIN_DIM the exact step is cheaper than another search: none is made.
    checks, _ = interior_certificates(comp, ids, Unbounded().resolve(weight.shape[1]))
    assert calls == [(12, 120, 8)] and checks[:3] == [None] * 3
    calls.clear()
    monkeypatch.setattr(batched, "_PERSIST_MIN_DIM", weight.shape[1])
    checks, _ = interior_certificates(comp, ids, Unbounded().resolve(weight.shape[1]))
    assert calls == [(12, 120, 8), (3, 240, 40)]
    assert all(c is not None for c in checks)
    for row, check in zip(ids, checks, strict=True):
        assert certify.check_certificate(weight, None, int(row), check.support, check.weights, Unbounded()).ok


def test_tokens_left_after_both_searches_get_one_pass_on_a_support_twice_as_wide(rng, monkeypatch):
    from argmaxcheck.engine import batched  # noqa: PLC0415

    weight, _, ids = _planted(rng, planted=10)
    d = weight.shape[1]
    comp = Competitors(weight, None)
    original = batched._check_block

    def narrow_refuses_two(comp_, pos, support, lams, converged, domain):
        checks = original(comp_, pos, support, lams, converged, domain)
        if support.rows.size <= 8 * d:
            checks[:2] = [None, None]
        return checks

    monkeypatch.setattr(batched, "_check_block", narrow_refuses_two)
    monkeypatch.setattr(batched, "_PERSIST_MIN_DIM", d)
    checks, _ = interior_certificates(comp, ids, Unbounded().resolve(d))
    assert all(c is not None for c in checks)
    assert [c.support.size > 8 * d for c in checks] == [True] * 2 + [False] * 8
    for row, check in zip(ids, checks, strict=True):
        assert row not in check.support
        assert certify.check_certificate(weight, None, int(row), check.support, check.weights, Unbounded()).ok



def _family(name: str, size: str):
    """A head of benchmarks/heads.py (seeded): the families the thresholds were tuned on."""
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import heads  # noqa: PLC0415

    return heads.make(name, size, 0)


def test_a_pass_whose_first_support_holds_nothing_tries_random_rows(monkeypatch):
    """On heads.py's LM-like rows the 8d outermost rows are mostly the longest, displaced along the
    shared mean: their hull holds none of the under-trained rows. The first block then tries 8d rows
    drawn at random, which hold them all, and the rest of the pass keeps that support."""
    from argmaxcheck.engine import batched  # noqa: PLC0415

    head = _family("undertrained", "8192x256")
    ids = np.argsort(np.linalg.norm(head.weight - head.weight.mean(axis=0), axis=1))[:200].tolist()
    monkeypatch.setattr(batched, "_WIDE", batched._FIRST)  # no wider support: the 8d pass alone
    report = audit(head.weight, tokens=ids, options=AuditOptions(probability_seconds=0.0))
    assert report.stats.stage("batched").settled == 200
    assert all(t.verdict == "unargmaxable" and t.stage == "batched" for t in report.tokens)
    monkeypatch.setattr(batched, "_SUPPORT_KINDS", ("outermost",))
    alone = audit(head.weight, tokens=ids[:64], options=AuditOptions(probability_seconds=0.0))
    assert alone.stats.stage("batched").settled < 8


def test_the_wide_pass_takes_shallow_rows_only_after_a_first_pass_that_settled_enough(monkeypatch):
    """At 8192 x 256 the 8d outermost rows' hull misses under-trained rows (0.05 of their deviation from
    the mean); the 16d pass settles them. Rows the screen found at least 0.04 deep always take it; less
    deep ones only where the first pass settled at least _MIN_YIELD of what it tried (a layer with few
    rows for its width: undertrained 16384 x 768 sent half its under-trained rows, less deep, to the
    exact step at 0.4 s each), not where it settled none (SmolLM2's 26: 6 s for nothing)."""
    from argmaxcheck.engine import batched  # noqa: PLC0415
    from argmaxcheck.engine.state import Guesses  # noqa: PLC0415

    monkeypatch.setattr(batched, "_SUPPORT_KINDS", ("outermost",))  # the support that misses them at 8d
    head = _family("undertrained", "8192x256")
    ids = np.argsort(np.linalg.norm(head.weight - head.weight.mean(axis=0), axis=1))[:64].tolist()
    deep = audit(head.weight, tokens=ids, options=AuditOptions(probability_seconds=0.0))
    assert deep.stats.stage("batched").settled == 64
    screen_depth = Guesses.depth_at
    monkeypatch.setattr(Guesses, "depth_at", lambda self, at: np.minimum(screen_depth(self, at), 0.01))
    shallow = audit(head.weight, tokens=ids, options=AuditOptions(probability_seconds=0.0))
    assert shallow.stats.stage("batched").settled < 8  # the 8d pass settled under a quarter: no wide pass
    monkeypatch.setattr(batched, "_MIN_YIELD", 0.0)  # as if it had settled enough
    wide = audit(head.weight, tokens=ids, options=AuditOptions(probability_seconds=0.0))
    assert wide.stats.stage("batched").settled == 64
    assert [t.verdict for t in shallow.tokens] == [t.verdict for t in wide.tokens] == ["unargmaxable"] * 64


def test_tokens_the_screen_missed_by_a_hair_skip_the_phase():
    """Near-duplicate twins lose at their best guess by about 5e-5 of the logits' scale: none is a deep
    row, so none enters the batched phase; the stages after it decide them all (the move of each
    one's best guess, :mod:`argmaxcheck.engine.polish`, nearly all of them)."""
    head = _family("near_dup", "2000x64")
    report = audit(head.weight, head.bias, options=AuditOptions(probability_seconds=0.0))
    assert report.stats.stage("batched") is None
    assert report.stats.stage("polish").settled > 100
    assert not report.undecided


@pytest.mark.parametrize("with_bias", [False, True])
def test_the_phase_gives_up_after_a_pilot_block_and_hands_the_rest_to_the_wide_pass(rng, monkeypatch, with_bias):
    from argmaxcheck.engine import batched  # noqa: PLC0415

    weight = rng.normal(size=(600, 8))
    weight /= np.linalg.norm(weight, axis=1, keepdims=True)  # on a sphere: every row wins somewhere
    bias = rng.normal(scale=0.01, size=600) if with_bias else None
    comp = Competitors(weight, bias)
    searched = []
    search = batched._max_entropy_weights

    def spy(support, targets, *args, **kwargs):
        searched.append(len(targets))
        patience.append(kwargs["patience"])
        return search(support, targets, *args, **kwargs)

    patience = []
    monkeypatch.setattr(batched, "_max_entropy_weights", spy)
    _, spent = interior_certificates(comp, np.arange(200), Unbounded().resolve(8), block=128, depth=np.ones(200),
                                     give_up=True)
    # A pilot block of 64 that no kind of support gives a certificate (outermost, then random rows) ends a
    # pass. The 16d pass takes every row the first left, with a bias or without, and gives up the same
    # way, after a pilot's patience (not the pass's 40). No weights converge: no lifted search follows.
    assert searched == [64, 64, 64, 64]
    assert patience == [8, 8, batched._PILOT_PATIENCE, batched._PILOT_PATIENCE]
    assert spent["skipped"] == 136


@pytest.mark.parametrize(("share", "goes_on"), [(0.35, True), (0.15, False)])
def test_off_rd_a_pass_goes_on_while_a_quarter_of_each_block_is_settled(rng, monkeypatch, share, goes_on):
    """On a half-open box (where the exact step is dear) the pass asks what it asks on R^d: a quarter
    of each block. It once asked half, and stopped on swish_box 32768 x 512 after 154 of 983 rows."""
    weight = rng.normal(size=(600, 8))
    comp = Competitors(weight, rng.normal(scale=0.01, size=600))
    searched = []

    def settled_share(comp_, pos, support, lams, converged, domain):
        searched.append(pos.size)
        return [object() if k < share * pos.size else None for k in range(pos.size)]

    monkeypatch.setattr(batched, "_check_block", settled_share)
    domain = Box(np.full(8, -0.25), np.full(8, np.inf)).resolve(8)
    _, spent = interior_certificates(comp, np.arange(200), domain, block=64, depth=np.ones(200), give_up=True)
    assert (spent.get("skipped", 0) == 0) == goes_on


def test_the_wide_pass_pilot_has_a_short_patience_and_the_blocks_after_it_the_pass_s_own(rng, monkeypatch):
    from argmaxcheck.engine import batched  # noqa: PLC0415

    weight, _, ids = _planted(rng, n=4000, planted=200)
    d = weight.shape[1]
    original_check, original_search = batched._check_block, batched._max_entropy_weights
    calls = []

    def narrow_refuses_all(comp_, pos, support, lams, converged, domain):
        checks = original_check(comp_, pos, support, lams, converged, domain)
        return checks if support.rows.size > 8 * d + 1 else [None] * len(checks)

    def spy(support, targets, *args, **kwargs):
        calls.append((support.rows.size > 8 * d + 1, len(targets), kwargs["patience"]))
        return original_search(support, targets, *args, **kwargs)

    monkeypatch.setattr(batched, "_check_block", narrow_refuses_all)
    monkeypatch.setattr(batched, "_max_entropy_weights", spy)
    checks, _ = interior_certificates(Competitors(weight, None), ids, Unbounded().resolve(d), block=64,
                                      depth=np.ones(ids.size), give_up=True)
    wide = [(size, patience) for is_wide, size, patience in calls if is_wide]
    assert wide == [(64, batched._PILOT_PATIENCE), (64, 5 * batched._PATIENCE), (64, 5 * batched._PATIENCE),
                    (8, 5 * batched._PATIENCE)]
    assert all(c is not None for c in checks)


def test_deep_rows_of_a_ball_with_a_bias_get_certificates_that_hold_on_the_ball(monkeypatch):
    """Off R^d the phase takes the rows the screen found deepest: a LayerNorm-folded head's under-trained
    rows (a ball with a bias). Each certificate holds on R^d, so on the ball too; the check is redone here
    and the verdicts are those of the per-token exact step. Their bias inequality is met by the search
    again with the bias matched (4096 x 128: 79 of 82 settled; without it 59, and 48 without the tilt towards
    rows of larger bias either)."""
    from argmaxcheck.engine import batched  # noqa: PLC0415

    head = _family("layernorm_ball", "4096x128")
    report = audit(head.weight, head.bias, head.domain, options=AuditOptions(probability_seconds=0.0))
    stage = report.stats.stage("batched")
    settled = [t for t in report.tokens if t.stage == "batched"]
    assert stage.settled == len(settled) > 30
    for t in settled:
        assert t.verdict == "unargmaxable"
        again = certify.check_certificate(head.weight.astype(np.float64), head.bias.astype(np.float64), t.id,
                                          t.support, t.weights, head.domain)
        assert again.ok, again.reason
    ids = [t.id for t in settled[:6]]
    exact = audit(head.weight, head.bias, head.domain, tokens=ids, options=AuditOptions(exact_all=True))
    assert [t.verdict for t in exact.tokens] == ["unargmaxable"] * len(ids)

    class Unlifted(batched._Support):
        def __init__(self, *args):
            super().__init__(*args)
            self.bias_scale = None  # no second search with the bias matched

    monkeypatch.setattr(batched, "_Support", Unlifted)
    unlifted = audit(head.weight, head.bias, head.domain, options=AuditOptions(probability_seconds=0.0))
    monkeypatch.setattr(batched, "_TILT", 0.0)
    untilted = audit(head.weight, head.bias, head.domain, options=AuditOptions(probability_seconds=0.0))
    assert untilted.stats.stage("batched").settled < unlifted.stats.stage("batched").settled < stage.settled
    for other in (unlifted, untilted):
        assert [t.verdict for t in other.tokens] == [t.verdict for t in report.tokens]


def test_off_rd_a_few_deep_rows_are_left_to_the_exact_step():
    """Fewer than _MIN_ROWS_OFF_RD deep rows on a ball with a bias: the supports would cost more than the
    exact step, and the phase does not run."""
    head = _family("layernorm_ball", "4096x128")
    deep = [t for t in audit(head.weight, head.bias, head.domain, options=AuditOptions(probability_seconds=0.0)).tokens
            if t.stage == "batched"][:5]
    report = audit(head.weight, head.bias, head.domain, tokens=[t.id for t in deep],
                   options=AuditOptions(probability_seconds=0.0))
    assert report.stats.stage("batched") is None
    assert [t.verdict for t in report.tokens] == ["unargmaxable"] * 5


def test_a_box_bounded_on_every_side_is_left_to_the_exact_step():
    """On a bounded box a certificate need not balance the token's row and the exact step finds its few
    rows cheaply: the phase does not run there. It still does with an open side (swish's box), where
    certificates must balance the open coordinates exactly, as on R^d."""
    bounded = _family("box_bias", "4096x128")
    report = audit(bounded.weight, bounded.bias, bounded.domain, options=AuditOptions(probability_seconds=0.0))
    assert report.stats.stage("batched") is None
    assert report.stats.stage("block_exact").settled > 0
    assert not any(t.verdict == "undecided" for t in report.tokens)
    half_open = _family("swish_box", "4096x128")
    report = audit(half_open.weight, half_open.bias, half_open.domain, options=AuditOptions(probability_seconds=0.0))
    assert report.stats.stage("batched").settled > 0


def _ops_to_test():
    yield NUMPY_OPS
    torch = _torch_or_none()
    if torch is not None:
        yield TorchOps(torch, torch.device("cpu"))


def _torch_or_none():
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


@pytest.mark.parametrize("ops", list(_ops_to_test()), ids=lambda ops: ops.name)
def test_line_search_finds_each_column_s_minimum_and_stops_columns_already_there(ops, monkeypatch):
    """The step is the 1-D minimum of each column's convex objective (against a fine grid), whether a
    column converges at the first iteration or needs bisection, and columns that settled are not
    computed again."""
    rng = np.random.default_rng(3)
    k, cols = 300, 40
    z = rng.normal(size=(k, cols)) * 3
    moves = rng.normal(size=(k, cols)) * rng.uniform(0.1, 20, size=cols)
    pull = rng.normal(size=cols) * 2
    widths = []
    original = ops.softmax_moments

    def counted(zz, mm, step):
        widths.append(zz.shape[1])
        return original(zz, mm, step)

    monkeypatch.setattr(ops, "softmax_moments", counted)
    steps = ops.numpy(batched._line_search(ops.asarray(z), ops.asarray(moves), ops.asarray(pull), ops, iterations=40))

    def objective(a):
        y = z[:, None, :] - a[:, None] * moves[:, None, :] if a.ndim == 2 else z - a * moves
        top = y.max(axis=0)
        return top + np.log(np.exp(y - top).sum(axis=0)) + a * pull

    grid = np.linspace(0, 5 * max(steps.max(), 1.0), 20001)[:, None] * np.ones((1, cols))
    values = np.stack([objective(g) for g in grid])
    best = values.min(axis=0)
    assert (steps >= 0).all()
    assert np.all(objective(steps) <= best + 1e-6 * np.maximum(1.0, np.abs(best)))
    assert widths[0] == cols and min(widths) < cols  # settled columns left the later iterations


def test_weights_that_fall_short_of_the_bias_are_searched_again_with_the_bias_matched(rng, monkeypatch):
    """Deep rows whose bias lies between what the tilted weights reach and the most any weights matching
    the row reach: unargmaxable, and the plain search's weights prove none of them. The second search,
    with the bias as one more matched coordinate (aiming just above b_q, from the first search's weights),
    proves them; its certificates recheck. The first weights, short of the bias, are not checked at all."""
    from scipy.optimize import linprog  # noqa: PLC0415

    n, d = 600, 8
    weight = rng.normal(size=(n, d))
    bias = rng.normal(size=n)
    ids = np.arange(12)
    pool = np.arange(12, n)
    for i in ids:  # deep inside the hull of the other rows
        weight[i] = rng.dirichlet(np.ones(40)) @ weight[rng.choice(pool, 40, replace=False)]
    # 95 % of the way up the biases that weights over the (random) support matching its row can average to
    others = np.setdiff1d(batched.sampled_rows(n, batched._FIRST * d), ids)
    for i in ids:
        system, target = np.vstack([weight[others].T, np.ones(others.size)]), np.append(weight[i], 1.0)
        top = linprog(-bias[others], A_eq=system, b_eq=target, bounds=(0, None), method="highs")
        low = linprog(bias[others], A_eq=system, b_eq=target, bounds=(0, None), method="highs")
        bias[i] = low.fun + 0.95 * (-top.fun - low.fun)
    comp = Competitors(weight, bias)
    domain = Unbounded().resolve(d)
    searches, proven, offered = [], [], []
    search, check_block = batched._max_entropy_weights, batched._check_block

    def spy_search(support, targets, *args, **kwargs):
        lams, converged = search(support, targets, *args, **kwargs)
        searches.append((kwargs["lifted"], int(converged.sum())))
        return lams, converged

    def spy_check(*args):
        checks = check_block(*args)
        proven.append(sum(c is not None for c in checks))
        offered.append(int(np.isfinite(args[3]).all(axis=0).sum()))
        return checks

    monkeypatch.setattr(batched, "_max_entropy_weights", spy_search)
    monkeypatch.setattr(batched, "_check_block", spy_check)
    monkeypatch.setattr(batched, "_SUPPORT_KINDS", ("sampled",))
    monkeypatch.setattr(batched, "_BIAS_LEADERS", 0.0)  # the random rows alone, whose fibre set the biases
    checks, _ = interior_certificates(comp, ids, domain)
    assert searches[0] == (False, ids.size) and searches[1][0]  # every row matched; then the bias too
    assert proven[0] == 0 and proven[1] >= ids.size - 2
    assert offered[0] == 0 and offered[1] >= ids.size - 2  # weights clearly short of the bias: not checked
    assert sum(check is not None for check in checks) >= ids.size - 2
    for pos, check in zip(ids, checks, strict=True):
        if check is not None:
            assert check.ok and certify.check_certificate(weight, bias, int(pos), check.support, check.weights,
                                                          domain).ok


def test_bias_leaders_rank_rows_by_the_bias_their_weights_do_not_explain(rng):
    """A LayerNorm-folded bias is W beta plus each row's own part: the rows ranked first are those whose
    own part is largest, not those of largest bias (which W beta decides)."""
    weight = rng.normal(size=(500, 6))
    own = 0.01 * rng.normal(size=500)
    own[[17, 42]] = [0.5, 0.4]
    bias = weight @ np.array([3.0, -2.0, 1.0, 0.0, 0.5, 1.0]) + own
    order = batched.bias_leaders(Competitors(weight, bias))
    assert order[:2].tolist() == [17, 42]
    assert sorted(order.tolist()) == list(range(500))
    assert np.argmax(bias) not in order[:2]


def test_with_a_bias_a_quarter_of_the_sampled_support_is_the_bias_leaders(rng, monkeypatch):
    weight, bias, ids = _planted(rng, bias=True)
    comp = Competitors(weight, bias)
    made = []

    class Spy(_Support):
        def __init__(self, comp, rows):
            super().__init__(comp, rows)
            made.append(rows)

    monkeypatch.setattr(batched, "_Support", Spy)
    monkeypatch.setattr(batched, "_SUPPORT_KINDS", ("sampled",))
    interior_certificates(comp, ids, Unbounded().resolve(weight.shape[1]))
    d = weight.shape[1]
    leaders = batched.bias_leaders(comp)[: int(batched._FIRST * d * batched._BIAS_LEADERS)]
    assert np.isin(leaders, made[0]).all()
    assert made[0].size <= batched._FIRST * d


def _few_rows_for_their_width():
    """heads.py's under-trained rows at n/d = 3.2: in that many dimensions some of them are still
    vertices of the hull (argmaxable), the rest inside it."""
    head = _family("undertrained", "1024x320")
    return np.asarray(head.weight, dtype=np.float64), head.planted


def test_the_search_returns_a_separating_direction_for_a_target_outside_the_hull(rng):
    weight = rng.normal(size=(600, 12))
    comp = Competitors(weight, None)
    support = _Support(comp, np.arange(20, 600))
    inside = np.tile(weight[20:40].mean(axis=0), (4, 1))  # a point deep inside, four times
    outside = 3.0 * weight[:4]  # well beyond every support row along their own direction
    directions = np.empty((12, 8))
    _, converged = _max_entropy_weights(support, np.vstack([inside, outside]), steps=120, refresh=4,
                                        directions=directions)
    assert converged[:4].all() and np.isnan(directions[:, :4]).all()
    assert not converged[4:].any()
    theta = directions[:, 4:]
    own = (outside - support.mean) @ theta  # (4, 4): row b's score under each theta
    rows = (weight[20:] - support.mean) @ theta
    assert (np.diag(own) > rows.max(axis=0)).all()


@pytest.mark.parametrize("ball", [False, True])
def test_rows_outside_the_hull_get_witnesses_from_the_search_and_agree_with_the_reference(ball):
    weight, under = _few_rows_for_their_width()
    domain = Ball(np.sqrt(weight.shape[1])) if ball else Unbounded()
    report = audit(weight, None, domain, options=AuditOptions(probability_seconds=0))
    stats = report.stats.stage("batched")
    found = [t for t in report.tokens if t.stage == "batched" and t.verdict == "argmaxable"]
    assert len(found) == stats.counts["witnesses"] > 0
    dom, norms = domain.resolve(weight.shape[1]), np.linalg.norm(weight, axis=1)
    for t in found:
        assert t.id in set(under.tolist())
        assert certify.check_witness(weight, None, t.id, t.witness, dom, norms) > 0
    reference = audit(weight, None, domain, tokens=under.tolist(), options=AuditOptions(exact_all=True,
                                                                                          probability_seconds=0))
    mine = {t.id: t.verdict for t in report.tokens}
    assert all(mine[t.id] == t.verdict for t in reference.tokens)


def test_points_along_wrong_directions_settle_nothing(monkeypatch):
    from argmaxcheck.engine import batched  # noqa: PLC0415

    weight, under = _few_rows_for_their_width()
    noise = np.random.default_rng(3)
    monkeypatch.setattr(batched, "_ray_points",
                        lambda comp, pos, directions, domain: noise.normal(size=(pos.size, weight.shape[1])))
    report = audit(weight, options=AuditOptions(probability_seconds=0))
    assert not any(t.stage == "batched" and t.verdict == "argmaxable" for t in report.tokens)
    assert "witnesses" not in report.stats.stage("batched").counts
    reference = audit(weight, tokens=under.tolist(), options=AuditOptions(exact_all=True, probability_seconds=0))
    mine = {t.id: t.verdict for t in report.tokens}
    assert all(mine[t.id] == t.verdict for t in reference.tokens)


def test_a_handful_of_tokens_left_gets_no_witness_search(monkeypatch):
    """Below _MIN_WITNESS_ROWS tokens the pass's shared cost buys less than the exact step spends."""
    from argmaxcheck.engine import batched  # noqa: PLC0415

    head = _family("undertrained", "768x256")  # 23 rows the screen leaves; the first pass certifies 14
    searched = []
    search = batched._max_entropy_weights

    def spy(*args, directions=None, **kwargs):
        searched.append(directions is not None)
        return search(*args, directions=directions, **kwargs)

    monkeypatch.setattr(batched, "_max_entropy_weights", spy)
    report = audit(np.asarray(head.weight, dtype=np.float64), options=AuditOptions(probability_seconds=0))
    stats = report.stats.stage("batched")
    assert 0 < stats.tokens_in - stats.settled < batched._MIN_WITNESS_ROWS
    assert searched and not any(searched)


@pytest.mark.parametrize(("name", "verdict"), [("fp16", "unargmaxable"), ("undertrained", "argmaxable")])
def test_a_layer_with_under_2d_rows_gets_the_batched_phase(name, verdict):
    """Under 2(d + 1) rows the phase once stopped at once. heads.py's 600 x 320 heads: fp16's rows
    near the mean are deep inside the hull (certificates), the under-trained rows still vertices of it
    (witnesses)."""
    head = _family(name, "600x320")
    weight = np.asarray(head.weight, dtype=np.float64)
    n, d = weight.shape
    assert d + 2 <= n < 2 * (d + 1)
    report = audit(weight, options=AuditOptions(probability_seconds=0))
    batched_tokens = [t for t in report.tokens if t.stage == "batched"]
    assert len(batched_tokens) >= 10 and {t.verdict for t in batched_tokens} == {verdict}
    norms, dom = np.linalg.norm(weight, axis=1), Unbounded().resolve(d)
    for t in batched_tokens:
        if verdict == "argmaxable":
            assert certify.check_witness(weight, None, t.id, t.witness, dom, norms) > 0
        else:
            assert certify.check_certificate(weight, None, t.id, t.support, t.weights, dom).ok
    ids = [t.id for t in batched_tokens]
    reference = audit(weight, tokens=ids, options=AuditOptions(exact_all=True, probability_seconds=0))
    assert all(t.verdict == verdict for t in reference.tokens)


def test_the_shared_hessian_is_built_from_float32_rows_and_again_in_float64_where_that_fails(rng):
    comp = Competitors(rng.normal(size=(400, 12)), None)
    support = _Support(comp, np.arange(300))
    weights = rng.dirichlet(np.ones(300))
    exact = NUMPY_OPS.covariance(support.centred(NUMPY_OPS), weights)
    single = NUMPY_OPS.covariance(support.centred(NUMPY_OPS, single=True), weights)
    assert support.centred(NUMPY_OPS, single=True).dtype == np.float32
    assert single.dtype == np.float64
    lower = np.tril_indices(12)
    np.testing.assert_allclose(single[lower], exact[lower], rtol=0, atol=1e-5 * np.abs(exact).max())
    # Two coordinates equal to 1e-5: the spread of their difference (1e-10 of the others) is below
    # float32's rounding of the products, not float64's, so only the float64 Hessian is positive
    # definite, and the factor is its.
    fixed = np.random.default_rng(8)  # a draw whose float32 Hessian is indefinite (asserted below)
    flat = fixed.normal(size=(400, 12))
    flat[:, 1] = flat[:, 0] + 1e-5 * fixed.normal(size=400)
    weights = fixed.dirichlet(np.ones(300))
    flat_support = _Support(Competitors(flat, None), np.arange(300))
    low = NUMPY_OPS.covariance(flat_support.centred(NUMPY_OPS, single=True), weights)
    assert np.linalg.eigvalsh(low, UPLO="L")[0] < -1e-8
    assert NUMPY_OPS.cholesky(low) is None
    factor, single = batched._shared_factor(flat_support, NUMPY_OPS, False, weights)
    assert factor is not None and not single
    assert batched._shared_factor(support, NUMPY_OPS, False, weights)[1]  # float32 where it holds
    # In a search, once float32 has failed (the search reaches weights where it does), every later
    # build is float64 at once.
    asked = []

    def recorded(support, ops, lifted, weights, single):
        asked.append(single)
        return batched._shared_factor.__wrapped__(support, ops, lifted, weights, single)

    recorded.__wrapped__ = batched._shared_factor
    batched._shared_factor, original = recorded, batched._shared_factor
    try:
        targets = fixed.dirichlet(np.ones(300), size=3) @ flat[:300]
        _max_entropy_weights(flat_support, targets, steps=40, refresh=1)
    finally:
        batched._shared_factor = original
    assert asked[0] and False in asked
    assert not any(asked[asked.index(False):])
    hessian = NUMPY_OPS.covariance(flat_support.centred(NUMPY_OPS), weights)
    rebuilt = np.tril(factor[0]) @ np.tril(factor[0]).T
    np.testing.assert_allclose(rebuilt[lower], hessian[lower], rtol=1e-6, atol=1e-20)


def test_the_shared_hessian_is_built_again_only_once_the_weights_move(rng, monkeypatch):
    weight, _, ids = _planted(rng, planted=8)
    comp = Competitors(weight, None)
    support = _Support(comp, np.setdiff1d(support_rows(comp, 8 * weight.shape[1]), ids))
    built, at, steps = [], [], []
    original, line_search = batched._shared_factor, batched._line_search

    def counted(support, ops, lifted, weights, single):
        built.append(weights.copy())
        at.append(len(steps))
        return original(support, ops, lifted, weights, single)

    def stepped(*args, **kwargs):
        steps.append(1)
        return line_search(*args, **kwargs)

    monkeypatch.setattr(batched, "_shared_factor", counted)
    monkeypatch.setattr(batched, "_line_search", stepped)
    _, converged = _max_entropy_weights(support, weight[ids], steps=120, refresh=1000)
    assert converged.all()
    # Each build but the first follows a move of the average weights of more than _REBUILD_MOVE, at
    # least _REBUILD_AFTER steps after the last.
    assert len(built) >= 2
    assert all(np.abs(a - b).sum() > batched._REBUILD_MOVE for a, b in itertools.pairwise(built))
    assert all(b - a >= batched._REBUILD_AFTER for a, b in itertools.pairwise(at))
    assert len(built) < len(steps) / batched._REBUILD_AFTER + 1
    built.clear()
    _max_entropy_weights(support, weight[ids], steps=120, refresh=1)
    steps = len(built)
    assert steps > 10  # every step, whatever the move


def test_the_pivoted_basis_is_chosen_among_the_heaviest_columns(rng):
    d = 6
    weight = rng.normal(size=(300, d))
    weight[:10] *= 1e3  # long rows of light weight: the heaviest columns once multiplied by it
    support = _Support(Competitors(weight, None), np.arange(300))
    lams = rng.dirichlet(np.ones(300), size=4).T
    lams[:10] = 1e-5
    lams /= lams.sum(axis=0)
    everyone = np.ones(4, dtype=bool)
    bases = list(batched._bases(support, lams, everyone, everyone, everyone.copy()))
    pivoted = bases[-1]
    heaviest = np.argsort(-lams.mean(axis=1))[: batched._QR_COLUMNS * (d + 1)]
    assert pivoted.size == d + 1 and np.unique(pivoted).size == d + 1
    assert set(pivoted.tolist()) <= set(heaviest.tolist())
    assert np.linalg.cond(support.system[:, pivoted]) < 1e6
