"""The highest probability an unreachable token can ever get.

A token that never wins the argmax can still matter to sampling: its
probability ``softmax(s(x))_p`` may reach 0.4 somewhere, or never exceed
1e-9. On a bounded domain the largest log-probability

    max_x  s_p(x) - log sum_j exp(s_j(x))

is a concave maximisation (a linear function minus a log-sum-exp), solved
here with cvxpy's exponential cone (Clarabel). With tens of thousands of rows
the log-sum-exp is restricted to a working set of the rows that score highest
at the current point, grown by the rows that carry the most softmax mass at
the solver's point. Two bounds bracket the answer, both over *every* row:

* the exact log-probability at the solver's point, evaluated in float64, is a
  **lower bound**: that probability is reached;
* concavity gives an **upper bound** at any point x: f(y) <= f(x) + g.(y - x)
  for the gradient g of the full objective, so max_y f(y) <= f(x) +
  max_{y in D} g.(y - x) (the Frank-Wolfe gap, closed-form on a ball or box).
  Leaving rows out of the log-sum-exp only raises the objective, so the
  restricted optimum bounds it too (up to the solver's tolerance of 1e-9);
  the smaller of the two is reported.

Both are reported. On small vocabularies they agree to about 1e-6 in
log-probability. On LM heads whose softmax stays flat (mass spread over
thousands of rows) the working set would have to hold most of the vocabulary,
so the loop stops at its time limit and the bracket is what it proved.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np

from .domains import Ball, Box

_LOG_TOL = 1e-6  # stop when the two bounds agree to this, in log-probability
_SOLVER_TOL = 1e-9


@dataclass(frozen=True)
class MaxProbability:
    """Bounds on max_x softmax(s(x))_p over the domain.

    Attributes
    ----------
    reached : float
        The probability at the returned point ``x`` (evaluated over every row).
    upper : float
        The restricted problem's optimum: no point does better (up to the solver's tolerance).
    x : ndarray
        Where ``reached`` is attained.
    """

    reached: float
    upper: float
    x: np.ndarray


def log_probability(weight: np.ndarray, bias: np.ndarray | None, p: int, x: np.ndarray) -> float:
    """log softmax(W x + b)_p, evaluated stably in float64."""
    s = weight @ x
    if bias is not None:
        s = s + bias
    top = float(s.max())
    return float(s[p] - top - np.log(np.exp(s - top).sum()))


def bounded(domain) -> bool:
    """Whether the maximum probability is defined (and computed) on this domain."""
    return isinstance(domain, Ball) or (isinstance(domain, Box) and bool(
        np.isfinite(domain.lower).all() and np.isfinite(domain.upper).all()))


def max_probability(weight: np.ndarray, bias: np.ndarray | None, p: int, domain, x0: np.ndarray | None = None,
                    rows: int = 256, max_rounds: int = 8, deadline: float | None = None,
                    seed_rows: np.ndarray | None = None) -> MaxProbability | None:
    """Largest probability row ``p`` reaches on a bounded, resolved domain; None if not solved.

    ``x0`` is a starting point (e.g. the centre, or where the token came
    closest to winning); ``rows`` competitors start the working set and as
    many are added per round, besides ``seed_rows`` (e.g. a certificate's support: the rows
    that beat the token where it comes closest). ``deadline`` is a ``time.perf_counter()`` value.
    """
    import cvxpy as cp  # noqa: PLC0415 - heavy import, only needed here

    m, d = weight.shape
    b = np.zeros(m) if bias is None else bias
    x = _centre(domain, d) if x0 is None else np.asarray(x0, dtype=np.float64)
    working = _top_rows(weight @ x + b, p, np.zeros(m, dtype=bool), rows)
    if seed_rows is not None:
        working[np.asarray(seed_rows, dtype=np.int64)] = True
    var = cp.Variable(d)
    constraints = ([cp.norm(var - domain.center) <= domain.radius] if isinstance(domain, Ball)
                   else [var >= domain.lower, var <= domain.upper])
    best: MaxProbability | None = None
    for _ in range(max_rounds):
        if deadline is not None and time.perf_counter() > deadline:
            break
        ids = np.flatnonzero(working)
        scores = weight[ids] @ var + b[ids]
        objective = weight[p] @ var + b[p] - cp.log_sum_exp(scores)
        problem = cp.Problem(cp.Maximize(objective), constraints)
        try:
            with warnings.catch_warnings():  # an inaccurate solve is handled below, not printed
                warnings.simplefilter("ignore")
                problem.solve(solver=cp.CLARABEL, tol_gap_abs=_SOLVER_TOL, tol_gap_rel=_SOLVER_TOL,
                              tol_feas=_SOLVER_TOL)
        except cp.error.SolverError:
            break
        if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or var.value is None:
            break
        restricted = float(problem.value) if problem.status == cp.OPTIMAL else np.inf
        x = _into(domain, np.asarray(var.value, dtype=np.float64))
        s = weight @ x + b
        probs = np.exp(s - s.max())
        probs /= probs.sum()
        reached = float(np.log(probs[p]))
        grad = weight[p] - probs @ weight
        upper = min(restricted, reached + _linear_max(domain, grad) - float(grad @ x))
        lower = reached if best is None else max(reached, float(np.log(best.reached)))
        point = x if best is None or reached >= float(np.log(best.reached)) else best.x
        best = MaxProbability(float(np.exp(lower)), float(np.exp(min(upper, np.log(best.upper) if best else 0.0))),
                              point)
        if upper - lower <= _LOG_TOL:
            break
        extra = _top_rows(probs, p, working, rows)
        if not extra.any():
            break
        working |= extra
    return best


def _top_rows(scores: np.ndarray, p: int, taken: np.ndarray, count: int) -> np.ndarray:
    """Mask of the ``count`` highest-scoring rows not yet taken (row p always included)."""
    scores = scores.astype(np.float64, copy=True)
    scores[taken] = -np.inf
    mask = np.zeros(scores.size, dtype=bool)
    free = np.flatnonzero(np.isfinite(scores))
    if free.size:
        k = min(count, free.size)
        mask[free[np.argpartition(-scores[free], k - 1)[:k]]] = True
    mask[p] = not taken[p]
    return mask


def _linear_max(domain, g: np.ndarray) -> float:
    """max of g.y over the domain."""
    if isinstance(domain, Ball):
        return float(g @ domain.center) + domain.radius * float(np.linalg.norm(g))
    return float(np.sum(np.maximum(g * domain.lower, g * domain.upper)))


def _centre(domain, d: int) -> np.ndarray:
    if isinstance(domain, Ball):
        return domain.center.copy()
    return (domain.lower + domain.upper) / 2


def _into(domain, x: np.ndarray) -> np.ndarray:
    """The solver's point, pulled into the domain (solvers meet constraints only to a tolerance)."""
    if isinstance(domain, Ball):
        off = x - domain.center
        norm = float(np.linalg.norm(off))
        limit = domain.radius * (1 - 1e-12)
        return domain.center + off * (limit / norm) if norm > limit else x
    return np.clip(x, domain.lower, domain.upper)
