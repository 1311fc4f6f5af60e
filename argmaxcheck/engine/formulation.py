"""How one token's question becomes a solver's rows: unit-normalised competitors and ball coordinates.

For token ``p`` the constraints are ``a_j.x + t <= c_j`` with ``a_j = (w_j - w_p) / ||w_j - w_p||`` and
``c_j = (b_p - b_j) / ||w_j - w_p||`` (the Chebyshev form: ``t`` is a distance). LP-family domains bound
``x`` itself; SOCP-family domains (balls) are solved in ball coordinates ``u`` with ``||u|| <= 1``.
"""

from __future__ import annotations

import numpy as np

from ._blas import matvec
from .competitors import Competitors


def unit_rows(comp: Competitors, p: int, idx: np.ndarray, a_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def most_violated(viol: np.ndarray, in_working: np.ndarray, p: int, per_round: int) -> np.ndarray:
    """Up to ``per_round`` rows outside the working set that the current point violates, worst first."""
    viol[in_working] = -np.inf
    viol[p] = -np.inf
    cand = np.flatnonzero(viol > 0)
    if cand.size > per_round:
        cand = cand[np.argpartition(-viol[cand], per_round - 1)[:per_round]]
    return cand
