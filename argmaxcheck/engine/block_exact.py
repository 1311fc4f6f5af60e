"""The exact step for blocks of tokens at once: constraint generation with a batched interior-point method.

Each token ``p`` of a block keeps its own working set of competitors (first the rows that beat
it most at its start point, plus the rows nearest to it) and the block repeats, together:

1. one batched dense interior-point solve of every token's restricted problem
   ``max t  s.t.  a_j.x + t <= c_j (j in its working set),  x in D,  t <= 1`` (unit rows, the
   formulation of :func:`ipm.solve_chebyshev`, boxes and open sides as bounds, balls in ball
   coordinates with ``||u||^2 <= 1``): the working sets are padded to a common size with masked
   rows, the normal matrices stacked ``(B, d, d)`` and factored by Cholesky (a working set of at
   most d / 2 rows on a box, where most coordinates sit on a bound, through its k x k and free
   coordinates' factors instead: :class:`_PinnedSplit`);
2. one product of every row with every token's point (``n x d x B``) to find the rows each
   point violates, which join that token's working set.

A token leaves the block with a *candidate*: a point, checked against every row by
:func:`certify.check_witness`, or, when its restricted problem is infeasible (``t* <= 0``), the
solver's row weights, checked by :func:`certify.check_certificate` (a certificate over a subset
of the competitors holds for the whole problem). Nothing the solver says is trusted. A token
whose candidate fails its check, whose factorisation fails, or which runs out of rounds or room
gets ``None``: the caller sends it to :func:`exact.solve_token`, one token at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg
from scipy.linalg import blas, lapack

from ..report.stats import StageStats
from . import certify
from ._blas import rows_times
from .competitors import row_distances
from .exact import ExactResult, settle_or_reopen
from .formulation import from_ball, solver_bounds
from .options import ExactOptions

if TYPE_CHECKING:
    from .state import AuditState

_NEAREST = 16  # rows nearest to the token in every first working set (near-duplicates bind first)
_SMALLEST_START = 64  # the fewest most-violated rows a token starts with (see solve_blocks)
# Where an LP's solve may end at its dual bound (a domain with real bounds), the certificate's rows that
# join the next blocks' first working sets carry at least this share of its largest weight: weights not
# converged spread 1e-4 to 1e-9 over every row they saw, and a swish_box certificate of 150 such rows
# seeded 500 (32768 x 512: 104 instead of 119 ms a token; box_bias 17 instead of 20). Converged weights
# (R^d) name their rows well: cut there, PP-OCRv5's cluster corners took 3.2 s instead of 1.9.
_SHARED_WEIGHT = 1e-2
_WIDENINGS = 3  # times a token's stand-in bounds on open sides are pushed out (see _solve_block)
_ONE_ROW_CANDIDATES = 16  # rows tried as a token's whole certificate (see _beaten_by_one_row)
_START_WEIGHT = 4.0  # what the row weights of a batched solve's first iterate sum to (see solve_chebyshev_batch)


def run(state: AuditState) -> StageStats | None:
    """Stage: the open tokens decided in blocks; those a block cannot settle stay open for :mod:`.exact`."""
    ids = state.open_ids()
    options = state.options
    if not ids.size or not options.block_exact or options.exact_all:
        return None
    state.progress.stage("exact step, in blocks of tokens", int(ids.size))
    starts = state.guesses.at(ids) if state.guesses is not None else None
    outs = solve_blocks(state.comp, state.position[ids], state.solve_domain, starts, options.exact,
                        progress=state.progress.advance)
    # What a block leaves undecided (a witness lost in rescaling), the per-token path tries.
    settled = sum(settle_or_reopen(state, i, out, "exact") for i, out in zip(ids.tolist(), outs, strict=True)
                  if out is not None)
    return StageStats("block_exact", int(ids.size), settled)


def solve_blocks(comp, positions: np.ndarray, domain, starts: np.ndarray | None,
                 options: ExactOptions | None = None, budget_bytes: int = 256 << 20,
                 max_rows: int = 0, progress=None, exclude: list[np.ndarray] | None = None,
                 seeds: list[np.ndarray] | None = None, unchecked: bool = False) -> list[ExactResult | None]:
    """Decide the tokens at ``positions`` (rows of ``comp.weight``) on a resolved, solver-ready domain.

    ``starts`` holds a point per token (the screen's witness guesses, or seeded points) from which
    the first working sets are picked; None starts every token at the domain's anchor. Returns one
    entry per token: an :class:`ExactResult` whose witness gap or certificate came from
    :mod:`certify`, or None for the tokens left to the per-token solver. ``progress`` is called
    with the number of tokens of each block done. ``exclude``, one array of rows per token, keeps
    those rows out of its working set and so out of its certificate (a witness is still tested
    against every row): :mod:`.clusters` asks a cluster's question this way. ``seeds``, one array
    of rows per token, join its first working set (a cluster mate's certificate). With
    ``unchecked``, a token whose restricted problem is infeasible gets the solver's own row weights
    as they are, in a certificate marked not ok: for rows that are not tokens (a cluster's simplex
    corners, :mod:`.clusters`), whose weights only go into certificates that are checked later.
    ``budget_bytes`` sizes the blocks, and bounds the extra rows a block's tokens may take beyond
    the cap of ``max_rows`` (by default 3(d + 1) or 6(d + 1)) when they run out of room.
    """
    options = options or ExactOptions()
    positions = np.asarray(positions, dtype=np.int64)
    out: list[ExactResult | None] = [None] * positions.size
    n, d = comp.weight.shape
    if positions.size == 0 or options.full or not options.interior_point or n < 2:
        return out
    if starts is None:
        starts = np.broadcast_to(domain.anchor(), (positions.size, d))
    # Working sets of up to 6(d + 1) rows while a token's rows stay small (32 MB): on PP-OCRv4 (d = 120)
    # 3(d + 1) sent 121 of 413 tokens on to the per-token solver, 6(d + 1) sent 12; larger d keeps 3(d + 1)
    # so that a block still holds several tokens.
    wide = 6 * (d + 1) * d * 16 <= 32 << 20
    kmax = min(n - 1, max_rows or (6 if wide else 3) * (d + 1))

    def block_for(rows: int) -> int:
        """Tokens a block takes within the budget while their working sets hold ``rows`` rows."""
        return int(min(256, max(8, budget_bytes // (8 * (2 * rows * d + 3 * d * d + 4 * n)))))

    # Blocks are sized for the working sets the last block used (twice its largest), at most four times
    # what full working sets allow: every block reads the rows of W a few times (distances, scores), and
    # where working sets stay small (box_bias 32768 x 512: 80 rows of 1,539) blocks of 12 tokens spent a
    # third of the step reading W. A block whose sets then grow to kmax holds at most 4 x the budget.
    widest = block_for(kmax)
    block = widest
    # Tokens inside the hull tend to be surrounded by the same rows: the last certificate's rows join
    # the next blocks' first working sets (what Competitors.recent_support does for solve_token). A
    # small pilot block goes first so that most tokens start with them.
    shared = np.zeros(0, dtype=np.int64)
    # How many of its most violated rows a token starts with: what the blocks so far needed, unless
    # the options fix it. Where tokens settle in their first round the start was more than they needed
    # (box_bias 32768 x 512: a certificate there is often one row, a witness binds few) and it halves;
    # where they need three rounds or more (rows deep in a ball or in R^d, whose certificates hold
    # d + 1 rows or more) it doubles back, never above the default of max(d, 100). On box_bias the
    # exact step went from 56 to 33 ms a token; starting small everywhere cost rows deep in the
    # hull 30 % more (undertrained 32768 x 512) and left 5 of 60 of layernorm_ball's to the per-token solver.
    # On an LP (R^d, boxes) the smallest start does best whatever the rounds: an IPM iteration costs k d^2
    # for k rows and a round's scores far less, so a few more rounds on fewer rows pay (fixed 64 rows
    # against this rule, the same tokens settled: PP-OCRv5 5.2 -> 4.5 s for 400 of its tokens, on swish
    # 7.7 -> 7.2 s, PP-OCRv4 1.8 -> 1.7 and 2.7 -> 2.6 s, swish_box 32768 x 512 27.4 -> 21.6 s, box_bias
    # 3.0 -> 2.4 s, shallow 6.1 -> 5.5 s; 32, 48 or 96 rows within 5 % of 64). On a ball deep rows need
    # their d + 1 rows and more rounds cost more (layernorm_ball 32768 x 512: 52 -> 69 s): the rule stays.
    lp = domain.solver_family == "lp"
    start = options.initial_rows or (_SMALLEST_START if lp else max(d, 100))
    ends_early = lp and bool(np.isfinite(np.concatenate(domain.coordinate_bounds())).any())
    # Rows that may beat a token everywhere by themselves (a bounded domain; never for a cluster's corners,
    # whose certificates are checked later, or rows kept out of a token's certificate).
    strongest = None if unchecked or exclude is not None or not domain.bounded else _strongest_rows(comp, domain)
    first = 0
    while first < positions.size:
        size = min(block, max(8, first))  # 8, 8, 16, 32, ...: the shared rows refresh early on
        pos = positions[first:first + size]
        try:
            with np.errstate(all="ignore"):  # NaN and inf are tested for where they matter
                found = _solve_block(comp, pos, domain, np.asarray(starts[first:first + size], dtype=np.float64),
                                     options, kmax, shared, start,
                                     None if exclude is None else exclude[first:first + size],
                                     None if seeds is None else seeds[first:first + size], unchecked, strongest,
                                     spare_bytes=budget_bytes)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):  # numerics: the per-token solver decides
            found = [None] * pos.size
        out[first:first + pos.size] = found
        if progress is not None:
            progress(int(pos.size))
        # One-row certificates (rounds 0) tell nothing of the rows a solve needs: the rules below ignore them
        # (box_bias 16384 x 384: 4.0-4.2 s either way).
        solved = [f for f in found if f is not None and f.rounds > 0]
        rounds = [f.rounds for f in solved]
        if rounds:
            used = max(f.rows_used for f in solved)
            block = min(4 * widest, block_for(min(kmax, 2 * used)))
        if rounds and not options.initial_rows:
            typical = float(np.median(rounds))
            if typical <= 1:
                start = max(_SMALLEST_START, start // 2)
            elif typical >= 3 and not lp:
                start = min(max(d, 100), 2 * start)
        certs = [f.certificate for f in solved if f.certificate is not None]
        if certs:
            cert = certs[-1]
            heavy = cert.weights >= (_SHARED_WEIGHT if ends_early else 0.0) * cert.weights.max()
            shared = cert.support[heavy][np.argsort(-cert.weights[heavy])[: d + 1]]
        first += size
    return out


def _solve_block(comp, pos, domain, starts, options, kmax, shared, start, exclude=None, seeds=None,
                 unchecked=False, strongest=None, spare_bytes=0) -> list[ExactResult | None]:
    n, d = comp.weight.shape
    size = pos.size
    ball = domain.solver_family == "socp"
    # One pass over the rows for the distances to every row and the scores at the start points.
    both = rows_times(comp.weight, np.hstack([comp.weight[pos].T, starts.T]))
    a_norm = row_distances(comp, pos, np.asarray(both[:, :size].T), exclude)
    eligible = np.isfinite(a_norm)
    out: list[ExactResult | None] = [None] * size
    # The first working sets: the rows most violated at the start point, and the nearest rows.
    scores = both[:, size:]
    if comp.bias is not None:
        scores += comp.bias[:, None]
    k0 = min(n - 1, start, kmax)
    beaten = {} if strongest is None else _beaten_by_one_row(comp, pos, a_norm, domain, strongest)
    for b, cert in beaten.items():
        out[b] = ExactResult(certificate=cert, rows_used=1)
    if exclude is None:  # not a cluster's question: its corners, deep inside, took 3.1 s instead of 1.9 (PP-OCRv5)
        starts, scores = _nearer_starts(comp, pos, a_norm, starts, scores, domain, k0)
    per_round = options.rows_per_round or max(d // 2, 50)
    working: list[np.ndarray] = []
    for b in range(size):
        if b in beaten or not eligible[b].any():
            working.append(np.zeros(0, dtype=np.int64))
            continue
        with np.errstate(invalid="ignore"):
            viol = (scores[:, b] - scores[pos[b], b]) / a_norm[b]
        viol[~eligible[b] | ~np.isfinite(viol)] = -np.inf
        near = _top(-np.where(eligible[b], a_norm[b], np.inf), min(_NEAREST, k0))
        # A seeded token (a cluster mate's certificate rows) needs few more: on PP-OCRv5's cluster, 48
        # rows instead of 120 settled 399 of 400 mates in 3.8 s instead of 400 in 4.4 s.
        top = _top(viol, k0 if seeds is None else min(k0, max(_NEAREST, d // 2)))
        own = np.union1d(near, top) if seeds is None else np.union1d(np.union1d(near, top), seeds[b])
        rows = np.union1d(own, shared)
        if rows.size > kmax:  # the token's own rows first
            rows = np.union1d(own, shared[:max(0, kmax - own.size)])[:kmax]
        working.append(rows[eligible[b, rows]])
    # Bias-free layers are scale-free (bound 1 is exact); otherwise ten times the start's scale.
    if comp.bias is None:
        bound = np.ones(size)
    else:
        bound = 10.0 * np.maximum(1.0, np.abs(starts).max(axis=1))
    live = np.array([w.size > 0 for w in working])
    open_sides = not ball and comp.bias is not None and bool(domain.open_coordinates().any())
    widened = np.zeros(size, dtype=np.int64)
    stack = _Stack(comp, pos, a_norm, domain, ball, kmax)
    # A token that fills its working set while its restricted optimum is still positive and rows outside
    # it are still violated may take twice the rows, once, while the block's extra rows fit in
    # ``spare_bytes``: the cap is sized for the whole block, and only a few tokens need more. On
    # layernorm_ball 16384 x 768, 39 of 87 tokens filled 3(d + 1) = 2,307 rows with t still 0.003-0.012
    # and went on to the per-token solver (45 s); at 6(d + 1) the blocks settled all 87.
    wider = min(n - 1, 2 * kmax)
    extra = 0
    for rnd in range(1, options.max_rounds + 1):
        idx = np.flatnonzero(live)
        if idx.size == 0:
            break
        a, c, mask = stack.rows(idx, working)
        if ball:
            lower = upper = None
        else:
            lo, hi = [], []
            for m, b in enumerate(idx):
                # A row with constraint c_j < 0 (a near-duplicate with a higher bias) is only beaten
                # beyond ||x|| = |c_j|: open sides must reach that far, or the IPM sees no room.
                reach = 4.0 * float(np.abs(c[m]).max()) if comp.bias is not None else 0.0
                l_b, u_b, _ = solver_bounds(domain, d, max(float(bound[b]), reach))
                lo.append(l_b)
                hi.append(u_b)
            lower, upper = np.array(lo), np.array(hi)
        res = solve_chebyshev_batch(a, c, mask, lower, upper, unit_ball=ball,
                                    domain_bounds=None if ball else domain.coordinate_bounds(), members=idx)
        xs = np.zeros((idx.size, d))
        check_x = np.zeros(idx.size, dtype=bool)
        for m, b in enumerate(idx):
            rows = working[b]
            t = float(res.t[m])
            if not np.isfinite(t) or (not res.converged[m] and t <= res.t_zero):
                live[b] = False
                continue
            if t <= res.t_zero:
                duals = res.duals[m, :rows.size]
                live[b] = False
                if not np.isfinite(duals).all():
                    continue
                weights = np.maximum(duals, 0.0) / a_norm[b, rows]
                if unchecked:
                    out[b] = ExactResult(certificate=certify.CertificateCheck(
                        False, np.nan, "", "the solver's weights, not checked", rows, weights / weights.sum()),
                        rounds=rnd, rows_used=int(rows.size), chebyshev_radius=t)
                    continue
                cert = _checked(comp, int(pos[b]), rows, weights, domain)
                if cert.ok:
                    out[b] = ExactResult(certificate=cert, rounds=rnd, rows_used=int(rows.size), chebyshev_radius=t)
                elif open_sides and widened[b] < _WIDENINGS:
                    # Infeasible perhaps only inside the solver's stand-in bounds on the open sides: the
                    # weights then leave some v_k of the wrong sign there, far from rounding noise (on
                    # swish_box 32768 x 512, -0.02 to -0.09 of their scale for 13 of 64 tokens, all sent
                    # on to the per-token solver at 1.6 s each). Solved again with bounds 16 times as far.
                    bound[b] *= 16.0
                    widened[b] += 1
                    live[b] = True
                continue
            x = res.x[m]
            if not np.isfinite(x).all():
                live[b] = False
                continue
            xs[m] = from_ball(domain, x) if ball else x
            check_x[m] = True
        cols = np.flatnonzero(check_x)
        if cols.size == 0:
            continue
        # One product scores every point against every row: a witness test and the next rows.
        s = certify.float64_scores(comp.weight, comp.bias, xs[cols])
        owners = pos[idx[cols]]
        here = np.arange(cols.size)
        own_scores = s[owners, here].copy()
        s[owners, here] = -np.inf
        wins = np.flatnonzero(np.isfinite(own_scores) & (own_scores > s.max(axis=0)))
        s[owners, here] = own_scores
        # What looks like a win is decided by the certified check, on these same float64 scores.
        gaps = np.full(cols.size, -np.inf)
        if wins.size:
            gaps[wins] = certify.check_witnesses(comp.weight, comp.bias, owners[wins], xs[cols[wins]], domain,
                                                 comp.norms, scores=s[:, wins])
        for q, m in enumerate(cols):
            b = int(idx[m])
            p = int(pos[b])
            col = s[:, q]
            own = col[p]
            if gaps[q] > 0:
                out[b] = ExactResult(witness=xs[m].copy(), witness_gap=float(gaps[q]), rounds=rnd,
                                     rows_used=int(working[b].size), chebyshev_radius=float(res.t[m]))
                live[b] = False
                continue
            with np.errstate(invalid="ignore"):
                viol = (col - own) / a_norm[b] + max(float(res.t[m]), 0.0)
            viol[~eligible[b] | ~np.isfinite(viol)] = -np.inf
            viol[working[b]] = -np.inf
            cand = np.flatnonzero(viol > 0)
            room = min(per_round, int(stack.most[b]) - working[b].size)  # near the cap, the worst that fit
            if cand.size > room and stack.most[b] < wider and extra + (wider - kmax) * d * 8 <= spare_bytes:
                extra += (wider - kmax) * d * 8
                stack.most[b] = wider
                room = min(per_round, wider - working[b].size)
            if cand.size > room > 0:
                cand = cand[np.argpartition(-viol[cand], room - 1)[:room]]
            if cand.size == 0 or room <= 0:
                live[b] = False  # nothing left to add, or no room: the per-token solver decides
                continue
            working[b] = np.concatenate([working[b], cand])
    return out


def _checked(comp, p: int, rows: np.ndarray, weights: np.ndarray, domain) -> certify.CertificateCheck:
    """The solver's row weights checked as a certificate, first without their negligible ones.

    The interior-point duals spread a little weight over every row: a report should name only the
    rows that matter, and a check costs about as much with them as without (one enclosure each).
    Only when the pruned weights fail are all of them checked.
    """
    keep = weights > 1e-9 * weights.max() if weights.size else weights > 0
    cert = certify.check_certificate(comp.weight, comp.bias, p, rows[keep], weights[keep], domain)
    if cert.ok or keep.all():
        return cert
    return certify.check_certificate(comp.weight, comp.bias, p, rows, weights, domain)


def _strongest_rows(comp, domain, rows: int = _ONE_ROW_CANDIDATES) -> np.ndarray:
    """The ``rows`` rows whose lowest score over the domain (``b_j + min_x w_j.x``) is highest: the rows
    most likely to beat a token everywhere (:func:`_beaten_by_one_row`). Empty where every row's lowest
    score is ``-inf`` (an unbounded domain)."""
    # In parts: the domain answers with a minimiser per row too (d x n floats at once: 212 MB for whisper-base).
    lowest = np.concatenate([domain.linear_min(comp.weight[lo:lo + 4096].T)[0]
                             for lo in range(0, comp.weight.shape[0], 4096)])
    if comp.bias is not None:
        lowest = lowest + comp.bias
    finite = np.flatnonzero(np.isfinite(lowest))
    if finite.size <= rows:
        return finite
    return finite[np.argpartition(-lowest[finite], rows - 1)[:rows]]


def _beaten_by_one_row(comp, pos: np.ndarray, a_norm: np.ndarray, domain,
                       strongest: np.ndarray) -> dict[int, certify.CertificateCheck]:
    """Checked certificates of one row each, for the tokens that some row beats everywhere on the domain.

    A row j with ``b_j - b_p + min_x (w_j - w_p).x > 0`` (closed form on a box or a ball) proves token p
    unargmaxable by itself, and :func:`certify.check_certificate` proves that at once: no solve. The
    rows tried are the ``strongest`` (:func:`_strongest_rows`) and each token's nearest rows. On a
    bounded box with a bias such a row is common: it settled 486 of the 515 unargmaxable tokens that
    box_bias 16384 x 384 sent to this step, where each solve took 11 ms; the rows that lead a token
    most at its start point were hardly ever the ones (2 of 823). Keys are positions in ``pos``.
    """
    size, d = pos.size, comp.weight.shape[1]
    near = np.argpartition(a_norm, min(_NEAREST, a_norm.shape[1] - 1), axis=1)[:, :_NEAREST]  # (B, near)
    top = np.hstack([np.broadcast_to(strongest, (size, strongest.size)), near])  # (B, rows)
    values = np.empty(top.shape)
    step = max(1, (4 << 20) // (top.shape[1] * d))  # tokens at a time: 32 MB of differences
    for lo in range(0, size, step):
        diffs = comp.weight[top[lo:lo + step]] - comp.weight[pos[lo:lo + step]][:, None]
        values[lo:lo + step] = domain.linear_min(diffs.reshape(-1, d).T)[0].reshape(diffs.shape[:2])
    if comp.bias is not None:
        values = values + (comp.bias[top] - comp.bias[pos][:, None])
    values[~np.isfinite(np.take_along_axis(a_norm, top, axis=1))] = -np.inf  # the token itself, excluded rows
    found: dict[int, certify.CertificateCheck] = {}
    for b in np.flatnonzero(values.max(axis=1) > 0):
        j = int(top[b, np.argmax(values[b])])
        cert = certify.check_certificate(comp.weight, comp.bias, int(pos[b]), np.array([j]), np.ones(1), domain)
        if cert.ok:
            found[int(b)] = cert
    return found


def _nearer_starts(comp, pos: np.ndarray, a_norm: np.ndarray, starts: np.ndarray, scores: np.ndarray,
                   domain, first: int) -> tuple[np.ndarray, np.ndarray]:
    """For each token whose start more than ``first`` rows and a quarter of all rows beat (more than its
    first working set takes in), of that start and two points along the direction from its nearest
    rows' mean to its own row (at once and four times the start's norm), the one beaten by the fewest
    rows, with its scores.

    The first working set is the rows most violated at the start; a start beaten by most rows picks
    rows far from those that bind. The screen's points for PP-OCRv5's argmaxable short rows were
    beaten by a median 12,698 of its 18,385 rows, and the exact step took 4.7 rounds for them. A
    hint only: the point moves no verdict. 200-300 captured tokens, ms a token, side by side:
    PP-OCRv5 17.4 -> 14.1 (rounds 4.2 -> 3.3), swish_box 32768 x 512 93.2 -> 85.8, box_bias
    16.3 -> 16.6 (tried for all its tokens, half of them beaten by under 50 rows, it was 19.0).
    """
    counts = (scores > scores[pos, np.arange(pos.size)][None, :]).sum(axis=0)
    cols = np.flatnonzero(counts > max(first, scores.shape[0] // 4))
    if cols.size == 0 or (np.isfinite(a_norm[cols]).sum(axis=1) <= _NEAREST).any():
        return starts, scores
    tokens = pos[cols]
    at = np.arange(cols.size)
    beaten = counts[cols]
    near = np.argpartition(a_norm[cols], _NEAREST, axis=1)[:, :_NEAREST]
    weight = comp.weight
    direction = weight[tokens] - weight[near].mean(axis=1)
    length = np.linalg.norm(direction, axis=1)
    usable = np.isfinite(length) & (length > 0)
    direction /= np.where(usable, length, 1.0)[:, None]
    reach = np.maximum(np.linalg.norm(starts[cols], axis=1), 1.0)
    starts = starts.copy()
    points = [domain.project((direction * (factor * reach)[:, None]).T).T for factor in (1.0, 4.0)]
    # One pass over the rows for both: at 32768 x 512 a pass for a column or two costs 10 ms, the
    # rows read from memory each time (numpy's float32 product here, its BLAS pool beside scipy's,
    # was slower still).
    both = certify.float64_scores(comp.weight, comp.bias, np.vstack(points))
    for k, candidate in enumerate(points):
        here = both[:, k * cols.size:(k + 1) * cols.size]
        count = (here > here[tokens, at][None, :]).sum(axis=0)
        better = usable & np.isfinite(candidate).all(axis=1) & (count < beaten)
        moved = cols[better]
        starts[moved], scores[:, moved], beaten[better] = candidate[better], here[:, better], count[better]
    return starts, scores


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest finite entries of ``values``."""
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size <= k:
        return finite
    return finite[np.argpartition(-values[finite], k - 1)[:k]]


class _Stack:
    """The block's unit constraint rows, one slab per token, kept from round to round.

    A token's working set only grows, so each round computes only the rows it added (re-stacking
    every row each round was a tenth of layernorm_ball's exact step), and a slab that fills up is
    copied into one twice its size (at most ``most[b]`` rows, the token's cap). :meth:`rows` hands the slabs to
    :func:`solve_chebyshev_batch` with ``members``: nothing is gathered per round.
    """

    def __init__(self, comp, pos, a_norm, domain, ball, most: int):
        self.comp, self.pos, self.a_norm, self.ball = comp, pos, a_norm, ball
        self.most = np.full(pos.size, most, dtype=np.int64)
        self.anchor = domain.anchor() if ball else None
        self.reach = domain.ray_reach if ball else 1.0
        d = comp.weight.shape[1]
        self.slabs = [np.empty((0, d)) for _ in range(pos.size)]
        self.consts = [np.empty(0) for _ in range(pos.size)]
        self.filled = np.zeros(pos.size, dtype=np.int64)

    def rows(self, idx: np.ndarray, working: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """Every token's slab (real rows first), and the ``idx`` tokens' (B, K) constants and mask."""
        comp = self.comp
        for b in idx:
            done, rows = int(self.filled[b]), working[b]
            if rows.size == done:
                continue
            if rows.size > self.slabs[b].shape[0]:
                room = max(rows.size, min(2 * self.slabs[b].shape[0], int(self.most[b])))
                slab, const = np.empty((room, comp.weight.shape[1])), np.empty(room)
                slab[:done], const[:done] = self.slabs[b][:done], self.consts[b][:done]
                self.slabs[b], self.consts[b] = slab, const
            new = rows[done:]
            p = int(self.pos[b])
            norm = self.a_norm[b, new]
            a_new = (comp.weight[new] - comp.weight[p]) / norm[:, None]
            c_new = np.zeros(new.size) if comp.bias is None else (comp.bias[p] - comp.bias[new]) / norm
            if self.ball:  # x = anchor + R u
                c_new = c_new - a_new @ self.anchor
                a_new = self.reach * a_new
            self.slabs[b][done:rows.size] = a_new
            self.consts[b][done:rows.size] = c_new
            self.filled[b] = rows.size
        counts = self.filled[idx]
        mask = (np.arange(int(counts.max()))[None, :] < counts[:, None]).astype(np.float64)
        c = np.zeros(mask.shape)
        for m, b in enumerate(idx):
            c[m, :counts[m]] = self.consts[b][:counts[m]]
        return self.slabs, c, mask


class BatchResult:
    """Per token: x (in ball coordinates on a ball), t, the row duals, converged; ``t_zero`` as used."""

    def __init__(self, x, t, duals, converged, t_zero, iterations: int = 0):
        self.x, self.t, self.duals, self.converged, self.t_zero = x, t, duals, converged, t_zero
        self.iterations = iterations


def solve_chebyshev_batch(a: np.ndarray, c: np.ndarray, mask: np.ndarray, lower: np.ndarray | None,
                          upper: np.ndarray | None, cap: float = 1.0, tol: float = 1e-9, max_iter: int = 80,
                          stop_when_positive: float = 1e-3, unit_ball: bool = False,
                          t_zero: float = 1e-7,
                          domain_bounds: tuple[np.ndarray, np.ndarray] | None = None,
                          members: np.ndarray | None = None) -> BatchResult:
    """:func:`ipm.solve_chebyshev` for B problems at once (rows ``a[b][mask[b] > 0]``).

    LPs need finite ``lower`` and ``upper`` of shape (B, d); with ``unit_ball`` they are None and
    each x lies in the unit ball, judged (as in :mod:`ipm`) by a primal value and a dual bound
    that hold at any iterate. A token whose factorisation fails or whose iterates stop being
    finite is returned as not converged, where it stood. With ``members``, ``a`` (an array, or a list
    of C-ordered (K_b, d) slabs) holds the rows of more problems than the batch, each slab's real
    rows first, and problem b's are ``a[members[b]]``.
    """
    if members is None:
        a = np.ascontiguousarray(a, dtype=np.float64)
    d = a.shape[2] if isinstance(a, np.ndarray) else a[0].shape[1]
    mask = np.asarray(mask, dtype=np.float64)
    bsz, k = mask.shape
    members = np.arange(bsz) if members is None else np.asarray(members, dtype=np.int64)
    c = np.where(mask > 0, c, 0.0)
    ones = mask  # the t column of every real row is 1
    x = np.zeros((bsz, d)) if unit_ball else (lower + upper) / 2
    ax = _av(_Rows(a, members, k), x, (mask > 0).sum(axis=1))
    t = np.minimum(np.where(mask > 0, c - ax, np.inf).min(axis=1), cap) - 1.0
    s_r = np.where(mask > 0, np.maximum(c - ax - t[:, None], 1.0), 1.0)
    if unit_ball:
        s_u = l_u = s_l = l_l = np.zeros((bsz, 0))
        s_q = 1.0 - np.einsum("bd,bd->b", x, x)
    else:
        s_u, s_l = np.maximum(upper - x, 1.0), np.maximum(x - lower, 1.0)
        s_q, nu = np.ones(bsz), np.zeros(bsz)
    s_c = np.maximum(cap - t, 1.0)
    # Centred start: every slack times its multiplier the same mu_0, the row weights summing to about
    # _START_WEIGHT (the t column's dual equation asks for 1). Every multiplier at 1 had 300 rows weigh
    # 300 and the first iterations spent undoing it: captured exact-step inputs, side by side, token
    # iterations and seconds for the same tokens settled: PP-OCRv5 swish 45.5 -> 35.8 (5.6 -> 4.1 s),
    # PP-OCRv4 30.9 -> 27.8 and 46.9 -> 39.9, swish_box 32768 x 512 22.8 -> 20.1, layernorm_ball
    # 25.1 -> 21.6 (16.4 -> 14.8 s); weights summing to 1 were worse on PP-OCRv4 R^d (43.5), 0.1 far worse.
    # On a box bounded on every side, whose solutions sit at vertices with most bounds binding, every
    # multiplier at 1 does better (box_bias 32768 x 512: 7.6 against 9.8 ms a token; the bounds' own
    # multipliers at 1 with centred rows, 8.9): it keeps that start.
    bounded = domain_bounds is not None and bool(np.isfinite(np.concatenate(domain_bounds)).all())
    if bounded:
        l_r, l_c = mask.copy(), np.ones(bsz)
        l_u, l_l = np.ones((bsz, d)), np.ones((bsz, d))
    else:
        mu0 = _START_WEIGHT / ((mask / s_r).sum(axis=1) + 1.0 / s_c)
        l_r = mu0[:, None] / s_r * mask
        l_c = mu0 / s_c
        if unit_ball:
            nu = mu0 / s_q
        else:
            l_u, l_l = mu0[:, None] / s_u, mu0[:, None] / s_l
    count = mask.sum(axis=1) + (1 if unit_ball else 2 * d) + 1
    scale = np.maximum(np.maximum(1.0, np.abs(c).max(axis=1)), cap)

    out_x = x.copy()
    out_t = np.full(bsz, -np.inf)
    out_duals = np.zeros((bsz, k))
    converged = np.zeros(bsz, dtype=bool)
    # Balls: the best primal value (x pulled into the ball) and dual bound (normalised weights) so far.
    best_lo, best_hi = np.full(bsz, -np.inf), np.full(bsz, np.inf)
    best_x, best_w = x.copy(), np.zeros((bsz, k))
    proven_below = np.full(bsz, np.nan)  # LPs: the dual bound below zero that ended a solve

    act = np.arange(bsz)  # the problems still iterating; the others have left the batch
    store = np.empty((bsz, d, d))  # their normal matrices' factors, in place
    scaled_buf = np.empty((max(k, 1) + 1, d))
    st = dict(c=c, mask=mask, x=x, ax=ax, t=t, s_r=s_r, l_r=l_r, s_u=s_u, l_u=l_u, s_l=s_l, l_l=l_l, s_q=s_q, nu=nu,
              s_c=s_c, l_c=l_c, count=count, scale=scale, ones=ones,
              rows=(mask > 0).sum(axis=1))  # real rows come first: padding is left out of the products
    if not unit_ball:
        st["lower"], st["upper"] = lower, upper

    def finish(local, ok_flags):
        """Record the problems at ``local`` (positions in the active arrays) and drop them from the batch."""
        nonlocal act, st
        glob = act[local]
        if unit_ball:
            out_x[glob] = best_x[glob]
            hi, lo = best_hi[glob], best_lo[glob]
            out_t[glob] = np.where(hi <= t_zero, hi, lo)
            out_duals[glob] = best_w[glob]
        else:
            out_x[glob] = st["x"][local]
            out_t[glob] = np.where(np.isnan(proven_below[glob]), st["t"][local], proven_below[glob])
            out_duals[glob] = st["l_r"][local] * st["mask"][local]
        converged[glob] = ok_flags
        keep = np.ones(act.size, dtype=bool)
        keep[local] = False
        act = act[keep]
        st = {key: val[keep] for key, val in st.items()}

    iterations = 0
    for _ in range(max_iter):
        if act.size == 0:
            break
        iterations += 1
        A, C, M, R = _Rows(a, members[act], k), st["c"], st["mask"], st["rows"]  # the rows themselves are never copied
        x, t, ax = st["x"], st["t"], st["ax"]
        s_r, l_r, s_u, l_u, s_l, l_l = st["s_r"], st["l_r"], st["s_u"], st["l_u"], st["s_l"], st["l_l"]
        s_q, nu, s_c, l_c = st["s_q"], st["nu"], st["s_c"], st["l_c"]
        # Residuals of the KKT conditions (dual, primal, complementarity).
        atl = _atv(A, l_r, R)
        r_dx = atl + (2 * nu[:, None] * x if unit_ball else l_u - l_l)
        r_dt = -1.0 + l_r.sum(axis=1) + l_c
        r_pr = (ax + t[:, None] + s_r - C) * M
        r_pc = t + s_c - cap
        if unit_ball:
            r_pu = r_pl = np.zeros((act.size, 0))
            r_q = np.einsum("bd,bd->b", x, x) + s_q - 1.0
        else:
            r_pu, r_pl = x + s_u - st["upper"], -x + s_l + st["lower"]
            r_q = np.zeros(act.size)
        mu = ((s_r * l_r * M).sum(axis=1) + (s_u * l_u).sum(axis=1) + (s_l * l_l).sum(axis=1) + s_c * l_c
              + (s_q * nu if unit_ball else 0.0)) / st["count"]
        with np.errstate(invalid="ignore"):
            p_inf = np.maximum(np.abs(r_pr).max(axis=1, initial=0.0), np.abs(r_pc))
            if not unit_ball:
                p_inf = np.maximum(p_inf, np.maximum(np.abs(r_pu).max(axis=1), np.abs(r_pl).max(axis=1)))
            d_inf = np.maximum(np.abs(r_dx).max(axis=1), np.abs(r_dt))
        sc = st["scale"]
        feasible = (p_inf <= tol * sc) & (r_q <= tol)
        done = feasible & (d_inf <= tol) & (mu <= tol * sc)
        if unit_ball:
            glob = act
            # The point pulled into the ball and the normalised weights: their products are A x and
            # A^T lambda scaled, no pass over the rows of their own.
            norm = np.sqrt(np.einsum("bd,bd->b", x, x))
            shrink = np.maximum(1.0, norm * (1 + 1e-12))[:, None]
            xb = x / shrink
            value = np.minimum(cap, np.where(M > 0, C - ax / shrink, np.inf).min(axis=1))
            better = value > best_lo[glob]
            best_lo[glob[better]], best_x[glob[better]] = value[better], xb[better]
            total = (l_r * M).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                w = (l_r * M) / total[:, None]
                bound = (w * C).sum(axis=1) + np.linalg.norm(atl / total[:, None], axis=1)
            better = (total > 0) & np.isfinite(bound) & (bound < best_hi[glob])
            best_hi[glob[better]], best_w[glob[better]] = bound[better], w[better]
            lo_b, hi_b = best_lo[glob], best_hi[glob]
            gap = hi_b - lo_b
            done |= (gap <= tol * sc) | (lo_b > np.maximum(stop_when_positive, 0.5 * hi_b)) | (
                (hi_b < -tol * sc) & (gap <= 0.5 * -hi_b))
        elif domain_bounds is not None:
            # LPs: the row weights' dual bound over the domain's own bounds (infinite on open sides,
            # where only weights whose v has the right sign there bound anything): by weak duality it
            # holds at any iterate. Once it is clearly below zero the weights already prove what the
            # certificate check will (in float64, the same bound with rounding errors); converging
            # them to tol took 24 iterations for swish_box's deep rows (32768 x 512; 142 -> 119 ms a
            # token with this exit). On R^d every side is open and nothing ends early.
            total = (l_r * M).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                v = atl / total[:, None]
                reach = np.where(v > 0, -v * domain_bounds[0], np.where(v < 0, -v * domain_bounds[1], 0.0))
                hi = (l_r * M * C).sum(axis=1) / total + reach.sum(axis=1)
            # Only where an iteration is dear (more rows than d / 2: a d x d factor): few rows on a box
            # converge quickly, and their converged weights name few rows (see solve_blocks' shared rows).
            proven = np.flatnonzero(np.isfinite(hi) & (hi < -tol * sc) & (2 * R > d))
            proven_below[act[proven]] = hi[proven]
            done[proven] = True
        done |= (t > stop_when_positive) & feasible
        if not unit_ball:
            # A witness candidate needs a point that beats its working rows, not a primal-feasible
            # iterate: the iterate's own margin over its rows (inside its bounds) counts at once.
            with np.errstate(invalid="ignore"):
                margin = np.where(M > 0, C - ax, np.inf).min(axis=1)
                inside = ((x >= st["lower"]) & (x <= st["upper"])).all(axis=1)
            beats = inside & (margin > stop_when_positive) & ~done
            if beats.any():
                st["t"] = np.where(beats, np.minimum(margin, cap), t)
                done |= beats
        broken = ~(np.isfinite(x).all(axis=1) & np.isfinite(l_r).all(axis=1) & np.isfinite(t))
        if done.any() or broken.any():
            leave = np.flatnonzero(done | broken)
            finish(leave, done[leave] & ~broken[leave])
            if act.size == 0:
                break
            # The others go on from this iteration's residuals (the rows' products are the dear part).
            keep = ~(done | broken)
            A, C, M, R = _Rows(a, members[act], k), st["c"], st["mask"], st["rows"]
            x, t, ax = st["x"], st["t"], st["ax"]
            s_r, l_r, s_u, l_u, s_l, l_l = st["s_r"], st["l_r"], st["s_u"], st["l_u"], st["s_l"], st["l_l"]
            s_q, nu, s_c, l_c = st["s_q"], st["nu"], st["s_c"], st["l_c"]
            r_dx, r_dt, r_pr, r_pc, r_pu, r_pl, r_q, mu = (
                v[keep] for v in (r_dx, r_dt, r_pr, r_pc, r_pu, r_pl, r_q, mu))

        # Normal matrix [[N, g], [g^T, sigma]] over (x, t), factored by blocks (N by Cholesky).
        dg_r = l_r / s_r * M
        zero_q = np.zeros(act.size)
        rc_aff = (-s_r * l_r * M, -s_u * l_u, -s_l * l_l, -s_c * l_c, -s_q * nu if unit_ball else zero_q)
        # One pass over the rows for the border g and the predictor's right-hand side.
        v_aff = (rc_aff[0] + l_r * r_pr) / s_r * M
        both = _atv(A, np.stack([dg_r, v_aff], axis=2), R)
        border, at_aff = both[..., 0], both[..., 1]
        corner = dg_r.sum(axis=1) + l_c / s_c
        if unit_ball:
            jac = 2 * x
            extra = 2 * nu[:, None] * np.ones((1, d))
            rank_one = np.sqrt(nu / s_q)[:, None] * jac
        else:
            jac = rank_one = None
            extra = l_u / s_u + l_l / s_l
        ridge, bad, factor = _factor(A, dg_r, extra, corner, rank_one, R, _Rows(store, act), scaled_buf)
        if bad.any():
            finish(np.flatnonzero(bad), False)
            continue

        def right_side(rc_r, rc_u, rc_l, rc_c, rc_q, at_v=None, s_r=s_r, l_r=l_r, s_u=s_u, l_u=l_u, s_l=s_l,
                       l_l=l_l, s_c=s_c, l_c=l_c, s_q=s_q, nu=nu, r_pr=r_pr, r_pu=r_pu, r_pl=r_pl, r_pc=r_pc,
                       r_q=r_q, r_dx=r_dx, r_dt=r_dt, jac=jac, A=A, M=M, R=R):
            v_r = (rc_r + l_r * r_pr) / s_r * M
            v_c = (rc_c + l_c * r_pc) / s_c
            rhs_x = -r_dx - (_atv(A, v_r, R) if at_v is None else at_v)
            if unit_ball:
                rhs_x -= jac * ((rc_q + nu * r_q) / s_q)[:, None]
            else:
                rhs_x -= (rc_u + l_u * r_pu) / s_u - (rc_l + l_l * r_pl) / s_l
            return rhs_x, -r_dt - v_r.sum(axis=1) - v_c

        rhs_x, rhs_t = right_side(*rc_aff, at_v=at_aff)
        solved = factor.solve(np.stack([border, rhs_x], axis=2))  # one solve for both right-hand sides
        across, head = solved[..., 0], solved[..., 1]
        schur = corner + ridge - np.einsum("bd,bd->b", border, across)
        bad = ~(schur > 0) | ~np.isfinite(across).all(axis=1)
        if bad.any():
            finish(np.flatnonzero(bad), False)
            continue

        def steps(head, rhs_t, rc_r, rc_u, rc_l, rc_c, rc_q, border=border, across=across, schur=schur, jac=jac,
                  s_r=s_r, l_r=l_r, s_u=s_u, l_u=l_u, s_l=s_l, l_l=l_l, s_c=s_c, l_c=l_c, s_q=s_q, nu=nu,
                  r_pr=r_pr, r_pu=r_pu, r_pl=r_pl, r_pc=r_pc, r_q=r_q, A=A, M=M, R=R):
            """The Newton step from the solved head: dx, dt, A dx, and the slacks' and multipliers' steps."""
            dt = (rhs_t - np.einsum("bd,bd->b", border, head)) / schur
            dx = head - across * dt[:, None]
            a_dx = _av(A, dx, R)
            ds_r = (-r_pr - a_dx - dt[:, None]) * M
            dl_r = (rc_r - l_r * ds_r) / s_r * M
            ds_c = -r_pc - dt
            dl_c = (rc_c - l_c * ds_c) / s_c
            if unit_ball:
                ds_u = dl_u = ds_l = dl_l = np.zeros_like(s_u)
                ds_q = -r_q - np.einsum("bd,bd->b", jac, dx)
                dl_q = (rc_q - nu * ds_q) / s_q
            else:
                ds_u, ds_l = -r_pu - dx, -r_pl + dx
                dl_u, dl_l = (rc_u - l_u * ds_u) / s_u, (rc_l - l_l * ds_l) / s_l
                ds_q = dl_q = np.zeros_like(s_q)
            return dx, dt, a_dx, (ds_r, dl_r, ds_u, dl_u, ds_l, dl_l, ds_c, dl_c, ds_q, dl_q)

        pairs = [(s_r, l_r), (s_u, l_u), (s_l, l_l), (s_c[:, None], l_c[:, None])]
        if unit_ball:
            pairs.append((s_q[:, None], nu[:, None]))

        def step_length(deltas, pairs=pairs):
            dd = [deltas[0:2], deltas[2:4], deltas[4:6], (deltas[6][:, None], deltas[7][:, None])]
            if unit_ball:
                dd.append((deltas[8][:, None], deltas[9][:, None]))
            alpha = np.ones(act.size)
            with np.errstate(divide="ignore", invalid="ignore"):
                for (sv, lv), (dsv, dlv) in zip(pairs, dd, strict=True):
                    for val, dv in ((sv, dsv), (lv, dlv)):
                        if val.shape[1] == 0:
                            continue
                        ratio = np.where(dv < 0, -val / dv, np.inf)
                        alpha = np.minimum(alpha, ratio.min(axis=1))
            return alpha, dd

        _, _, _, aff = steps(head, rhs_t, *rc_aff)
        alpha, dd = step_length(aff)
        mu_aff = np.zeros(act.size)
        for (sv, lv), (dsv, dlv) in zip(pairs, dd, strict=True):
            mu_aff += ((sv + alpha[:, None] * dsv) * (lv + alpha[:, None] * dlv)).sum(axis=1)
        # Padded rows carry s = 1, lambda = 0 and no steps: they add nothing to mu_aff.
        mu_aff /= st["count"]
        with np.errstate(divide="ignore", invalid="ignore"):
            sigma = np.where(mu > 0, (mu_aff / mu) ** 3, 0.0)
        sm = sigma * mu
        rc = ((-s_r * l_r + sm[:, None] - aff[0] * aff[1]) * M,
              -s_u * l_u + sm[:, None] - aff[2] * aff[3],
              -s_l * l_l + sm[:, None] - aff[4] * aff[5],
              -s_c * l_c + sm - aff[6] * aff[7],
              (-s_q * nu + sm - aff[8] * aff[9]) if unit_ball else zero_q)
        rhs_x, rhs_t = right_side(*rc)
        dx, dt, a_dx, delta = steps(factor.solve(rhs_x), rhs_t, *rc)
        alpha, _ = step_length(delta)
        alpha = np.minimum(1.0, 0.99 * alpha)
        alpha = np.where(np.isfinite(alpha), alpha, 0.0)
        al = alpha[:, None]
        st["x"] = x + al * dx
        st["ax"] = ax + al * a_dx  # A x follows x along the step: no product of its own
        st["t"] = t + alpha * dt
        st["s_r"] = np.where(M > 0, s_r + al * delta[0], 1.0)
        st["l_r"] = (l_r + al * delta[1]) * M
        if not unit_ball:
            st["s_u"], st["l_u"] = s_u + al * delta[2], l_u + al * delta[3]
            st["s_l"], st["l_l"] = s_l + al * delta[4], l_l + al * delta[5]
        else:
            st["s_q"], st["nu"] = s_q + alpha * delta[8], nu + alpha * delta[9]
        st["s_c"], st["l_c"] = s_c + alpha * delta[6], l_c + alpha * delta[7]
    if act.size:
        finish(np.arange(act.size), False)
    return BatchResult(out_x, out_t, out_duals, converged, t_zero, iterations)


class _Rows:
    """The stacked rows of the problems still in the batch: ``view[m]`` is ``a[active[m]]``, no copy.
    ``width``, where given, is how many rows a problem may have (its slab may hold more)."""

    def __init__(self, a: np.ndarray, active: np.ndarray, width: int | None = None):
        self.a, self.active = a, active
        rows, d = a.shape[1:] if isinstance(a, np.ndarray) else a[0].shape
        self.shape = (active.size, rows if width is None else width, d)

    def __getitem__(self, m: int) -> np.ndarray:
        return self.a[self.active[m]]


def _atv(a: np.ndarray, v: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``v[b] @ a[b]`` for each b, over its real rows only (one BLAS call each); ``v`` of shape (B, k),
    or (B, k, c) for c vectors in one pass over the rows (then (B, d, c))."""
    out = np.zeros((a.shape[0], a.shape[2], *v.shape[2:]))
    for m in range(a.shape[0]):
        k = int(rows[m])
        if k:
            a_t = a[m][:k].T
            out[m] = blas.dgemv(1.0, a_t, v[m, :k]) if v.ndim == 2 else blas.dgemm(1.0, a_t, v[m, :k])
    return out


def _av(a: np.ndarray, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``a[b] @ x[b]`` for each b (zero on the padding)."""
    out = np.zeros(a.shape[:2])
    for m in range(a.shape[0]):
        k = int(rows[m])
        if k:
            out[m, :k] = blas.dgemv(1.0, a[m][:k].T, x[m], trans=1)
    return out


def _factor(a, dg: np.ndarray, extra: np.ndarray, corner: np.ndarray, rank_one: np.ndarray | None,
            rows: np.ndarray, store, scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray, _Factors]:
    """Factors of ``N_b = U_b^T U_b + diag(e_b)`` for each b, written into ``store[b]``, where U_b holds
    the real rows of ``a[b]`` scaled by ``sqrt(dg[b])`` (and, on a ball, the row ``rank_one[b]``) and
    ``e_b = extra[b] + ridge[b]``.

    Most problems get one dsyrk and one dpotrf of the d x d matrix through scipy's LAPACK (the BLAS
    the rest of the engine uses: numpy's own batched Cholesky was 100x slower here, its thread pool
    fighting scipy's), in place (``store[b].T``, Fortran-ordered, is the lower factor). A problem
    with few rows whose diagonal pins most coordinates (a box, where at a vertex most coordinates sit
    on a bound and a working set of 64-80 rows holds the rest, d = 512) is factored by
    :class:`_PinnedSplit` instead, at a fraction of the flops.

    Returns the ridges, a mask of the problems whose matrix was not finite or not numerically
    positive definite (they leave the batch; nothing is guessed for them), and the factors.
    A NaN anywhere in the lower triangle reaches some pivot, so the factor's diagonal tells.
    """
    bsz, _, d = a.shape
    ridge = np.zeros(bsz)
    bad = np.zeros(bsz, dtype=bool)
    split: dict[int, _PinnedSplit] = {}
    diag = np.arange(d)
    extra_row = 0 if rank_one is None else 1
    dense_flops = d * d * d / 3
    for m in range(bsz):
        k = max(int(rows[m]), 1)
        buf = scaled[:k + extra_row]
        np.multiply(a[m][:k], np.sqrt(dg[m, :k])[:, None], out=buf[:k])
        if extra_row:
            buf[k] = rank_one[m]
        kk = k + extra_row
        if 2 * kk <= d:
            columns = np.einsum("ij,ij->j", buf, buf)  # the diagonal of U^T U
            ridge[m] = 1e-14 * max(1.0, (float(columns.sum()) + float(extra[m].sum()) + float(corner[m])) / (d + 1))
            e = extra[m] + ridge[m]
            free = np.flatnonzero(~(e >= columns))  # NaN counts as free: the dense factor then fails on it
            f = free.size
            if 2 * f <= d and kk * kk * d + kk * f * f + f ** 3 / 3 < 0.5 * (kk * d * d + dense_flops):
                part = _PinnedSplit.factor(buf, e, free, store[m])
                if part is None:
                    bad[m] = True
                else:
                    split[m] = part
                continue
        target = store[m].T
        normal = blas.dsyrk(1.0, buf.T, beta=0.0, c=target, lower=1, overwrite_c=1)
        ridge[m] = 1e-14 * max(1.0, (float(np.trace(normal)) + float(extra[m].sum()) + float(corner[m])) / (d + 1))
        normal[diag, diag] += extra[m] + ridge[m]
        if not _cholesky_in_place(normal, target):
            bad[m] = True
    return ridge, bad, _Factors(store, split)


class _Factors:
    """Solves ``N_b y = rhs_b`` with the factors of :func:`_factor`."""

    def __init__(self, store, split: dict[int, _PinnedSplit]):
        self.store, self.split = store, split

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``rhs`` of shape (B, d), or (B, d, c) for c right-hand sides at once."""
        out = np.empty_like(rhs)
        for m in range(rhs.shape[0]):
            part = self.split.get(m)
            if part is None:
                out[m] = lapack.dpotrs(self.store[m].T, rhs[m], lower=1)[0]
            elif rhs.ndim == 2:
                out[m] = part.solve(rhs[m])
            else:
                out[m] = np.column_stack([part.solve(col) for col in rhs[m].T])
        return out


class _PinnedSplit:
    """``N = U^T U + diag(e)`` (U: k x d, k <= d / 2, at most d / 2 coordinates free) solved through its
    pinned coordinates.

    A coordinate is *pinned* where its diagonal ``e_i`` is at least its column of U^T U (a box
    bound that binds: at a vertex of a box, most of them); the others, F, are free. With
    ``w = U y``, the pinned part is eliminated exactly, ``y_P = (r_P - U_P^T w) / e_P``, and

        H = I + U_P diag(e_P)^-1 U_P^T   (k x k)
        S = diag(e_F) + U_F^T H^-1 U_F    (|F| x |F|)
        S y_F = r_F - U_F^T H^-1 U_P (r_P / e_P),   w = H^-1 (U_F y_F + U_P (r_P / e_P))

    Both factored by Cholesky: k^2 d + k |F|^2 + |F|^3 / 3 flops against k d^2 + d^3 / 3. H has
    eigenvalues between 1 and 1 + |P| whatever the pinned e_i are (from 1e-8 to 1e138 on box_bias
    32768 x 512), so nothing large is subtracted from anything large; Woodbury's identity on the
    whole diagonal was not as kind (residuals of 1e-4 to 1e2 of the right-hand side where e was small).
    ``U_F``, ``U_P`` and both factors live in the problem's own d x d buffer.
    """

    def __init__(self, free, pinned, e, u_free, u_pinned, chol_h, chol_s):
        self.free, self.pinned, self.e = free, pinned, e
        self.u_free, self.u_pinned, self.chol_h, self.chol_s = u_free, u_pinned, chol_h, chol_s

    @classmethod
    def factor(cls, u: np.ndarray, e: np.ndarray, free: np.ndarray, buffer: np.ndarray) -> _PinnedSplit | None:
        k, d = u.shape
        f = free.size
        pinned = np.setdiff1d(np.arange(d), free, assume_unique=True)
        flat = buffer.reshape(-1)
        parts, at = [], 0
        for size in (k * f, k * (d - f), k * k, f * f):
            parts.append(flat[at:at + size])
            at += size
        u_free = parts[0].reshape(k, f)
        u_pinned = parts[1].reshape(k, d - f)
        np.take(u, free, axis=1, out=u_free)
        np.take(u, pinned, axis=1, out=u_pinned)
        scaled = u_pinned / np.sqrt(e[pinned])
        chol_h = parts[2].reshape(k, k).T
        h = blas.dsyrk(1.0, scaled.T, beta=0.0, c=chol_h, trans=1, lower=1, overwrite_c=1)
        h[np.arange(k), np.arange(k)] += 1.0
        if not _cholesky_in_place(h, chol_h):
            return None
        chol_s = parts[3].reshape(f, f).T
        if f:
            z = linalg.solve_triangular(chol_h, u_free, lower=True, check_finite=False)  # L_H^-1 U_F
            s = blas.dsyrk(1.0, z, beta=0.0, c=chol_s, trans=1, lower=1, overwrite_c=1)
            s[np.arange(f), np.arange(f)] += e[free]
            if not _cholesky_in_place(s, chol_s):
                return None
        return cls(free, pinned, e, u_free, u_pinned, chol_h, chol_s)

    def solve(self, r: np.ndarray) -> np.ndarray:
        e_pinned = self.e[self.pinned]
        g = blas.dgemv(1.0, self.u_pinned.T, r[self.pinned] / e_pinned, trans=1)  # U_P (r_P / e_P)
        y = np.empty_like(r)
        if self.free.size:
            h = lapack.dpotrs(self.chol_h, g, lower=1)[0]
            rhs = r[self.free] - blas.dgemv(1.0, self.u_free.T, h)
            y_free = lapack.dpotrs(self.chol_s, rhs, lower=1)[0]
            y[self.free] = y_free
            g = g + blas.dgemv(1.0, self.u_free.T, y_free, trans=1)
        w = lapack.dpotrs(self.chol_h, g, lower=1)[0]
        y[self.pinned] = (r[self.pinned] - blas.dgemv(1.0, self.u_pinned.T, w)) / e_pinned
        return y


def _cholesky_in_place(matrix: np.ndarray, target: np.ndarray) -> bool:
    """Factor ``matrix`` (its lower triangle) into ``target``; False where it is not positive definite."""
    chol, info = lapack.dpotrf(matrix, lower=1, clean=0, overwrite_a=1)
    if info != 0 or not np.isfinite(chol.diagonal()).all():
        return False
    if not np.shares_memory(chol, target):
        target[...] = chol
    return True
