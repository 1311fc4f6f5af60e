"""Exact decision for one token by constraint generation.

For token ``p`` with competitors ``a_j = w_j - w_p``, ``c_j = b_p - b_j``
(rows scaled to unit norm, so ``t`` is the Chebyshev radius: the distance from
``x`` to the nearest hyperplane where a competitor ties), solve

    maximise t   subject to   a_j.x + t <= c_j  (j in working set),  x in D,  t <= 1

over a small working set of competitors, check the solution against *all*
rows with one matrix-vector product, add the most violated rows and repeat.
If the restricted problem has ``t* <= 0`` the full one does too, and the dual
weights of the restricted problem form the certificate; if its ``x`` beats
every row, ``x`` is the witness. Both are handed to :mod:`certify`, which
does not trust the solver.

Boxes and R^d are LPs, balls are SOCPs (the domain's ``solver_family``); both go
first to the dense interior-point method of :mod:`ipm` and fall back to HiGHS
(warm-started) or Clarabel.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import highspy
import numpy as np
import scipy.sparse as sp

from . import certify, ipm
from ._blas import matvec, rows_times

_INF = highspy.kHighsInf


@dataclass(frozen=True)
class ExactOptions:
    """Tuning of the constraint-generation loop (defaults suit 1e3-3e5 rows)."""

    initial_rows: int = 0  # 0: chosen from the dimension
    rows_per_round: int = 0  # 0: chosen from the dimension
    max_rounds: int = 60
    time_limit: float = 120.0  # seconds per token
    seed_steps: int = 8  # ball domains: smoothed max-min steps over every row to pick the first working set
    full: bool = False  # solve over every row at once (reference mode)
    interior_point: bool = True  # try the dense interior-point method first (LP domains)


@dataclass
class ExactResult:
    """What the exact step found for one token; certificates still unchecked by the caller."""

    witness: np.ndarray | None = None
    witness_gap: float = np.nan
    certificate: certify.CertificateCheck | None = None
    reason: str = ""
    rounds: int = 0
    rows_used: int = 0
    chebyshev_radius: float = np.nan


class Competitors:
    """The rows every token competes against, with cached norms (shared by all tokens)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, weight32: np.ndarray | None = None):
        self.weight = weight
        self.bias = bias
        self._weight32 = weight32
        self.sq_norms = np.einsum("ij,ij->i", weight, weight)
        self.norms = np.sqrt(self.sq_norms)
        # Rows of the last proven certificate: tokens inside the hull tend to be surrounded
        # by the same rows, so they seed the next token's working set.
        self.recent_support = np.zeros(0, dtype=np.int64)
        self._fetched: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def scores(self, x: np.ndarray) -> np.ndarray:
        s = matvec(self.weight, x)
        return s if self.bias is None else s + self.bias

    def prefetch(self, positions: np.ndarray, starts: np.ndarray | None = None) -> None:
        """Compute, in one pass over the rows, what the next tokens' solves start with.

        For each position p: every row's product with row p (its distances to the others) and,
        with ``starts``, the scores at its start point. Each token would otherwise make two
        passes over every row of its own; batched, the rows are read once per block.
        Replaces the previous block.
        """
        positions = np.asarray(positions, dtype=np.int64)
        cols = [self.weight[positions].T] + ([np.asarray(starts, dtype=np.float64).T] if starts is not None else [])
        prod = rows_times(self.weight, np.hstack(cols))
        size = positions.size
        if starts is not None and self.bias is not None:
            prod[:, size:] += self.bias[:, None]
        self._fetched = {int(p): (prod[:, k], None if starts is None else starts[k],
                                  None if starts is None else prod[:, size + k])
                         for k, p in enumerate(positions)}

    def cross(self, p: int) -> np.ndarray:
        """Every row's product with row ``p`` (from :meth:`prefetch` when it was fetched)."""
        fetched = self._fetched.get(p)
        if fetched is not None:
            return fetched[0]
        return rows_times(self.weight, self.weight[p][:, None])[:, 0]

    def scores_from(self, p: int, x: np.ndarray) -> np.ndarray:
        """:meth:`scores` at token ``p``'s start point ``x``, from :meth:`prefetch` when it was fetched."""
        fetched = self._fetched.get(p)
        if fetched is not None and fetched[1] is not None and np.array_equal(fetched[1], x):
            return fetched[2]
        return self.scores(x)

    @property
    def weight32(self) -> np.ndarray:
        """A float32 copy for cheap approximate passes (hints only: nothing certified uses it)."""
        if self._weight32 is None:
            self._weight32 = self.weight.astype(np.float32)
        return self._weight32


def solve_token(comp: Competitors, p: int, domain, x0: np.ndarray | None,
                options: ExactOptions = ExactOptions(), seeded: bool = False) -> ExactResult:
    """Decide token ``p`` (a row of ``comp.weight``) exactly on a resolved domain.

    ``x0`` is a point to start from; ``seeded`` says it comes from :func:`seed_points` already
    (the audit seeds its tokens in blocks), so the ball seeding is not repeated here.
    """
    d = comp.weight.shape[1]
    a_norm = _row_distances(comp, np.array([p]), comp.cross(p)[None, :])[0]

    def violations(x, t, s=None):  # s: the scores at x when already computed
        s = comp.scores(x) if s is None else s
        return (s - s[p]) / a_norm + t

    others = np.flatnonzero(np.isfinite(a_norm))
    if others.size == 0:  # the audit splits off identical rows and single-row layers before
        return ExactResult(reason="no competitor with different weights")
    if options.full:
        working = others
    else:
        k0 = min(others.size, options.initial_rows or max(d, 100))
        start = x0 if x0 is not None else domain.anchor()
        if should_seed(domain, options) and not seeded:
            start = seed_points(comp, np.array([p]), domain, start[None, :], options.seed_steps)[0]
        viol = violations(start, 0.0, comp.scores_from(p, start))
        viol[p] = -np.inf
        viol[~np.isfinite(a_norm)] = -np.inf
        working = np.sort(np.argpartition(-viol, k0 - 1)[:k0]) if k0 < others.size else others
        if comp.recent_support.size and working.size < others.size:
            extra = comp.recent_support[np.isfinite(a_norm[comp.recent_support])]
            working = np.union1d(working, extra)
    per_round = options.rows_per_round or max(d // 2, 50)
    # The dense IPM pays off in high dimension for LPs (simplex pivots are dense d x d updates)
    # and at any dimension for balls (measured 12x faster than Clarabel at 1500 x 768).
    if options.interior_point and not options.full and (domain.solver_family == "socp" or d >= 64):
        found = _solve_interior(comp, p, domain, working, a_norm, violations, per_round, x0, options.max_rounds)
        if found is not None:
            return found

    result = _solve_simplex(comp, p, domain, working, a_norm, violations, per_round, options)
    decided = result.witness is not None or (result.certificate is not None and result.certificate.ok)
    if not decided and not options.full and options.interior_point:
        # A token a hair from its competitors' hull (a row rounded from an average of others) has
        # a Chebyshev radius near 1e-9: below the default solvers' tolerances, but a float64
        # witness or certificate exists. One more pass with a much tighter IPM settles it.
        refined = _solve_interior(comp, p, domain, working, a_norm, violations, per_round, x0, options.max_rounds,
                                  tol=1e-13, t_zero=1e-12, early=1e-10)
        if refined is not None:
            return refined
    return result


def _solve_simplex(comp, p, domain, working, a_norm, violations, per_round, options) -> ExactResult:
    """Constraint generation over HiGHS (LPs, warm-started) or Clarabel (balls)."""
    m, d = comp.weight.shape
    solver = _ClarabelSOCP(domain, d) if domain.solver_family == "socp" else _HighsLP(domain, d)
    solver.add_rows(comp, p, working, a_norm)
    in_working = np.zeros(m, dtype=bool)
    in_working[working] = True
    result = ExactResult()
    cert_reason = ""
    for rnd in range(1, options.max_rounds + 1):
        result.rounds, result.rows_used = rnd, int(in_working.sum())
        status, x, t, duals = solver.solve(options.time_limit)
        if status != "optimal":
            result.reason = (f"the LP solver stopped without an answer (status '{status}', round {rnd}), so nothing"
                             " was concluded; --exact-all starts it from another point and may decide it")
            return result
        result.chebyshev_radius = t
        rows = solver.rows
        if t <= 1e-7:
            lam = np.abs(duals) / a_norm[rows]
            cert = certify.check_certificate(comp.weight, comp.bias, p, rows, lam, domain)
            if cert.ok:
                result.certificate = cert
                return result
            cert_reason = cert.reason
            if t < -1e-7:
                # The vertex the solver returns can be badly conditioned (tiny weights on an
                # almost-flat simplex); a clearly infeasible problem has deeper certificates.
                if domain.solver_family == "lp":
                    lam = _deep_certificate(comp, p, rows, a_norm, domain, t)
                    if lam is not None:
                        deep = certify.check_certificate(comp.weight, comp.bias, p, rows, lam, domain)
                        if deep.ok:
                            result.certificate = deep
                            return result
                result.reason = (f"the rows around it seem to surround it (Chebyshev radius {t:.2g}), but no"
                                 f" certificate survived the exact check ({cert.reason}); it sits within"
                                 " rounding error of its competitors' hull, so in practice it cannot win."
                                 " Deciding it exactly needs the weights in higher precision")
                result.certificate = cert
                return result
        gap, scores = certify.witness_and_scores(comp.weight, comp.bias, p, x, domain, comp.norms)
        if gap > 0:
            result.witness, result.witness_gap = x, gap
            return result
        cand = _most_violated(violations(x, max(t, 0.0), scores), in_working, p, per_round)
        if cand.size == 0:
            result.reason = (f"its best margin is within rounding error of zero (Chebyshev radius {t:.2g}): float64"
                             " finds no input where it wins and no proof that none exists"
                             + (f" ({cert_reason})" if cert_reason else "")
                             + "; in practice it cannot win. Deciding it exactly needs the weights in higher"
                             " precision")
            return result
        solver.add_rows(comp, p, cand, a_norm)
        in_working[cand] = True
    result.reason = (f"no decision after {options.max_rounds} rounds of adding competitors; raise"
                     " ExactOptions.max_rounds or time_limit to go on")
    return result


def _row_distances(comp: Competitors, pos: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """||w_j - w_p|| for each token p in ``pos`` (one row each) against every row j.

    Computed from the cached norms and ``cross = W[pos] @ W.T`` (a product instead of a
    subtraction per row), except where that formula cancels: |w_j|^2 - 2 w_j.w_p + |w_p|^2 loses
    everything when the rows are close compared to their length (rows near 1e4 a hair apart
    come out at distance 0 and would be dropped as duplicates). Those entries are recomputed by
    direct, underflow-safe subtraction. Infinite for p itself and for rows exactly identical to
    it (split off before as ties or dominated rows; guarded anyway).
    """
    scale = comp.sq_norms[None, :] + comp.sq_norms[pos, None]
    sq = comp.sq_norms[None, :] - 2 * cross + comp.sq_norms[pos, None]
    # The formula's absolute error is a few ulps of |w_j|^2 + |w_p|^2 (plus the product's
    # rounding); below a generous multiple of that, the subtraction decides.
    suspect = sq <= 1e-6 * scale + 1e-300
    dist = np.sqrt(np.maximum(sq, 0.0))
    ks, js = np.nonzero(suspect)
    for first in range(0, ks.size, 4096):  # bounded memory however many rows are suspect
        k, j = ks[first:first + 4096], js[first:first + 4096]
        dist[k, j] = _exact_distances(comp.weight[j] - comp.weight[pos[k]])
    dist[np.arange(pos.size), pos] = np.inf
    dist[dist == 0] = np.inf
    return dist


def _exact_distances(diff: np.ndarray) -> np.ndarray:
    """Row norms of ``diff``, scaled so that neither squaring nor summing underflows or overflows."""
    top = np.abs(diff).max(axis=1)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(np.sum((diff / safe[:, None]) ** 2, axis=1))


def should_seed(domain, options: ExactOptions) -> bool:
    """Whether the exact step starts a token from :func:`seed_points` (balls, interior-point path)."""
    return (domain.solver_family == "socp" and options.seed_steps > 0 and options.interior_point
            and not options.full)


def seed_points(comp: Competitors, positions: np.ndarray, domain, starts: np.ndarray, steps: int,
                tau: float = 0.05, block: int = 64, progress=None) -> np.ndarray:
    """Points near where each token does best on the ball, from a few Frank-Wolfe steps on the
    smoothed max-min  -tau log sum_j exp(-r_j(x) / tau)  of the Chebyshev slacks r_j over *every*
    row (float32 products; slacks are linear along a segment, so the line search is one-dimensional
    over the rows' values at its two ends).

    Only the first working set is chosen from them (the rows nearest to binding there): measured
    on 20 under-trained tokens of a 50k x 768 LayerNorm head, constraint generation then needs 2.4
    rounds instead of 4. Tokens go ``block`` at a time, so each step is two matrix products
    rather than two matrix-vector products per token (the weights are read once per block).

    Returns one point per position, each inside the ball. ``progress`` is called with the
    number of tokens of each block done.
    """
    points = np.array(starts, dtype=np.float64, copy=True).reshape(len(positions), -1)
    points = domain.project(points.T).T  # one point per column there (a view: no copy either way)
    for first in range(0, len(positions), block):
        pos = np.asarray(positions[first:first + block], dtype=np.int64)
        points[first:first + pos.size] = _seed_block(comp, pos, domain, points[first:first + pos.size], steps, tau)
        if progress is not None:
            progress(int(pos.size))
    return points


def _seed_block(comp: Competitors, pos: np.ndarray, domain, x: np.ndarray, steps: int,
                tau: float) -> np.ndarray:
    w32, bias = comp.weight32, comp.bias
    cols = np.arange(pos.size)
    # 1 / ||w_j - w_p|| per (token, row); 0 for the token itself and for rows identical to it.
    inv = 1.0 / _row_distances(comp, pos, comp.weight[pos] @ comp.weight.T)
    parked = inv == 0

    def slacks(points):
        s = (points.astype(np.float32) @ w32.T).astype(np.float64)
        if bias is not None:
            s += bias
        r = (s[cols, pos][:, None] - s) * inv
        r[parked] = 1e300  # never binding (finite, so differences along a segment stay 0)
        return r

    r = slacks(x)
    for _ in range(steps):
        q = np.exp(-(r - r.min(axis=1, keepdims=True)) / tau)
        q *= inv
        grad = comp.weight[pos] * q.sum(axis=1)[:, None] - (q.astype(np.float32) @ w32).astype(np.float64)
        size = np.linalg.norm(grad, axis=1)
        moving = np.isfinite(size) & (size > 0)
        if not moving.any():
            break
        y = x.copy()
        y[moving] = from_ball(domain, grad[moving] / size[moving, None])
        r_y = slacks(y)
        for k in np.flatnonzero(moving):
            step = _smoothed_line_search(r[k], r_y[k], tau)
            x[k] += step * (y[k] - x[k])
            r[k] += step * (r_y[k] - r[k])
    return x


def _smoothed_line_search(r: np.ndarray, r_y: np.ndarray, tau: float, evaluations: int = 6) -> float:
    """argmax over [0, 1] of the (concave) smoothed minimum phi(g) of r + g (r_y - r).

    Safeguarded Newton on phi' (phi' is the softmax average of the slopes, phi'' minus their
    variance over tau): a handful of passes where a golden-section search needs a dozen. The
    weights are computed in float32; the step only seeds the working set, nothing is proven by it.
    """
    live = (r < 1e299) | (r_y < 1e299)  # parked rows never bind
    base, delta = r[live], r_y[live] - r[live]
    if base.size == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    g = 0.0
    for _ in range(evaluations):
        v = base + g * delta
        w = np.exp(((float(v.min()) - v) / tau).astype(np.float32)).astype(np.float64)
        w /= w.sum()
        slope = float(w @ delta)
        curvature = -(float(w @ (delta * delta)) - slope * slope) / tau
        if slope >= 0:
            lo = g
        else:
            hi = g
        newton = g - slope / curvature if curvature < 0 else np.inf
        if abs(newton - g) < 1e-4:
            return min(max(newton, lo), hi)
        g = newton if lo < newton < hi else (lo + hi) / 2
    return (lo + hi) / 2


def _unit_rows(comp: Competitors, p: int, idx: np.ndarray, a_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Constraints a_j.x <= c_j of token p against rows idx, scaled to unit ||a_j|| (Chebyshev form)."""
    a = (comp.weight[idx] - comp.weight[p]) / a_norm[idx, None]
    c = np.zeros(idx.size) if comp.bias is None else (comp.bias[p] - comp.bias[idx]) / a_norm[idx]
    return a, c


def ball_rows(domain, a: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows a.x <= c rewritten for x = anchor + R u (an SOCP-family domain is the ball of radius
    R = ``ray_reach`` around ``anchor()``), so that the domain is ||u|| <= 1."""
    return domain.ray_reach * a, c - matvec(a, domain.anchor())


def from_ball(domain, u: np.ndarray) -> np.ndarray:
    """The point of the ball for u (||u|| <= 1), pulled in by 1e-9 so rounding keeps it inside."""
    return domain.anchor() + domain.ray_reach * (1.0 - 1e-9) * u


def solver_bounds(domain, d: int, open_side: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """Bounds on the solver's variables and whether they also lie in the unit ball.

    LP-family domains bound x itself (``coordinate_bounds()``, open sides at ``-open_side`` /
    ``open_side``: the interior-point method needs a bounded x); SOCP-family domains are solved in
    ball coordinates u (:func:`ball_rows`), whose only constraint is ``||u|| <= 1``.
    """
    if domain.solver_family == "socp":
        return np.full(d, -np.inf), np.full(d, np.inf), True
    lower, upper = domain.coordinate_bounds()
    return np.where(np.isfinite(lower), lower, -open_side), np.where(np.isfinite(upper), upper, open_side), False


def _most_violated(viol: np.ndarray, in_working: np.ndarray, p: int, per_round: int) -> np.ndarray:
    """Up to ``per_round`` rows outside the working set that the current point violates, worst first."""
    viol[in_working] = -np.inf
    viol[p] = -np.inf
    cand = np.flatnonzero(viol > 0)
    if cand.size > per_round:
        cand = cand[np.argpartition(-viol[cand], per_round - 1)[:per_round]]
    return cand


def _solve_interior(comp, p, domain, working, a_norm, violations, per_round, x0,
                    max_rounds: int, tol: float = 1e-9, t_zero: float = 1e-7,
                    early: float = 1e-3) -> ExactResult | None:
    """Constraint generation over the dense interior-point solver; None hands over to HiGHS.

    Worth it in high dimension, where each simplex pivot is a dense d x d
    update: the IPM's cost is k d^2 per iteration for about 25 iterations.
    ``tol`` is the IPM's tolerance, ``t_zero`` the radius below which a round
    looks for a certificate rather than a witness, and ``early`` the radius at
    which an iterate is good enough to try as a witness.
    """
    d = comp.weight.shape[1]
    # Open directions get an artificial bound: the IPM needs a bounded x, and its answers are
    # hints only (witnesses are re-checked on the true domain; certificates use the row duals,
    # which an inactive bound leaves alone). Bias-free layers are scale-free, so 1 is exact there.
    if comp.bias is None:
        bound = 1.0
    else:  # ten times the screen's best guess: a scale the features plausibly have
        bound = 10.0 * max(1.0, float(np.abs(x0).max())) if x0 is not None else 1e3
    lower, upper, ball = solver_bounds(domain, d, bound)
    rows = np.asarray(working)
    in_working = np.zeros(comp.weight.shape[0], dtype=bool)
    in_working[rows] = True
    result = ExactResult()

    def constraints(idx):
        a, c = _unit_rows(comp, p, idx, a_norm)
        return ball_rows(domain, a, c) if ball else (a, c)

    a, c = constraints(rows)
    for rnd in range(1, max_rounds + 1):
        res = ipm.solve_chebyshev(a, c, lower, upper, 1.0, tol=tol, stop_when_positive=early, unit_ball=ball,
                                  t_zero=t_zero)
        result.rounds, result.rows_used, result.chebyshev_radius = rnd, rows.size, res.t
        if not res.converged and res.t <= t_zero:
            return None
        if ball:
            res.x = from_ball(domain, res.x)
        if res.t <= t_zero:
            cert = certify.check_certificate(comp.weight, comp.bias, p, rows, res.duals / a_norm[rows], domain)
            if cert.ok:
                result.certificate = cert
                order = np.argsort(-cert.weights)[: d + 1]
                comp.recent_support = cert.support[order]
                return result
            return None
        gap, scores = certify.witness_and_scores(comp.weight, comp.bias, p, res.x, domain, comp.norms)
        if gap > 0:
            result.witness, result.witness_gap = res.x, gap
            return result
        cand = _most_violated(violations(res.x, max(res.t, 0.0), scores), in_working, p, per_round)
        if cand.size == 0:
            return None
        rows = np.concatenate([rows, cand])
        in_working[cand] = True
        a_new, c_new = constraints(cand)  # only the new rows: the others are unchanged
        a, c = np.vstack([a, a_new]), np.concatenate([c, c_new])
    return None


def _deep_certificate(comp, p, rows, a_norm, domain, t_star) -> np.ndarray | None:
    """Convex weights on *every* working row, as large as possible, still proving infeasibility.

    Solves  max eta  s.t.  lam >= eta,  sum lam = 1,  the domain's conditions on
    v = sum lam_j a_j (zero on open directions, sign on half-open ones) and a
    bound <= t*/2 on the best radius (half the optimum, to leave slack). All
    weights strictly positive makes the exact correction in :mod:`certify`
    small and well conditioned. Rows are unit-normalised; returns raw weights.
    """
    a, c = _unit_rows(comp, p, rows, a_norm)
    k, d = a.shape
    lower, upper = domain.coordinate_bounds()  # an LP-family domain
    fin_lo, fin_hi = np.isfinite(lower), np.isfinite(upper)
    both = np.flatnonzero(fin_lo & fin_hi)
    nb = both.size
    # Columns: mu (k), eta, tau (one per two-sided coordinate), with lam_j = eta + mu_j,
    # so "every weight >= eta" costs no rows.
    ncol = k + 1 + nb
    h = _new_highs()
    h.setOptionValue("output_flag", False)
    col_lo = np.concatenate([np.zeros(k), [0.0], np.full(nb, -_INF)])
    col_hi = np.concatenate([np.full(k, _INF), [1.0], np.full(nb, _INF)])
    h.addVars(ncol, col_lo, col_hi)
    h.changeColsCost(1, np.array([k], dtype=np.int32), np.array([1.0]))
    h.changeObjectiveSense(highspy.ObjSense.kMaximize)
    blocks, lo, hi = [], [], []

    def row(lam_coeffs, lower_bound, upper_bound, tau=None):
        coeffs = np.zeros(ncol)
        coeffs[:k] = lam_coeffs
        coeffs[k] = lam_coeffs.sum()
        if tau is not None:
            coeffs[k + 1 + tau] = 1.0
        blocks.append(coeffs)
        lo.append(lower_bound)
        hi.append(upper_bound)

    # v_k = sum_j lam_j a_jk with the conditions the domain puts on it.
    for kk in range(d):
        if not fin_lo[kk] and not fin_hi[kk]:
            row(a[:, kk], 0.0, 0.0)
        elif fin_lo[kk] and not fin_hi[kk]:
            row(a[:, kk], 0.0, _INF)
        elif fin_hi[kk] and not fin_lo[kk]:
            row(a[:, kk], -_INF, 0.0)
    # tau_k >= -v_k l_k and tau_k >= -v_k u_k on two-sided coordinates.
    for pos, kk in enumerate(both):
        for side in (lower[kk], upper[kk]):
            row(a[:, kk] * side, 0.0, _INF, tau=pos)
    # Bound on the best radius: sum lam c + sum(-v_k l_k, half-open) + sum tau <= t*/2.
    half_lo = fin_lo & ~fin_hi
    half_hi = fin_hi & ~fin_lo
    row(c - (a[:, half_lo] @ lower[half_lo] + a[:, half_hi] @ upper[half_hi]), -_INF, t_star / 2)
    blocks[-1][k + 1:] = 1.0
    row(np.ones(k), 1.0, 1.0)
    mat = sp.csr_matrix(np.vstack(blocks))
    h.addRows(mat.shape[0], np.array(lo), np.array(hi), mat.nnz, mat.indptr.astype(np.int32),
              mat.indices.astype(np.int32), mat.data)
    h.setOptionValue("time_limit", h.getRunTime() + 60.0)
    h.run()
    if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    col = np.asarray(h.getSolution().col_value)
    if col[k] <= 0:
        return None
    return (col[k] + np.maximum(col[:k], 0.0)) / a_norm[rows]


_banner_shown = False


def _new_highs() -> highspy.Highs:
    """A Highs instance; the banner HiGHS writes to the C-level stdout once per process is swallowed."""
    global _banner_shown
    if _banner_shown:
        return highspy.Highs()
    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)
        _banner_shown = True
    return h


class _HighsLP:
    """max t s.t. A x + t <= c over a growing row set; warm-started by HiGHS."""

    def __init__(self, domain, d: int):
        h = _new_highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        # Rows are unit-normalised already; HiGHS's own scaling only adds iterations here
        # (measured: 93 vs 292 simplex iterations on a PP-OCRv4 token).
        h.setOptionValue("simplex_scale_strategy", 0)
        h.setOptionValue("presolve", "off")
        lower, upper, _ = solver_bounds(domain, d, _INF)  # an LP-family domain: x's own column bounds
        h.addVars(d + 1, np.append(lower, -_INF), np.append(upper, 1.0))
        h.changeColsCost(1, np.array([d], dtype=np.int32), np.array([1.0]))
        h.changeObjectiveSense(highspy.ObjSense.kMaximize)
        self.h, self.d = h, d
        self.rows = np.zeros(0, dtype=np.int64)

    def add_rows(self, comp, p, idx, a_norm):
        a, c = _unit_rows(comp, p, idx, a_norm)
        block = np.hstack([a, np.ones((idx.size, 1))])
        csr = sp.csr_matrix(block)
        self.h.addRows(idx.size, np.full(idx.size, -_INF), c, csr.nnz,
                       csr.indptr.astype(np.int32), csr.indices.astype(np.int32), csr.data)
        self.rows = np.concatenate([self.rows, idx])

    def solve(self, time_limit):
        h = self.h
        h.setOptionValue("time_limit", h.getRunTime() + time_limit)
        h.run()
        status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            # A warm-started dual simplex can stall after addRows: retry cold.
            h.clearSolver()
            h.setOptionValue("time_limit", h.getRunTime() + time_limit)
            h.run()
            status = h.getModelStatus()
        if status != highspy.HighsModelStatus.kOptimal:
            return h.modelStatusToString(status), None, np.nan, None
        sol = h.getSolution()
        col = np.asarray(sol.col_value)
        return "optimal", col[: self.d], float(col[self.d]), np.asarray(sol.row_dual)


class _ClarabelSOCP:
    """The same problem on a ball ``x = center + R u, ||u|| <= 1``: an SOCP, re-solved each round."""

    def __init__(self, domain, d: int):
        self.domain, self.d = domain, d
        self.blocks: list[np.ndarray] = []
        self.rhs: list[np.ndarray] = []
        self.rows = np.zeros(0, dtype=np.int64)

    def add_rows(self, comp, p, idx, a_norm):
        a, c = _unit_rows(comp, p, idx, a_norm)
        a, c = ball_rows(self.domain, a, c)
        self.blocks.append(np.hstack([a, np.ones((idx.size, 1))]))
        self.rhs.append(c)
        self.rows = np.concatenate([self.rows, idx])

    def solve(self, time_limit):
        import clarabel  # noqa: PLC0415 - only needed for SOCP-family domains

        d = self.d
        lin = np.vstack(self.blocks)
        k = lin.shape[0]
        cap = np.zeros((1, d + 1))
        cap[0, d] = 1.0
        soc = sp.hstack([sp.vstack([sp.csr_matrix((1, d)), -sp.identity(d)]), sp.csr_matrix((d + 1, 1))])
        a_mat = sp.vstack([sp.csr_matrix(lin), sp.csr_matrix(cap), soc]).tocsc()
        b = np.concatenate([np.concatenate(self.rhs), [1.0, 1.0], np.zeros(d)])
        q = np.zeros(d + 1)
        q[d] = -1.0
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.time_limit = float(time_limit)
        settings.tol_gap_abs = settings.tol_gap_rel = 1e-10
        settings.tol_feas = 1e-10
        solver = clarabel.DefaultSolver(sp.csc_matrix((d + 1, d + 1)), q, a_mat, b,
                                        [clarabel.NonnegativeConeT(k + 1), clarabel.SecondOrderConeT(d + 1)],
                                        settings)
        sol = solver.solve()
        status = str(sol.status)
        if "Solved" not in status:
            return status, None, np.nan, None
        z = np.asarray(sol.x)
        u = z[:d]
        norm = np.linalg.norm(u)
        if norm > 1.0:
            u = u / norm
        return "optimal", from_ball(self.domain, u), float(z[d]), np.asarray(sol.z)[:k]
