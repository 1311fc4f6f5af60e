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

import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..report.model import UNDECIDED
from ..report.stats import StageStats
from . import certify, ipm
from .competitors import Competitors, row_distances
from .formulation import ball_rows, from_ball, most_violated, solver_bounds, unit_rows
from .options import ExactOptions
from .seeding import seed_points, should_seed
from .solvers import ClarabelSOCP, HighsLP, deep_certificate

if TYPE_CHECKING:
    from .state import AuditState


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
    solver: str = ""  # which solver decided it: ipm, ipm_tight, highs or clarabel


def run(state: AuditState) -> StageStats | None:
    """Stage: every token still open, decided one at a time by constraint generation (the fallback of
    :mod:`.block_exact`, and the whole exact step with ``exact_all``).

    Each token's passes over every row are computed for a block of tokens at once
    (:meth:`Competitors.prefetch`). The record counts the tokens each solver decided.
    """
    ids = state.open_ids()
    if not ids.size:
        return None
    options, comp, domain = state.options.exact, state.comp, state.solve_domain
    positions = state.position[ids]
    starts = state.guesses.at(ids) if state.guesses is not None else None
    state.progress.stage("exact step", int(ids.size))
    block = _prefetch_block(comp.weight.shape[0])
    per_token, solvers, fetch_share = [], Counter(), 0.0
    for k, i in enumerate(ids.tolist()):
        t_tok = time.perf_counter()
        if k % block == 0:  # the next tokens' passes over every row, as one product
            comp.prefetch(positions[k:k + block], None if starts is None else starts[k:k + block])
            fetch_share = (time.perf_counter() - t_tok) / positions[k:k + block].size
            t_tok = time.perf_counter()
        out = solve_token(comp, int(positions[k]), domain, None if starts is None else starts[k], options,
                          seeded=state.seeded)
        settle(state, i, out, "exact")
        solvers[out.solver or "none"] += 1
        per_token.append(time.perf_counter() - t_tok + fetch_share)
        state.progress.advance(1)
    settled = sum(1 for i in ids.tolist() if state.results[i].verdict != UNDECIDED)
    return StageStats("exact", int(ids.size), settled, counts=dict(solvers), token_seconds=tuple(per_token))


def settle(state: AuditState, i: int, out: ExactResult, stage: str) -> None:
    """Record what a solve found for row ``i``: its witness (rescaled for a bias-free layer, checked
    again), its checked certificate, or why it stays undecided."""
    if out.witness is not None:
        x, gap = out.witness, out.witness_gap
        comp, domain = state.comp, state.domain
        # Bias-free: a witness of the cone is shrunk into the domain; on R^d it is normalised.
        if state.solve_domain is not domain or (comp.bias is None and domain.whole_space):
            y, gap_y = _scale_free_witness(comp, int(state.position[i]), x, domain)
            if gap_y > 0:
                x, gap = y, gap_y
            elif state.solve_domain is not domain:  # the cone's witness did not survive rounding: say so
                state.undecided(i, stage, "witness did not survive rescaling into the domain")
                return
        state.argmaxable(i, x, gap, stage)
    elif out.certificate is not None and out.certificate.ok:
        state.unargmaxable(i, out.certificate, stage)
    else:
        state.undecided(i, stage, out.reason)


def settle_or_reopen(state: AuditState, i: int, out: ExactResult, stage: str) -> int:
    """:func:`settle` for a stage with later stages behind it: 1 if row ``i`` is settled; 0 if the
    result left it undecided (a witness lost in rescaling), and it is open again for them."""
    settle(state, i, out, stage)
    if state.results[i].verdict == UNDECIDED:
        del state.results[i]
        return 0
    return 1


def _scale_free_witness(comp: Competitors, pos: int, x: np.ndarray, domain) -> tuple[np.ndarray, float]:
    """Rescale a witness of a bias-free layer: unit norm on R^d, else into the domain.

    On R^d any positive multiple of a witness is one, so the report uses unit
    norm; a domain solved as its cone needs the witness shrunk into it. The
    rescaled point is checked again from scratch.
    """
    norm = float(np.linalg.norm(x))
    if not norm > 0:  # x = 0 ties every row of a bias-free layer: not a witness
        return x, -np.inf
    factor = domain.ray_room(x)  # how far the ray through x stays in the domain
    if not np.isfinite(factor):  # all of it: unit norm
        factor = 1.0 / norm
    y = domain.project(x * (factor * (1 - 1e-9)))  # a no-op but where rounding left the domain
    gap = certify.check_witness(comp.weight, comp.bias, pos, y, domain, comp.norms)
    return y, gap


def _prefetch_block(rows: int, budget_bytes: int = 128 * 2**20) -> int:
    """Tokens per :meth:`Competitors.prefetch`: two float64 columns of ``rows`` each, within the budget."""
    return int(min(64, max(1, budget_bytes // (16 * rows))))


def solve_token(comp: Competitors, p: int, domain, x0: np.ndarray | None,
                options: ExactOptions | None = None, seeded: bool = False) -> ExactResult:
    """Decide token ``p`` (a row of ``comp.weight``) exactly on a resolved domain.

    ``x0`` is a point to start from; ``seeded`` says it comes from :func:`seed_points` already
    (the audit seeds its tokens in blocks), so the ball seeding is not repeated here.
    """
    options = options or ExactOptions()
    d = comp.weight.shape[1]
    a_norm = row_distances(comp, np.array([p]), comp.cross(p)[None, :])[0]

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
            found.solver = "ipm"
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
            refined.solver = "ipm_tight"
            return refined
    result.solver = "clarabel" if domain.solver_family == "socp" else "highs"
    return result


def _solve_simplex(comp, p, domain, working, a_norm, violations, per_round, options) -> ExactResult:
    """Constraint generation over HiGHS (LPs, warm-started) or Clarabel (balls)."""
    m, d = comp.weight.shape
    solver = ClarabelSOCP(domain, d) if domain.solver_family == "socp" else HighsLP(domain, d)
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
                    lam = deep_certificate(comp, p, rows, a_norm, domain, t)
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
        cand = most_violated(violations(x, max(t, 0.0), scores), in_working, p, per_round)
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
        a, c = unit_rows(comp, p, idx, a_norm)
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
        cand = most_violated(violations(res.x, max(res.t, 0.0), scores), in_working, p, per_round)
        if cand.size == 0:
            return None
        rows = np.concatenate([rows, cand])
        in_working[cand] = True
        a_new, c_new = constraints(cand)  # only the new rows: the others are unchanged
        a, c = np.vstack([a, a_new]), np.concatenate([c, c_new])
    return None


