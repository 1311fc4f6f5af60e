"""Adapters to the general solvers the exact step falls back on: HiGHS for LPs, Clarabel for balls.

The exact step tries the dense interior-point method of :mod:`.ipm` first; these take over for the
tokens it leaves, and :func:`deep_certificate` spreads a certificate's weight over every working row.
"""

from __future__ import annotations

import os
import sys

import highspy
import numpy as np
import scipy.sparse as sp

from .formulation import ball_rows, from_ball, solver_bounds, unit_rows

_INF = highspy.kHighsInf


def deep_certificate(comp, p, rows, a_norm, domain, t_star) -> np.ndarray | None:
    """Convex weights on *every* working row, as large as possible, still proving infeasibility.

    Solves  max eta  s.t.  lam >= eta,  sum lam = 1,  the domain's conditions on
    v = sum lam_j a_j (zero on open directions, sign on half-open ones) and a
    bound <= t*/2 on the best radius (half the optimum, to leave slack). All
    weights strictly positive makes the exact correction in :mod:`certify`
    small and well conditioned. Rows are unit-normalised; returns raw weights.
    """
    a, c = unit_rows(comp, p, rows, a_norm)
    k, d = a.shape
    lower, upper = domain.coordinate_bounds()  # an LP-family domain
    fin_lo, fin_hi = np.isfinite(lower), np.isfinite(upper)
    both = np.flatnonzero(fin_lo & fin_hi)
    nb = both.size
    # Columns: mu (k), eta, tau (one per two-sided coordinate), with lam_j = eta + mu_j,
    # so "every weight >= eta" costs no rows.
    ncol = k + 1 + nb
    h = new_highs()
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


def new_highs() -> highspy.Highs:
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


class HighsLP:
    """max t s.t. A x + t <= c over a growing row set; warm-started by HiGHS."""

    def __init__(self, domain, d: int):
        h = new_highs()
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
        a, c = unit_rows(comp, p, idx, a_norm)
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


class ClarabelSOCP:
    """The same problem on a ball ``x = center + R u, ||u|| <= 1``: an SOCP, re-solved each round."""

    def __init__(self, domain, d: int):
        self.domain, self.d = domain, d
        self.blocks: list[np.ndarray] = []
        self.rhs: list[np.ndarray] = []
        self.rows = np.zeros(0, dtype=np.int64)

    def add_rows(self, comp, p, idx, a_norm):
        a, c = unit_rows(comp, p, idx, a_norm)
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
