"""The batched phase: certificates for tokens deep inside their competitors' hull, a block at a time.

On R^d, token q is unargmaxable exactly when weights ``lam >= 0`` with ``sum lam = 1`` on the
other rows give ``sum_j lam_j w_j = w_q`` (and ``sum_j lam_j b_j >= b_q`` with a bias; DESIGN.md
§3). Under-trained and planted rows sit deep inside the hull, where such weights abound, yet the
exact step finds them one token at a time, by constraint generation and interior-point solves:
0.6 s a token at 262k x 640. Here, for a block of tokens at once:

1. **One support for every token**: the K = 8d rows farthest from the rows' mean in whitened
   coordinates, the outermost rows of the hull. Measured on 64 under-trained rows of a real-like
   50k x 640 head: all 64 inside their hull, against 0 of 64 for K random rows.
2. **Maximum-entropy weights** on that support with mean ``w_q``: ``lam_j ~ exp(theta_q . w_j)``,
   found by damped Newton steps on the convex dual ``log sum_j exp(theta . w_j) - theta . w_q``.
   All tokens of the block share one Hessian (the block's average, refreshed every few steps), so
   each step is a few K x d x B matrix products and no per-token loop. The weights come out
   strictly positive and spread: a "deep" certificate that survives the exact correction below.
3. **One basis for the block** (the d + 1 rows of largest average weight):
   :func:`certify.check_on_shared_basis` inverts it once and encloses each token's exact weights.

Nothing is decided here but by a checked certificate. Tokens it does not settle (argmaxable
ones, rows outside the support's hull, and anything the enclosure cannot prove) go on to the
exact step as before.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from . import certify
from ._blas import rows_times
from .exact import Competitors


def support_rows(comp: Competitors, size: int, sample: int = 20000) -> np.ndarray:
    """The ``size`` rows farthest from the mean in whitened coordinates (sorted indices).

    The covariance is estimated on an evenly spaced sample of rows: a hint for choosing rows,
    never used in a certificate.
    """
    weight = comp.weight
    m = weight.shape[0]
    mean = weight.mean(axis=0)
    picked = weight[:: max(1, m // sample)] - mean
    cov = blas.dgemm(1.0, picked, picked, trans_a=1) / picked.shape[0]
    values, vectors = np.linalg.eigh(cov)
    keep = values > values.max() * 1e-12
    whiten = vectors[:, keep] / np.sqrt(values[keep])
    spread = np.empty(m)
    whiten32, mean32 = whiten.astype(np.float32), mean.astype(np.float32)
    for lo in range(0, m, 65536):  # bounded memory at 262k rows; float32 is plenty for a ranking
        block = (comp.weight32[lo:lo + 65536] - mean32) @ whiten32
        spread[lo:lo + block.shape[0]] = np.einsum("ij,ij->i", block, block)
    size = min(size, m)
    return np.sort(np.argpartition(-spread, size - 1)[:size])


def interior_certificates(comp: Competitors, positions: np.ndarray, domain, block: int = 64,
                          steps: int = 120, refresh: int = 4,
                          progress: Callable[[int], None] | None = None) -> list[certify.CertificateCheck | None]:
    """A checked certificate, or None, for each position (rows of ``comp``) on R^d.

    ``steps`` bounds the Newton steps per block, ``refresh`` how often the shared Hessian is
    rebuilt. ``progress`` is called with the number of tokens of each block done.
    """
    m, d = comp.weight.shape
    if m < 2 * (d + 1):  # a deep certificate needs well over d + 1 rows; and no d x d work for wide layers
        if progress is not None and len(positions):
            progress(len(positions))  # the stage was announced: complete it
        return [None] * len(positions)
    support = support_rows(comp, 8 * d)
    out: list[certify.CertificateCheck | None] = []
    for lo in range(0, len(positions), block):
        pos = np.asarray(positions[lo:lo + block], dtype=np.int64)
        rows = np.setdiff1d(support, pos)  # a token never supports its own certificate
        if rows.size > d + 1:
            lams, converged = _max_entropy_weights(comp.weight[rows], comp.weight[pos], steps, refresh)
            out.extend(_check_block(comp, pos, rows, lams, converged, domain))
        else:
            out.extend([None] * pos.size)
        if progress is not None:
            progress(int(pos.size))
    return out


def _check_block(comp: Competitors, pos: np.ndarray, rows: np.ndarray, lams: np.ndarray, converged: np.ndarray,
                 domain) -> list[certify.CertificateCheck | None]:
    """Checked certificates for one block, on one shared basis of the support ``rows``.

    The basis is the d + 1 rows of largest average weight over the tokens that converged:
    tokens hugging a face of the hull (stragglers that ran out of steps) put their weight on
    that face, and a basis taken from them is singular, which would refuse the whole block. If
    converged tokens are still refused, they are tried once more on a pivoted-QR basis of the
    weighted system (as :func:`certify._enclose` does for one token; about 4 GFLOP at d = 640,
    so only then).
    """
    d = comp.weight.shape[1]
    usable = np.isfinite(lams).all(axis=0)
    chosen = converged if converged.any() else usable
    if not chosen.any():
        return [None] * pos.size
    mean = lams[:, chosen].mean(axis=1)
    basis = np.sort(np.argpartition(-mean, d)[: d + 1])
    checks = certify.check_on_shared_basis(comp.weight, comp.bias, pos, rows, lams, basis, domain)
    retry = np.flatnonzero(converged & np.array([c is None for c in checks]))
    if retry.size:
        system = np.vstack([comp.weight[rows].T, np.ones((1, rows.size))]) * mean
        _, _, pivots = linalg.qr(system, mode="economic", pivoting=True, check_finite=False)
        again = certify.check_on_shared_basis(comp.weight, comp.bias, pos[retry], rows, lams[:, retry],
                                              np.sort(pivots[: d + 1]), domain)
        for k, check in zip(retry, again, strict=True):
            checks[k] = check
    return checks


def _max_entropy_weights(rows: np.ndarray, targets: np.ndarray, steps: int, refresh: int,
                         tol: float = 1e-10, stalled: float = 0.1, patience: int = 8
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Weights (K x B, columns on the simplex) ``lam ~ exp(theta_b . w_j)`` with ``rows^T lam ~ targets[b]``.

    Newton directions from the average Hessian of the tokens still moving, each followed by an
    exact line search on its own token's dual objective: along a direction the scores move
    linearly, so the search needs no product, only the K scores per token. A target outside
    the rows' hull has no such weights (its theta grows without bound): after ``patience``
    steps, a token whose residual is still above ``stalled`` times its first one leaves the
    block with NaN weights, which the enclosure refuses; converged tokens leave too, so later
    steps cost only what is left. Also returns which tokens converged (residual <= ``tol``).
    """
    k, d = rows.shape
    mean = rows.mean(axis=0)
    centred = rows - mean
    goal = (targets - mean).T  # d x B
    out = np.full((k, goal.shape[1]), np.nan)
    converged = np.zeros(goal.shape[1], dtype=bool)
    active = np.arange(goal.shape[1])
    z = np.zeros((k, goal.shape[1]), order="F")  # scores centred_j . theta_b
    lams = np.full((k, goal.shape[1]), 1.0 / k, order="F")
    scale = max(1.0, float(np.abs(goal).max()))
    first_residual = None
    factor = None
    for step in range(steps):
        grad = blas.dgemm(1.0, centred.T, lams) - goal  # d x B (centred.T: a Fortran view, no copy)
        residual = np.abs(grad).max(axis=0)
        if first_residual is None:
            first_residual = residual
        done = residual <= tol * scale
        lost = (step >= patience) & (residual > stalled * first_residual)
        if (done | lost).any():
            out[:, active[done]] = lams[:, done]
            converged[active[done]] = True
            keep = ~(done | lost)
            active, goal, z, lams = active[keep], goal[:, keep], z[:, keep], lams[:, keep]
            grad, first_residual = grad[:, keep], first_residual[keep]
            if active.size == 0:
                return out, converged
        if step % refresh == 0 or factor is None:
            avg = lams.mean(axis=1)
            first = blas.dgemv(1.0, centred.T, avg)
            # The covariance of the rows under the block's average weights (lower triangle only).
            hessian = blas.dsyrk(1.0, (centred * np.sqrt(avg)[:, None]).T, lower=1) - np.outer(first, first)
            hessian[np.diag_indices(d)] += 1e-12 * max(float(np.trace(hessian)) / d, 1e-300)
            try:
                factor = linalg.cho_factor(hessian, lower=True, check_finite=False)
            except linalg.LinAlgError:
                break
        direction = linalg.cho_solve(factor, grad, check_finite=False)
        moves = rows_times(centred, direction)  # how each score changes per unit step
        alpha = _line_search(z, moves, np.einsum("db,db->b", direction, goal))
        z -= alpha * moves
        top = z.max(axis=0)
        lams = np.exp(z - top)
        lams /= lams.sum(axis=0)
    out[:, active] = lams  # out of steps: the enclosure judges what they reached
    return out, converged


def _line_search(z: np.ndarray, moves: np.ndarray, pull: np.ndarray, iterations: int = 6) -> np.ndarray:
    """Per column, the step a >= 0 minimising ``log sum_j exp(z_j - a moves_j) + a pull`` (convex in a).

    Safeguarded Newton from a = 1: the slope is ``pull - E[moves]`` and the curvature
    ``Var[moves]`` under the weights ``softmax(z - a moves)``.
    """
    lo = np.zeros(z.shape[1])
    hi = np.full(z.shape[1], np.inf)
    a = np.ones(z.shape[1])
    for _ in range(iterations):
        y = z - a * moves
        w = np.exp(y - y.max(axis=0))
        w /= w.sum(axis=0)
        mean = np.einsum("kb,kb->b", w, moves)
        slope = pull - mean
        curve = np.einsum("kb,kb->b", w, moves * moves) - mean * mean
        lo = np.where(slope < 0, a, lo)
        hi = np.where(slope >= 0, a, hi)
        newton = a - slope / np.where(curve > 0, curve, np.nan)
        inside = np.isfinite(newton) & (newton > lo) & (newton < hi)
        a = np.where(inside, newton, np.where(np.isfinite(hi), (lo + hi) / 2, 2 * a))
    return a
