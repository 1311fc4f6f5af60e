"""A dense primal-dual interior-point method for the exact step's restricted LPs.

Solves   max t   s.t.   A x + t <= c (rows),   lower <= x <= upper,   t <= cap

with Mehrotra's predictor-corrector (Nocedal & Wright, *Numerical
Optimization*, ch. 14). Each iteration forms the normal matrix
``G^T diag(lambda/s) G`` with one BLAS product over the rows, so its cost is
``k d^2`` for k rows, whatever the sparsity; simplex on the same dense LPs
spends 2-5 ms per pivot at d = 768 and needs about a thousand pivots.

Nothing here is trusted: iterates are strictly interior, so a positive ``t``
hands back a candidate witness, and the strictly positive duals of an
infeasible problem are a "deep" certificate that :mod:`certify` checks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class IpmResult:
    x: np.ndarray
    t: float
    duals: np.ndarray  # one per row of A (>= 0)
    converged: bool
    iterations: int


def solve_chebyshev(a: np.ndarray, c: np.ndarray, lower: np.ndarray, upper: np.ndarray, cap: float = 1.0,
                    tol: float = 1e-9, max_iter: int = 80, stop_when_positive: float | None = None) -> IpmResult:
    """Solve the restricted LP; with ``stop_when_positive``, return at the first primal-feasible
    iterate whose ``t`` exceeds it (its x already beats every row of ``a``: a candidate witness)."""
    k, d = a.shape
    p = d + 1  # variables (x, t)
    # Bound rows, kept implicit: sign * z[var] <= h.
    up_idx = np.flatnonzero(np.isfinite(upper))
    lo_idx = np.flatnonzero(np.isfinite(lower))
    b_var = np.concatenate([up_idx, lo_idx, [d]])
    b_sign = np.concatenate([np.ones(up_idx.size), -np.ones(lo_idx.size), [1.0]])
    b_h = np.concatenate([upper[up_idx], -lower[lo_idx], [cap]])
    m = k + b_var.size

    def g_dot(z):
        return np.concatenate([a @ z[:d] + z[d], b_sign * z[b_var]])

    def gt_dot(v):
        out = np.empty(p)
        out[:d] = v[:k] @ a
        out[d] = v[:k].sum()
        np.add.at(out, b_var, b_sign * v[k:])
        return out

    h = np.concatenate([c, b_h])
    q = np.zeros(p)
    q[d] = -1.0
    # Start: x in the middle of its bounds, t well below every row so all slacks are >= 1.
    x0 = np.where(np.isfinite(lower) & np.isfinite(upper), (lower + upper) / 2,
                  np.where(np.isfinite(lower), lower + 1, np.where(np.isfinite(upper), upper - 1, 0.0)))
    z = np.concatenate([x0, [0.0]])
    z[d] = min(float(np.min(c - a @ x0)), cap) - 1.0
    s = np.maximum(h - g_dot(z), 1.0)
    lam = np.ones(m)
    scale = max(1.0, float(np.abs(c).max()), cap)
    converged = False
    iterations = 0
    for _ in range(max_iter):
        iterations += 1
        r_d = q + gt_dot(lam)
        r_p = g_dot(z) + s - h
        mu = float(s @ lam) / m
        if (np.abs(r_p).max() <= tol * scale and np.abs(r_d).max() <= tol and mu <= tol * scale):
            converged = True
            break
        if stop_when_positive is not None and z[d] > stop_when_positive and np.abs(r_p).max() <= tol * scale:
            converged = True
            break
        dg = lam / s
        da = dg[:k]
        aw = a * np.sqrt(da)[:, None]
        mat = np.empty((p, p))
        mat[:d, :d] = aw.T @ aw
        cross = da @ a
        mat[:d, d] = mat[d, :d] = cross
        mat[d, d] = da.sum()
        np.add.at(mat, (b_var, b_var), dg[k:])
        mat[np.diag_indices(p)] += 1e-14 * max(1.0, float(np.trace(mat)) / p)
        # One explicit inverse per iteration, in numpy: both Newton solves become products, and
        # every heavy operation stays in numpy's BLAS (alternating numpy's and scipy's
        # OpenBLAS thread pools made a 769 x 769 Cholesky take 34 ms instead of 9).
        try:
            inverse = np.linalg.inv(mat)
        except np.linalg.LinAlgError:
            break
        if not np.isfinite(inverse).all():
            break

        def newton(r_c, inverse=inverse, r_p=r_p, r_d=r_d, lam=lam, s=s):
            rhs = -r_d - gt_dot((r_c + lam * r_p) / s)
            dz = inverse @ rhs
            gdz = g_dot(dz)
            ds = -r_p - gdz
            dl = (r_c - lam * ds) / s
            return dz, ds, dl

        dz, ds, dl = newton(-s * lam)
        alpha = _step(s, ds, lam, dl)
        mu_aff = float((s + alpha * ds) @ (lam + alpha * dl)) / m
        sigma = (mu_aff / mu) ** 3 if mu > 0 else 0.0
        dz, ds, dl = newton(-s * lam + sigma * mu - ds * dl)
        alpha = min(1.0, 0.99 * _step(s, ds, lam, dl, damp=1.0))
        z += alpha * dz
        s += alpha * ds
        lam += alpha * dl
        if not (np.isfinite(z).all() and np.isfinite(lam).all()):
            break
    return IpmResult(z[:d].copy(), float(z[d]), lam[:k].copy(), converged, iterations)


def _step(s, ds, lam, dl, damp: float = 1.0) -> float:
    """Largest step in [0, 1] keeping s and lambda non-negative."""
    alpha = 1.0
    with np.errstate(over="ignore", divide="ignore"):
        return _limit(s, ds, lam, dl, alpha) * damp


def _limit(s, ds, lam, dl, alpha):
    neg = ds < 0
    if neg.any():
        alpha = min(alpha, float(np.min(-s[neg] / ds[neg])))
    neg = dl < 0
    if neg.any():
        alpha = min(alpha, float(np.min(-lam[neg] / dl[neg])))
    return alpha
