"""Independent checks of certificates, with rigorous floating-point error bounds.

Nothing here trusts a solver. A *witness* ``x`` proves token ``i`` argmaxable
when ``s_i(x) - max_{j != i} s_j(x) > 0`` holds after accounting for every
rounding error of the product that computed it. A *convex certificate*
``lambda >= 0`` over other tokens proves token ``i`` unargmaxable when

    min_{x in D}  sum_j lambda_j (s_j(x) - s_i(x))  >=  0,

because then some competitor scores at least as high as ``i`` everywhere on
``D`` (a tie is not a win). With ``sum lambda = 1`` the negated minimum is an
upper bound on the best gap ``sup_x s_i(x) - max_j s_j(x)``, which is what the
report calls the margin of an unargmaxable token.

Error bounds use the classical ``gamma_k = k u / (1 - k u)`` bounds for dot
products in IEEE arithmetic with round-to-nearest (Higham, *Accuracy and
Stability of Numerical Algorithms*, ch. 3), doubled for safety. On R^d, or on
an open side of a box, the certificate must satisfy equalities exactly; those
are proven by a verified solve of the support's linear system (an a-posteriori
enclosure of its exact solution) or, for small supports, in exact rationals.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import scipy.linalg

from .._rounding import ETA32, ETA64, U32, U64, gamma
from ._blas import matmat, matvec, rows_times, rows_times32, vecmat
from ._fingerprint import row_fingerprints

# --------------------------------------------------------------------------- witnesses


def witness_gap_bounds(scores: np.ndarray, own_rows: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Certified lower bounds of ``s_i - max_{j != i} s_j`` for a block of witnesses.

    Parameters
    ----------
    scores : (m, B) float32 or float64 array
        Computed logits (bias included) of all m competitors at B witnesses.
        Modified in place: each column's own entry is masked.
    own_rows : (B,) int array
        Row of ``scores`` that belongs to the token each column tests.
    error : (B,) float64 array
        A bound on the absolute error of any single computed score in that column.

    Returns
    -------
    (B,) float64 array: ``gap - 2 * error``; a positive entry is a proof.
    """
    cols = np.arange(scores.shape[1])
    own = scores[own_rows, cols].copy()
    scores[own_rows, cols] = -np.inf
    best_other = scores.max(axis=0)  # the max of floats is exact
    scores[own_rows, cols] = own
    return gap_bounds(own, best_other, error)


def gap_bounds(own: np.ndarray, best_other: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Certified lower bounds of ``s_i - max_{j != i} s_j`` from each column's computed own score
    and best rival score (float32 or float64, each within ``error`` of the exact one).

    Returns ``gap - 2 * error`` in float64; a positive entry is a proof, a NaN or overflowed
    score gives -inf.
    """
    own = np.asarray(own).astype(np.float64)
    best_other = np.asarray(best_other).astype(np.float64)
    # The subtraction in float64 of two float32 numbers is exact; of two float64 numbers it
    # errs by at most U64 |difference|, covered by the 1 + 2 U64 factor on the error.
    with np.errstate(invalid="ignore", over="ignore"):
        gap = own - best_other - 2.0 * error * (1 + 2 * U64) - 2 * U64 * np.abs(own - best_other)
    # An overflowed or NaN score proves nothing: such a column is never a witness.
    return np.where(np.isfinite(gap), gap, -np.inf)


def score_error_bound(x_norms: np.ndarray, max_row_norm: float, dim: int, unit: float,
                      cast_unit: float = 0.0) -> np.ndarray:
    """Bound on |computed w_j.x - exact w_j.x| for every row j (Cauchy-Schwarz on |w||x|).

    ``cast_unit`` covers weights that were rounded to the working precision
    before the product (float64 weights multiplied in float32).
    """
    eta = ETA32 if unit == U32 else ETA64
    return ((gamma(dim + 2, unit) * (1.0 + cast_unit) + cast_unit) * max_row_norm * x_norms
            + 2 * dim * eta * (1.0 + x_norms))


def in_domain(x: np.ndarray, domain) -> bool:
    """Exact membership test of a candidate witness (the domain covers its own test's rounding)."""
    return bool(domain.certainly_contains(x))


def check_witness(weight: np.ndarray, bias: np.ndarray | None, row: int, x: np.ndarray,
                  domain, row_norms: np.ndarray) -> float:
    """Certified lower bound on token ``row``'s gap at ``x``, in float64 (``-inf`` if x not in D)."""
    return witness_and_scores(weight, bias, row, x, domain, row_norms)[0]


def float64_scores(weight: np.ndarray, bias: np.ndarray | None, points: np.ndarray) -> np.ndarray:
    """Every row's score ``w_j . x + b_j`` at each point (n x B, float64), computed as
    :func:`check_witnesses` bounds it: one product for all the points, then the bias."""
    scores = rows_times(weight, np.asarray(points, dtype=np.float64).T)  # a fresh array: shifted in place
    if bias is not None:
        scores += bias[:, None]
    return scores


def float32_scores(weight32: np.ndarray, bias: np.ndarray | None, points: np.ndarray) -> np.ndarray:
    """Every row's float32 score at each point rounded to float32 (n x B, float32): one float32 product,
    then the bias rounded to float32 and added in float32, as :func:`check_witnesses_float32` bounds it."""
    scores = rows_times32(weight32, np.asarray(points, dtype=np.float32).T)
    if bias is not None:
        scores += bias.astype(np.float32)[:, None]
    return scores


def check_witnesses(weight: np.ndarray, bias: np.ndarray | None, rows: np.ndarray, points: np.ndarray,
                    domain, row_norms: np.ndarray, scores: np.ndarray | None = None) -> np.ndarray:
    """:func:`check_witness` for a block: token ``rows[b]`` at ``points[b]``, one float64 product for all.

    The rounding bound of a dot product holds whatever the summation order, so one matrix
    product proves what B matrix-vector products would, reading the rows once instead of B times.
    ``scores``, when the caller has them, are :func:`float64_scores` at these very points (the
    exact step's round computes them to pick its next rows): the bound covers them as it covers a
    fresh product, and the rows are not read a second time. Their columns are read, not changed.
    """
    points = np.asarray(points, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    inside = np.array([np.isfinite(x).all() and in_domain(x, domain) for x in points], dtype=bool)
    gaps = np.full(rows.size, -np.inf)
    if not inside.any():
        return gaps
    at = np.flatnonzero(inside)
    scores = float64_scores(weight, bias, points[at]) if scores is None else scores[:, at]
    err = _float64_score_error(np.linalg.norm(points[at], axis=1), np.abs(scores).max(axis=0), row_norms,
                               weight.shape[1])
    gaps[at] = witness_gap_bounds(scores, rows[at], err)
    return gaps


def check_witnesses_float32(weight: np.ndarray, weight32: np.ndarray, bias: np.ndarray | None, rows: np.ndarray,
                            points: np.ndarray, domain, row_norms: np.ndarray,
                            scores32: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`check_witnesses` from one float32 product, for points moved a hair past near-duplicate rows.

    The points are rounded to float32 and claimed as they are then (returned, in float64). Every
    row's float32 score is within a bound ``err`` of its exact score there (the product's rounding,
    the weights' cast to float32, the bias's, underflow): a row whose float32 score trails the
    token's by more than ``2 err`` is certainly beaten. Only the rows the float32 scores cannot
    separate from the token (a twin 1e-5 away trails by 1e-6 of the scale) are scored again in
    float64, with :func:`check_witnesses`' bound. The gap bound is the smaller of the two parts.
    ``weight32`` is ``weight`` rounded to nearest float32 (:attr:`Competitors.weight32`): the bound
    covers that rounding, so it is never assumed exact. ``scores32``,
    when the caller has them, are :func:`float32_scores` at these points (in any summation order:
    :mod:`.polish` makes them to find the rows in the way); they are read, not changed.
    """
    points32 = np.asarray(points, dtype=np.float32)
    claimed = points32.astype(np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    gaps = np.full(rows.size, -np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        inside = np.array([np.isfinite(x).all() and in_domain(x, domain) for x in claimed], dtype=bool)
    if not inside.any():
        return gaps, claimed
    at = np.flatnonzero(inside)
    own_rows = rows[at]
    cols = np.arange(at.size)
    d = weight.shape[1]
    x_norms = np.linalg.norm(claimed[at], axis=1) * (1 + 4 * U64)
    if scores32 is None:
        scores = float32_scores(weight32, bias, points32[at])
    else:
        scores = np.array(scores32[:, at], dtype=np.float32)  # a copy: own rows are masked below
    top_bias = 0.0 if bias is None else float(np.abs(bias).max())
    with np.errstate(invalid="ignore", over="ignore"):
        top = np.abs(scores).max(axis=0).astype(np.float64)
    # The float32 product with weights cast to float32 (score_error_bound), the cast's underflow
    # (ETA32 / 2 an entry), the bias's cast and its float32 addition, and what underflows there.
    err = (score_error_bound(x_norms, float(row_norms.max()), d, U32, U32) + 2 * d * ETA32 * (1.0 + x_norms)
           + 2 * U32 * (top + top_bias) + 2 * ETA32) * 1.0001
    own = scores[own_rows, cols].astype(np.float64)
    scores[own_rows, cols] = -np.inf
    # Float32 comparisons (a float32 threshold rounded down: never fewer rows than the exact test).
    threshold = np.nextafter((own - 2.0 * err).astype(np.float32), np.float32(-np.inf))
    with np.errstate(invalid="ignore"):
        close = scores >= threshold[None, :]
    near_rows, near_cols = np.nonzero(close)
    scores[near_rows, near_cols] = -np.inf
    far = gap_bounds(own, scores.max(axis=0), err)
    # The rows it cannot separate, and the token's own row, in float64.
    near = np.full(at.size, np.inf)
    order = np.argsort(near_cols, kind="stable")
    groups = np.split(near_rows[order], np.searchsorted(near_cols[order], np.arange(1, at.size)))
    for c, close_rows in enumerate(groups):
        if close_rows.size == 0:
            continue
        here = np.concatenate([[own_rows[c]], close_rows])
        exact = matvec(weight[here], claimed[at[c]])
        if bias is not None:
            exact = exact + bias[here]
        bound = _float64_score_error(x_norms[c:c + 1], np.abs(exact).max(), row_norms, d)
        near[c] = witness_gap_bounds(exact[:, None], np.array([0]), bound)[0]
    gaps[at] = np.minimum(far, near)
    return gaps, claimed


def witness_and_scores(weight: np.ndarray, bias: np.ndarray | None, row: int, x: np.ndarray,
                       domain, row_norms: np.ndarray) -> tuple[float, np.ndarray | None]:
    """:func:`check_witness`, plus the float64 scores ``W x + b`` it computed (None if x is not in D).

    A solver that rejects the witness wants the same scores to pick its next rows; handing them
    back saves a second pass over every row (at 262k x 640, 16 ms a pass).
    """
    if not np.isfinite(x).all() or not in_domain(x, domain):
        return -np.inf, None
    scores = matvec(weight, x)
    if bias is not None:
        scores = scores + bias
    err = _float64_score_error(np.array([np.linalg.norm(x)]), np.abs(scores).max(), row_norms, weight.shape[1])
    return float(witness_gap_bounds(scores[:, None], np.array([row]), err)[0]), scores


def _float64_score_error(x_norms: np.ndarray, top_scores, row_norms: np.ndarray, dim: int) -> np.ndarray:
    """Per point, a bound on the error of every float64 score ``w_j . x + b_j`` computed at it: the
    product's (with 4 ulps on the computed ``|x|``) and the bias's addition (4 ulps of the largest
    ``|score|`` there, ``top_scores``)."""
    return score_error_bound(x_norms * (1 + 4 * U64), float(row_norms.max()), dim, U64) + 4 * U64 * top_scores


# --------------------------------------------------------------------------- convex certificates


@dataclass(frozen=True)
class CertificateCheck:
    """Outcome of checking a convex certificate for one token.

    ``bound`` is a certified upper bound on the token's best gap over the
    domain (valid only when ``ok``); ``method`` says how it was proven.
    """

    ok: bool
    bound: float
    method: str
    reason: str
    support: np.ndarray
    weights: np.ndarray


def check_certificate(weight: np.ndarray, bias: np.ndarray | None, row: int, support: np.ndarray,
                      lam: np.ndarray, domain) -> CertificateCheck:
    """Check that ``lam`` over rows ``support`` proves token ``row`` unargmaxable on ``domain``.

    Where the domain demands exact equalities (R^d, open box sides) ``lam`` is
    only a starting point: what is proven is that an exact certificate exists
    on ``support`` near ``lam``, and that certificate's weights are returned.
    """
    support = np.asarray(support, dtype=np.int64)
    lam = np.asarray(lam, dtype=np.float64)
    domain = domain.resolve(weight.shape[1])  # callers may pass Unbounded() as it is
    keep = lam > 0
    support, lam = support[keep], lam[keep]

    def fail(reason: str) -> CertificateCheck:
        return CertificateCheck(False, np.nan, "", reason, support, lam)

    if support.size == 0:
        return fail("certificate has no positive weight")
    if np.any(support == row) or np.any(support < 0) or np.any(support >= weight.shape[0]):
        return fail("certificate names the token itself or a row out of range")
    if not np.isfinite(lam).all():
        return fail("certificate weights are not finite")
    lam = lam / lam.sum()

    w_i = weight[row]
    rows = weight[support]
    m = rows.shape[0]
    g = gamma(m + 3, U64)
    v, v_err, beta, beta_err = _combination(weight, bias, row, support, lam, g)
    sum_hi = float(lam.sum()) * (1.0 + g)  # divide a negative bound by an upper bound of sum(lam)

    bound, undecided = _bound_from_interval(v, v_err, beta, beta_err, domain)
    if not undecided.any():
        if bound <= 0.0:
            return CertificateCheck(True, min(bound / sum_hi, 0.0), "float64 with rounding bounds", "",
                                    support, lam)
        return fail(f"certificate does not hold: the averaged competitor can be beaten by {bound:.3g}")
    # Where the exact certificate has v_k = 0, the solver leaves noise of either sign: a
    # coordinate on an open side whose |v_k| is at noise level must be an equality too.
    scale = vecmat(lam, np.abs(rows) + np.abs(w_i))
    near_zero = domain.open_coordinates() & (np.abs(v) <= 1e-9 * np.maximum(scale, 1e-300))
    return _check_exactly(weight, bias, row, support, lam, domain, [undecided, undecided | near_zero], rows)


def check_certificates(weight: np.ndarray, bias: np.ndarray | None, rows: np.ndarray, support: np.ndarray,
                       lams: np.ndarray, domain) -> list[CertificateCheck]:
    """:func:`check_certificate` for tokens ``rows`` whose weights share one ``support`` (``lams``: one
    column per token), their combinations made by two matrix products for all of them.

    Token p's ``v = sum_j lam_j w_j - S w_p`` with ``S = sum_j lam_j`` (and ``beta`` likewise) is
    computed as ``P - fl(S^ w_p)`` from ``P = fl(Lam^T W_S)`` and ``S^ = fl(sum lam)``: with
    ``lam >= 0`` and ``g = gamma(K + 5)`` over the K support rows, ``|P - sum lam_j w_j| <= g
    sum lam_j |w_j|``, ``|S^ - S| <= g S^``, the product and the difference rounding once each, so
    ``|v - v_exact| <= g (sum lam_j |w_j| + (1 + g) S^ |w_p|) + 2 u |v|`` (``u`` the unit roundoff),
    the second sum also a product. That is looser than :func:`_combination`'s bound (relative to
    ``|w_j|``, not to ``|w_j - w_p|``), so only what it proves is kept: a token it leaves undecided or
    unproven goes through :func:`check_certificate` itself, whose answer stands. PP-OCRv5's 3,337
    cluster mates on its swish box took 1.3 ms each one at a time, mostly gathering the support
    and its differences again for every token.
    """
    domain = domain.resolve(weight.shape[1])
    support = np.asarray(support, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    lams = np.asarray(lams, dtype=np.float64)

    def alone(k: int) -> CertificateCheck:
        return check_certificate(weight, bias, int(rows[k]), support, lams[:, k], domain)

    if (support.size == 0 or np.any(support < 0) or np.any(support >= weight.shape[0])
            or not np.isfinite(lams).all() or np.isin(rows, support).any()):
        return [alone(k) for k in range(rows.size)]
    lam = np.maximum(lams, 0.0)  # check_certificate keeps the positive weights only
    total = lam.sum(axis=0)
    lam = lam / np.where(total > 0, total, 1.0)
    g = gamma(support.size + 5, U64)
    s_hat = lam.sum(axis=0)
    gathered = weight[support]
    w_rows = weight[rows]
    v = lam.T @ gathered - s_hat[:, None] * w_rows
    v_err = g * (lam.T @ np.abs(gathered) + (1 + g) * s_hat[:, None] * np.abs(w_rows)) + 2 * U64 * np.abs(v)
    if bias is not None:
        b_rows = bias[rows]
        beta = lam.T @ bias[support] - s_hat * b_rows
        beta_err = g * (lam.T @ np.abs(bias[support]) + (1 + g) * s_hat * np.abs(b_rows)) + 2 * U64 * np.abs(beta)
    else:
        beta = beta_err = np.zeros(rows.size)
    out: list[CertificateCheck] = []
    for k in range(rows.size):
        keep = lam[:, k] > 0
        if not keep.any():
            out.append(alone(k))
            continue
        bound, undecided = _bound_from_interval(v[k], v_err[k], float(beta[k]), float(beta_err[k]), domain)
        if undecided.any() or not bound <= 0.0:
            out.append(alone(k))
            continue
        weights = lam[keep, k]
        sum_hi = float(weights.sum()) * (1.0 + g)
        out.append(CertificateCheck(True, min(bound / sum_hi, 0.0), "float64 with rounding bounds", "",
                                    support[keep], weights))
    return out


def best_gap_bound(weight: np.ndarray, bias: np.ndarray | None, row: int, support: np.ndarray,
                   lam: np.ndarray, domain) -> float:
    """Certified upper bound on token ``row``'s best gap ``max_{x in D} s_row(x) - max_{j != row} s_j(x)``
    from any weights ``lam >= 0`` over rows ``support`` (``inf`` when they prove nothing).

    For every x, ``gap(x) sum(lam) <= sum_j lam_j (s_row(x) - s_j(x))``, so the best gap is at most
    ``max_{x in D} sum_j lam_j (s_row - s_j)(x) / sum(lam)``: weak duality, whatever ``lam`` is (a
    poor one only gives a poor bound). The same interval arithmetic as :func:`check_certificate`,
    but the bound may be positive (an argmaxable token's best margin). Needs a domain with no open
    side (every coordinate decided), else ``inf``.
    """
    support = np.asarray(support, dtype=np.int64)
    lam = np.asarray(lam, dtype=np.float64)
    keep = lam > 0
    support, lam = support[keep], lam[keep]
    if (support.size == 0 or np.any(support == row) or np.any(support < 0) or np.any(support >= weight.shape[0])
            or not np.isfinite(lam).all()):
        return np.inf
    domain = domain.resolve(weight.shape[1])
    g = gamma(support.size + 3, U64)
    v, v_err, beta, beta_err = _combination(weight, bias, row, support, lam, g)
    bound, undecided = _bound_from_interval(v, v_err, beta, beta_err, domain)
    if undecided.any() or not np.isfinite(bound):
        return np.inf
    total = float(lam.sum())
    # Divide by a lower bound of sum(lam) when the bound is positive, an upper one when negative,
    # and round the quotient outwards.
    if bound >= 0:
        return bound / (total * (1.0 - g)) * (1.0 + 4 * U64)
    return bound / (total * (1.0 + g)) * (1.0 - 4 * U64)


def _combination(weight, bias, row, support, lam, g):
    """``v = sum_j lam_j (w_j - w_row)`` and ``beta = sum_j lam_j (b_j - b_row)``, each with a rigorous bound
    on its rounding error (``g`` the gamma factor of the sums).

    Each difference is rounded once, then weighted and summed: the error is relative to
    ``|w_j - w_row|``, so an exact duplicate gives ``v = 0`` with no error at all.
    """
    diffs = weight[support] - weight[row]
    v = vecmat(lam, diffs)
    v_err = g * vecmat(lam, np.abs(diffs)) + U64 * np.abs(v)
    if bias is None:
        return v, v_err, 0.0, 0.0
    bdiffs = bias[support] - bias[row]
    beta = float(lam @ bdiffs)
    return v, v_err, beta, g * float(lam @ np.abs(bdiffs)) + U64 * abs(beta)


def _bound_from_interval(v, v_err, beta, beta_err, domain) -> tuple[float, np.ndarray]:
    """Upper bound of ``max_{x in D} -(v.x + beta)`` for v within ``v +- v_err``.

    Returns the bound and a mask of coordinates whose sign must be known
    exactly (open directions of the domain where the interval straddles the
    required sign). The bound ignores those coordinates. The domain bounds
    ``min_{x in D} v.x + beta`` from below; the negation is exact.
    """
    lower, undecided = domain.linear_min_bound(v, v_err, beta, beta_err)
    return -lower, undecided


def _check_exactly(weight, bias, row, support, lam, domain, masks, rows: np.ndarray) -> CertificateCheck:
    """Prove the equalities ``sum_j lam_j w_jk = w_ik`` exactly, for the first mask that fits.

    Each mask is a candidate set of coordinates where the certificate must
    hold with equality; the rest is then bounded with intervals. ``rows`` is
    ``weight[support]``, gathered once by the caller.
    """
    m = support.size
    w_i = weight[row]
    candidates: list[np.ndarray] = []
    for mask in masks:
        # Each mask's equations are found only when the ones before failed: at 1161 rows x 512 that
        # pass (the rows' columns fingerprinted) is 12 ms of a 95 ms check, and the first mask
        # nearly always decides.
        coords = _independent_equations(rows, w_i, np.flatnonzero(mask))
        if any(np.array_equal(coords, c) for c in candidates):
            continue
        candidates.append(coords)
        # A coordinate left out of the equalities may still straddle 0 once the enclosure's
        # radius is added; forcing it to 0 too (which its sign condition allows) and enclosing
        # again usually settles it. A few rounds at most.
        for _ in range(4):
            if coords.size + 1 > m:
                break
            result = _enclose(rows, w_i, coords, lam)
            if result is None or not np.all(result[0] - result[1] >= 0):
                break
            check, straddling = _finish_interval(weight, bias, row, support, result[0], result[1], coords, domain)
            if check.ok:
                return check
            if not straddling.any():
                break
            coords = _independent_equations(rows, w_i, np.union1d(coords, np.flatnonzero(straddling)))
    coords = candidates[0]
    if m <= 16 and (coords.size + 1) * m * m <= 4_000_000:
        return _check_rational(weight, bias, row, support, lam, coords, domain)
    return CertificateCheck(
        False, np.nan, "",
        f"the token lies within rounding error of the boundary of its competitors' hull"
        f" ({m} rows, {coords.size} exact equalities needed); float64 cannot decide it",
        support, lam)


def _columns(rows: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``rows[:, coords]`` for sorted distinct ``coords``; the rows themselves (no copy) when that is every column."""
    return rows if coords.size == rows.shape[1] else rows[:, coords]


def _independent_equations(rows, w_i, coords) -> np.ndarray:
    """Drop equations that hold trivially: all-zero coordinates and exact repeats of another."""
    # Coordinates where every row involved is exactly 0 hold as 0 = 0; identical
    # equations are one equation. Both are common in rank-deficient layers.
    block = np.column_stack([_columns(rows, coords).T, w_i[coords]])
    nonzero = np.any(block != 0, axis=1)
    if not nonzero.all():
        block, coords = block[nonzero], coords[nonzero]
    if coords.size and not _all_distinct(block):
        _, first = np.unique(block, axis=0, return_index=True)
        coords = np.sort(coords[first])
    return coords


def _all_distinct(block: np.ndarray) -> bool:
    """True when no two rows of ``block`` are equal (False may also mean a rare hash collision).

    Equal rows always have equal fingerprints (:func:`row_fingerprints`); sorting whole rows
    (``np.unique(axis=0)``) took 37 ms for 640 x 1600, this about 3 ms. ``+ 0.0`` maps -0.0 to
    0.0, which compare equal.
    """
    hashes = row_fingerprints(np.ascontiguousarray(block + 0.0).view(np.uint64))
    return np.unique(hashes).size == hashes.size


def _enclose(rows, w_i, coords, lam) -> tuple[np.ndarray, np.ndarray] | None:
    """Enclose an exact solution of ``[rows[:, coords].T; 1] lam = [w_i[coords]; 1]`` near ``lam``.

    The support may be larger than the number of equations. Then the exact
    solution is taken as ``lam`` corrected on a well-conditioned basis of
    columns (pivoted QR) and left unchanged elsewhere, which keeps the
    correction tiny when ``lam`` is strictly positive ("deep" certificates).

    Returns (midpoint, radius) with |lam_exact - midpoint| <= radius
    componentwise, or None when the system cannot be verified. The matrix
    entries are the exact weights; only rounding in *our* arithmetic is bounded.
    """

    m = rows.shape[0]
    # Scale column j by a power of two near lam_j (exact in binary floating point), so that
    # every unknown is about 1 and one radius fits weights of very different sizes.
    scale = 2.0 ** np.round(np.log2(np.clip(lam, 1e-300, None)))
    # Differences w_j - w_i describe the geometry (clusters of near-identical rows are
    # common); use them when float64 holds them exactly (always for float32 weights).
    picked = _columns(rows, coords)
    diffs = picked - w_i[coords]
    if _exact_differences(picked, w_i[coords], diffs):
        unscaled = np.vstack([diffs.T, np.ones((1, m))])
        r = np.concatenate([np.zeros(coords.size), [1.0]])
    else:
        unscaled = np.vstack([picked.T, np.ones((1, m))])
        r = np.concatenate([w_i[coords], [1.0]])
    a_full = unscaled * scale
    if not np.array_equal(a_full / scale, unscaled):  # an entry scaled into the subnormals lost bits
        scale = np.ones(m)
        a_full = unscaled
    lam = lam / scale
    neq = a_full.shape[0]
    if m < neq:
        return None
    if m == neq:
        return _enclose_on(a_full, r, lam, np.arange(m), scale)
    # The largest weights are the basic ones at an interior-point optimum: try them first,
    # and a well-conditioned basis from pivoted QR (costlier) only if they fail.
    largest = np.sort(np.argpartition(-lam * scale, neq - 1)[:neq])
    found = _enclose_on(a_full, r, lam, largest, scale)
    if found is not None and np.all(found[0] - found[1] >= 0):
        return found
    _, piv = scipy.linalg.qr(a_full, mode="r", pivoting=True)  # the pivots only: no Q
    return _enclose_on(a_full, r, lam, np.sort(piv[:neq]), scale)


def _enclose_on(a_full, r, lam, basis, scale) -> tuple[np.ndarray, np.ndarray] | None:
    """Enclosure with the correction confined to ``basis`` columns (scaled system)."""
    found = _enclose_columns(a_full, r, lam, basis)
    if found is None:
        return None
    mid, rad = found
    # Scaling by a power of two is exact unless the product is subnormal (then it errs by at most
    # ETA64 / 2): the basis entries' radius covers that for the midpoint and for itself. Outside
    # the basis, mid * scale gives back the caller's weights exactly and the radius stays 0.
    return mid * scale, np.where(rad > 0, rad * scale + ETA64, 0.0)


@dataclass(frozen=True)
class BasisInverse:
    """A verified approximate inverse ``inv`` of the square system ``a = a_full[:, basis]``.

    ``||I - inv a|| <= alpha < 1`` (every rounding bounded), so ``a`` is nonsingular and
    ``a^-1 = sum_k (I - inv a)^k inv``. Nothing here depends on the right-hand sides, so blocks
    of tokens that share a support and a basis share one (:func:`invert_basis`); ``abs_inv``,
    ``abs_a``, and ``rest`` and ``a_rest`` (the columns outside the basis, Fortran-ordered so that blocks of
    them are contiguous, and their absolute values) are kept with it.
    """

    system: np.ndarray  # the a_full it was computed from (checked by identity before any use)
    basis: np.ndarray
    a: np.ndarray
    abs_a: np.ndarray
    inv: np.ndarray
    abs_inv: np.ndarray
    alpha: float
    rest: np.ndarray
    a_rest: np.ndarray
    abs_a_rest: np.ndarray


def invert_basis(a_full: np.ndarray, basis: np.ndarray) -> BasisInverse | None:
    """The :class:`BasisInverse` of ``a_full[:, basis]``, or None when it cannot be verified."""
    neq = a_full.shape[0]
    a = a_full[:, basis]
    try:  # scipy's LAPACK, like every other product of the exact step (see _blas.py): 21 -> 3 ms a call
        with warnings.catch_warnings():
            # An ill-conditioned basis is judged below (alpha < 1 or no enclosure), not warned about.
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            inv = scipy.linalg.inv(a, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return None
    if not np.isfinite(inv).all():
        return None
    g = gamma(neq + 2, U64)
    abs_inv, abs_a = np.abs(inv), np.abs(a)
    c_bound = np.abs(np.eye(neq) - matmat(inv, a)) * (1 + 2 * U64) + g * matmat(abs_inv, abs_a)
    alpha = float(c_bound.sum(axis=1).max()) * (1 + g)
    if not alpha < 1.0:
        return None
    rest = np.setdiff1d(np.arange(a_full.shape[1]), basis)
    a_rest = np.asfortranarray(a_full[:, rest])
    return BasisInverse(a_full, np.asarray(basis), a, abs_a, inv, abs_inv, alpha, rest, a_rest, np.abs(a_rest))


def _blocked_product(matrix: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, int]:
    """``matrix @ x`` summed over blocks of about sqrt(n) columns, and the ``k`` of its error bound.

    Each entry is a sum of n products. Summed in any order its rounding is at most
    ``gamma_n |matrix| |x|``; as partial sums of w terms, then added one after another, at most
    ``gamma_k |matrix| |x|`` with ``k = w + ceil(n / w)`` (Higham, ch. 3): about 2 sqrt(n)
    instead of n, 45 times less at n = 32768. The flops are the same.
    """
    n = matrix.shape[1]
    product = matvec if x.ndim == 1 else matmat
    width = max(1, int(np.ceil(np.sqrt(n))))
    total = None
    for lo in range(0, n, width):
        part = product(matrix[:, lo:lo + width], x[lo:lo + width])
        total = part if total is None else total + part
    if total is None:
        total = np.zeros((matrix.shape[0], *x.shape[1:]))
    return total, width + -(-n // width)


def _enclose_columns(a_full, targets, lams, basis, inverse: BasisInverse | None = None
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """Enclose exact solutions of ``a_full lam = targets`` near ``lams``, correcting only ``basis``.

    ``targets`` and ``lams`` are one column (vectors) or several (one per token, sharing the
    basis). The entries of ``lams`` outside the basis are kept as the exact floats they are;
    the square system ``A`` on the basis columns is solved approximately with an inverse ``C``
    with ``||I - C A|| <= alpha < 1``. The exact residual ``r`` of the solution ``x`` then
    bounds its error entrywise: ``A^-1 r = sum_k (I - C A)^k C r``, so
    ``|A^-1 r| <= |C| |r| + alpha / (1 - alpha) max(|C| |r|)``, every rounding of ``r`` included.
    The inverse and alpha do not depend on the columns: ``inverse``, when given (for the same
    ``a_full`` and ``basis``), saves computing them again. Returns (midpoint, radius), with
    |exact - midpoint| <= radius entrywise (0 outside the basis), or None when the basis
    cannot be verified.
    """
    m = a_full.shape[1]
    neq = a_full.shape[0]
    if inverse is None or inverse.system is not a_full or not np.array_equal(inverse.basis, basis):
        inverse = invert_basis(a_full, basis)  # never an inverse of another system or basis
    if inverse is None:
        return None
    a, inv, alpha = inverse.a, inverse.inv, inverse.alpha
    product = matvec if lams.ndim == 1 else matmat  # one token's solve stays matrix-vector
    fixed = lams[inverse.rest]
    # Right-hand side for the basis columns: r - A_rest lam_rest, enclosed. Each of the m - neq
    # products may also underflow, losing up to ETA64 / 2 absolutely.
    rest_sum, k_rest = _blocked_product(inverse.a_rest, fixed)
    rhs = targets - rest_sum
    rhs_err = gamma(k_rest + 2, U64) * (np.abs(targets) + product(inverse.abs_a_rest, np.abs(fixed))) * (
        1 + gamma(m + 2, U64)) + m * ETA64
    basis = inverse.basis
    x = lams[basis].copy()
    for _ in range(3):
        x = x + product(inv, rhs - product(a, x))
    basis_sum, k_basis = _blocked_product(a, x)
    res = rhs - basis_sum
    # |exact residual| entrywise: the computed one, the right-hand side's error, and the rounding of
    # A x and of the subtraction (the bound on |A| |x|, itself rounded, inflated by gamma_neq).
    res_bound = (np.abs(res) + rhs_err + gamma(k_basis + 2, U64) * (np.abs(rhs) + product(inverse.abs_a, np.abs(x)))
                 * (1 + gamma(neq + 2, U64)) + neq * ETA64) * (1 + 4 * U64)
    # |C| res_bound rounded up (its sums of nonnegative terms err by at most gamma_neq, relatively).
    spread = product(inverse.abs_inv, res_bound) * (1 + gamma(neq + 2, U64)) + neq * ETA64
    radius = (spread + alpha / (1.0 - alpha) * spread.max(axis=0)) * (1 + 4 * U64)
    mid = lams.astype(np.float64).copy()
    mid[basis] = x
    rad = np.zeros(mid.shape)
    rad[basis] = radius
    return mid, rad


def check_on_shared_basis(weight: np.ndarray, bias: np.ndarray | None, rows: np.ndarray, support: np.ndarray,
                          lams: np.ndarray, basis: np.ndarray, domain, system: np.ndarray | None = None,
                          inverse: BasisInverse | None = None) -> list[CertificateCheck | None]:
    """Check the R^d certificates of many tokens that share one support and one basis of it.

    ``lams[:, b]`` are approximate weights on ``support`` with ``sum_j lam_j w_j ~ w_q`` for
    token ``q = rows[b]``. As for one token (:func:`_enclose_on`), an exact solution of
    ``[W_S^T; 1] lam = [w_q; 1]`` is enclosed with the correction confined to the ``basis``
    columns (d + 1 positions into ``support``), and the token is settled only if every enclosed
    weight is >= 0 and the interval check of :func:`_finish_interval` (the bias) passes. The
    basis's inverse and its contraction bound are computed once for the block
    (:func:`_enclose_columns`). Returns a check per token, or None where the enclosure did not
    prove non-negative weights (the token goes on to the exact step). ``system`` is
    ``[W_S^T; 1]`` when the caller has it already (blocks sharing a support), ``inverse`` its
    :func:`invert_basis` on ``basis`` (blocks sharing a basis too).
    """
    support = np.asarray(support, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    d = weight.shape[1]
    size = support.size
    if basis.size != d + 1 or size < d + 1 or np.isin(rows, support).any():
        return [None] * rows.size
    finite = np.isfinite(lams).all(axis=0)  # a token without weights (NaN) is refused below
    a_full = np.vstack([weight[support].T, np.ones((1, size))]) if system is None else system
    if a_full.shape != (d + 1, size):
        return [None] * rows.size
    targets = np.vstack([weight[rows].T, np.ones((1, rows.size))])
    found = _enclose_columns(a_full, targets, np.where(finite, lams, 0.0), basis, inverse)
    if found is None:
        return [None] * rows.size
    mid, rad = found
    coords = np.arange(d)
    checks: list[CertificateCheck | None] = []
    for b, row in enumerate(rows):
        # Outside the basis rad is 0 and mid the given weight, so this also asks those to be >= 0.
        if not (finite[b] and np.all(mid[:, b] - rad[:, b] >= 0)):
            checks.append(None)
            continue
        # Contiguous copies: a strided column would sum its dot products in another order.
        check, _ = _finish_interval(weight, bias, int(row), support, np.ascontiguousarray(mid[:, b]),
                                    np.ascontiguousarray(rad[:, b]), coords, domain)
        checks.append(check if check.ok else None)
    return checks


def _exact_differences(a: np.ndarray, b: np.ndarray, diff: np.ndarray) -> bool:
    """True when ``diff = fl(a - b)`` has no rounding error anywhere (Knuth's TwoSum).

    In two buffers: at 1161 x 512 the five temporaries of the plain expression cost 6 ms, most of
    it in first-touch page faults.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        bb = np.subtract(diff, a)
        err = np.subtract(diff, bb)
        np.subtract(a, err, out=err)
        np.add(bb, b, out=bb)  # -(nb - bb) with nb = -b: the same float, sign aside
        np.subtract(err, bb, out=err)
    return not err.any()


def _finish_interval(weight, bias, row, support, lam_mid, lam_rad, coords, domain
                     ) -> tuple[CertificateCheck, np.ndarray]:
    """With exact lambda enclosed, bound the remaining terms of the certificate.

    Since sum(lam) = 1 exactly, v = sum lam_j (w_j - w_i) and beta = sum
    lam_j (b_j - b_i); working with differences keeps the enclosure's radius
    from being multiplied by the rows' size, which matters for near-duplicates.
    """
    g = gamma(support.size + 3, U64)
    if coords.size == weight.shape[1]:  # every coordinate is an enclosed equality: v = 0 exactly
        v, v_err = np.zeros(coords.size), np.zeros(coords.size)
    else:
        diffs = weight[support] - weight[row]
        v = vecmat(lam_mid, diffs)
        abs_diffs = np.abs(diffs)
        v_err = vecmat(lam_rad, abs_diffs) + g * vecmat(np.abs(lam_mid), abs_diffs) + U64 * np.abs(v)
        v[coords] = 0.0
        v_err[coords] = 0.0
    if bias is None:
        beta, beta_err = 0.0, 0.0
    else:
        bdiff = bias[support] - bias[row]
        beta = float(lam_mid @ bdiff)
        beta_err = float(lam_rad @ np.abs(bdiff)) + g * float(np.abs(lam_mid) @ np.abs(bdiff)) \
            + U64 * float(np.abs(lam_mid) @ (np.abs(bias[support]) + abs(bias[row])))
    bound, undecided = _bound_from_interval(v, v_err, beta, beta_err, domain)
    lam_out = np.clip(lam_mid, 0, None)
    if undecided.any() or not bound <= 0.0:  # NaN (a non-finite bias) proves nothing
        return CertificateCheck(False, np.nan, "", "verified solve left the certificate inconclusive",
                                support, lam_out), undecided
    return CertificateCheck(True, min(bound, 0.0), "verified linear solve (exact equalities enclosed)", "",
                            support, lam_out / lam_out.sum()), undecided


def _check_rational(weight, bias, row, support, lam, coords, domain) -> CertificateCheck:
    """Solve the equalities in exact rationals (small supports only) and check everything exactly."""
    m = support.size
    rows = [[Fraction(float(weight[j, k])) for k in coords] for j in support]
    target = [Fraction(float(weight[row, k])) for k in coords]
    # Augmented system: one equation per coordinate plus sum(lam) = 1.
    eqs = [[rows[j][t] for j in range(m)] + [target[t]] for t in range(len(coords))]
    eqs.append([Fraction(1)] * m + [Fraction(1)])
    solution = _solve_unique(eqs, m)
    if solution is None:
        return CertificateCheck(False, np.nan, "",
                                "exact rational arithmetic shows it is not exactly on the face of the"
                                " hull that the solver found",
                                support, lam)
    if any(s < 0 for s in solution):
        return CertificateCheck(False, np.nan, "", "exact solution of the certificate has negative weights",
                                support, lam)
    exact_lam = solution
    # Remaining coordinates and bias, exactly.
    d = weight.shape[1]
    others = np.setdiff1d(np.arange(d), coords)
    v = {int(k): sum(exact_lam[j] * Fraction(float(weight[support[j], k])) for j in range(m))
         - Fraction(float(weight[row, k])) for k in others}
    beta = Fraction(0)
    if bias is not None:
        beta = sum(exact_lam[j] * Fraction(float(bias[support[j]])) for j in range(m)) - Fraction(float(bias[row]))
    bound = _exact_bound(v, beta, domain)
    lam_out = np.array([float(s) for s in exact_lam])
    if bound is None or bound > 0:
        return CertificateCheck(False, np.nan, "", "exact check of the certificate failed", support, lam_out)
    return CertificateCheck(True, float(bound), "exact rational arithmetic", "", support, lam_out)


def _solve_unique(eqs: list[list[Fraction]], m: int) -> list[Fraction] | None:
    """Gauss-Jordan in rationals; the unique solution of a consistent system, else None."""
    eqs = [list(e) for e in eqs]
    pivots = []
    r = 0
    for col in range(m):
        piv = next((i for i in range(r, len(eqs)) if eqs[i][col] != 0), None)
        if piv is None:
            continue
        eqs[r], eqs[piv] = eqs[piv], eqs[r]
        p = eqs[r][col]
        eqs[r] = [val / p for val in eqs[r]]
        for i in range(len(eqs)):
            if i != r and eqs[i][col] != 0:
                f = eqs[i][col]
                eqs[i] = [a - f * b for a, b in zip(eqs[i], eqs[r], strict=True)]
        pivots.append(col)
        r += 1
    if any(all(val == 0 for val in e[:m]) and e[m] != 0 for e in eqs):
        return None  # inconsistent
    if len(pivots) < m:
        return None  # not unique; the caller's support was not minimal
    return [eqs[i][m] for i in range(m)]


def _exact_bound(v: dict[int, Fraction], beta: Fraction, domain) -> Fraction | None:
    """Exact ``max_{x in D} -(v.x + beta)`` (on a ball, an upper bound); None when it is +inf."""
    lower = domain.linear_min_bound_rational(v, beta)
    return None if lower is None else -lower
