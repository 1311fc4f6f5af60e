"""Tokens that can win only by less than the logits' own precision can resolve.

A token is argmaxable when some input makes it win by any positive gap, and
the audit proves that exactly. But a model computes its logits in float32,
float16 or bfloat16: if the largest lead a token can ever get is below the
spacing of representable logits, rounding decides whether it wins, and no
real forward pass can be relied on to pick it. The rule:

    token i is **practically unreachable** when its best margin over the domain,
    max_x (s_i(x) - max_{j != i} s_j(x)), is below  u * max_j |s_j(x*)|
    at the point x* where that best margin is reached,

with u the unit roundoff of the precision the logits are computed in
(float64 2^-53, float32 2^-24, float16 2^-11, bfloat16 2^-8; by default the
dtype the weights were stored in). In words: where the token leads by the
most, its lead is smaller than half a unit in the last place of the largest
logit there, so rounding that logit can erase it.

The best margin needs a bounded domain (a ball, a box with finite bounds);
for bias-free layers on R^d, margins scale with |x| and are measured on the
unit ball. On other unbounded domains the category is not assigned. Only
tokens whose witness gap is already below the threshold are examined, so the
check costs nothing for tokens that win clearly; most of those are decided a
block at a time by :mod:`argmaxcheck.engine.narrow` (a checked point above the
threshold, or a checked dual bound below half of it), and only the rest are
re-solved here for their best margin.

The best margin reported is an upper bound on it: the weak-duality bound of
the solver's row weights on the restricted problem, once no row outside it is
violated at the solver's point (evaluated in float64, without the interval
bounds the verdicts get), within 2e-4 of the optimum where that already puts
it clearly on one side of the threshold and within 1e-6 otherwise. The label
is decided only once no row is violated: a restricted problem's point can be
far from x*, and the threshold there is another (tried, and one label of
whisper's flipped). The witness at x* still
carries a certified positive gap: the token stays argmaxable in exact
arithmetic, and the report keeps that proof.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import certify, ipm
from ._blas import rows_times
from .competitors import Competitors
from .formulation import ball_rows, from_ball, most_violated, solver_bounds

_COARSE = 2e-4  # relative agreement of the bounds in rounds that still add rows
_SLACK = 1e-2  # how clearly the coarse bounds must clear the threshold (it moves with x)
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}


def unit_roundoff(precision: str) -> float:
    """Unit roundoff of a dtype name (``torch.`` prefixes allowed); other dtypes count as float32."""
    return UNIT_ROUNDOFF.get(precision.removeprefix("torch."), UNIT_ROUNDOFF["float32"])


def margin_domain(domain, has_bias: bool):
    """The bounded set on which best margins are measured, or None where they are not defined
    (the domain itself when bounded; the unit ball for a bias-free layer on R^d)."""
    return domain.margin_domain(has_bias)


def threshold(comp: Competitors, x: np.ndarray, unit: float) -> float:
    """u * max_j |s_j(x)|: leads below this can be rounded away at x."""
    return unit * float(np.abs(comp.scores(x)).max())


def thresholds(comp: Competitors, points: np.ndarray, unit: float, block: int = 64) -> np.ndarray:
    """:func:`threshold` at each column of ``points`` (d x B), ``block`` columns per product."""
    out = np.empty(points.shape[1])
    for lo in range(0, points.shape[1], block):
        s = rows_times(comp.weight, points[:, lo:lo + block])
        if comp.bias is not None:
            s += comp.bias[:, None]
        out[lo:lo + s.shape[1]] = unit * np.abs(s).max(axis=0)
    return out


@dataclass
class BestMargin:
    value: float  # an upper bound on the best margin (dual bound of the last restricted problem)
    x: np.ndarray  # where it is reached (inside the margin domain)
    gap: float  # certified lower bound on the gap at x


def best_margin(comp: Competitors, p: int, domain, x0: np.ndarray, cap: float,
                max_rounds: int = 40, threshold_at: Callable[[np.ndarray], float] | None = None
                ) -> BestMargin | None:
    """max_x s_p(x) - max_j s_j(x) over a bounded domain, by constraint generation; None if unsolved.

    Rounds that still add rows are solved to a relative 2e-4 (a few digits), and the last one
    again to 1e-6. With ``threshold_at`` (the precision threshold at a point), the last solve is
    skipped when the coarse bounds already lie clearly on one side of the threshold: the label
    cannot change, and the value is still an upper bound within 2e-4 of the best margin.
    """
    weight = comp.weight
    m, d = weight.shape
    domain = domain.resolve(d)
    lower, upper, ball = solver_bounds(domain, d, np.inf)  # a bounded domain: no side is open

    def gaps(x):  # s_j(x) - s_p(x), own row excluded
        s = comp.scores(x)
        out = s - s[p]
        out[p] = -np.inf
        return out

    k0 = min(m - 1, max(d, 100))
    g0 = gaps(x0)
    rows = np.argpartition(-g0, k0 - 1)[:k0]
    rows = rows[rows != p]
    in_working = np.zeros(m, dtype=bool)
    in_working[rows] = True
    precise = False  # rounds that still add rows need no digits; the last one is solved again, to 1e-6
    for _ in range(max_rounds):
        a = weight[rows] - weight[p]
        c = np.zeros(rows.size) if comp.bias is None else comp.bias[p] - comp.bias[rows]
        if ball:
            a, c = ball_rows(domain, a, c)
        # Margins of interest are ~u |s|, far below the exact step's 1e-9 tolerance; the bounds
        # below hold at any iterate, so an unconverged solve still gives a usable answer.
        # Bounds that agree to 1e-6 of the margin are enough: the label compares it with a threshold,
        # and the report quotes three digits. On balls tol = 1e-13 is rarely reached: whisper's
        # best-margin rounds each ran the 60-iteration cap without a relative stop.
        res = ipm.solve_chebyshev(a, c, lower, upper, cap, tol=1e-13, max_iter=60, unit_ball=ball,
                                  rel_tol=1e-6 if precise else _COARSE)
        total = float(res.duals.sum())
        weights = res.duals / total if total > 0 else None
        value = ipm.dual_bound(c, weights, weights @ a, lower, upper, ball) if weights is not None else np.inf
        x = from_ball(domain, res.x) if ball else domain.project(res.x)
        if not (np.isfinite(value) and np.isfinite(x).all()):
            return None
        over = gaps(x)
        extra = most_violated(over + value, in_working, p, max(d // 2, 50))
        if extra.size == 0:
            if not (precise or _clears(threshold_at, x, value, -float(over.max()))):
                precise = True
                continue
            gap = certify.check_witness(weight, comp.bias, p, x, domain, comp.norms)
            return BestMargin(float(value), x, float(gap))
        rows = np.concatenate([rows, extra])
        in_working[extra] = True
    return None


def _clears(threshold_at, x: np.ndarray, upper: float, lead: float) -> bool:
    """Whether bounds on a best margin already lie clearly on one side of the threshold at ``x``.

    ``upper`` is the dual bound; ``lead``, the lead at x over every row, a lower bound (both in
    float64: the label is a judgement on rounding, the verdict keeps its certified witness).
    """
    if threshold_at is None:
        return False
    limit = threshold_at(x)
    return upper < (1 - _SLACK) * limit or lead > (1 + _SLACK) * limit
