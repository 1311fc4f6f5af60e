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

The search runs in two phases. First Frank-Wolfe over every row, with an
exact line search (scores are linear along a segment): each step costs three
matrix-vector products and yields both bounds; on a 50k x 768 LM head it
brackets the maximum to 0.05% in about 2 s, where the restricted cone solves
alone were still at [1e-18, 1] after 34 s (their working set would need the
thousands of rows a flat softmax spreads its mass over). Then, if the bracket
is still wider than 0.01%, up to 5 s of restricted exponential-cone solves
(cvxpy, Clarabel) on the rows carrying the mass at the Frank-Wolfe point, each
started only while the stage's budget still holds what the last one took.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..layer import OutputLayer
from ..report.model import PRACTICAL, UNARGMAXABLE
from ..report.stats import StageStats
from .progress import Progress

if TYPE_CHECKING:
    from .state import AuditState

_LOG_TOL = 1e-4  # stop when the two bounds agree to this, in log-probability (0.01% of the probability)
_SHARE, _MIN_SECONDS = 0.1, 1.0  # the stage's budget: this share of the verdicts' time, at least this
_POLISH_SECONDS = 5.0  # the restricted exponential-cone solves, per token, when Frank-Wolfe stalls
_SOLVER_TOL = 1e-9
_INSET = 1e-12  # points on a ball's sphere are pulled in by this fraction of the radius


@dataclass(frozen=True)
class MaxProbability:
    """Bounds on max_x softmax(s(x))_p over the domain.

    Attributes
    ----------
    reached : float
        The probability at the returned point ``x`` (evaluated over every row).
    upper : float
        No point does better: the smaller of the concavity bound f(x) + max_y g.(y - x) over every
        row and the restricted optimum plus ten times the solver's tolerance.
    x : ndarray
        Where ``reached`` is attained.
    """

    reached: float
    upper: float
    x: np.ndarray


def log_probability(weight: np.ndarray, bias: np.ndarray | None, p: int, x: np.ndarray) -> float:
    """log softmax(W x + b)_p, evaluated stably in float64."""
    s = weight @ x
    return _log_softmax(s if bias is None else s + bias, p)


def _log_softmax(s: np.ndarray, p: int) -> float:
    top = float(s.max())
    return float(s[p] - top - np.log(np.exp(s - top).sum()))


def _evaluate(weight, b, p, domain, x):
    """At x: the scores, log-probability f, its gradient, and the concavity bound on max f,
    f + max_{y in D} g.(y - x) (every row, float64)."""
    s = weight @ x + b
    f = _log_softmax(s, p)
    probs = np.exp(s - float(s.max()))
    probs /= probs.sum()
    grad = weight[p] - probs @ weight
    return s, f, grad, probs, f + _linear_max(domain, grad) - float(grad @ x)


def run(state: AuditState) -> StageStats | None:
    """Stage 6, on bounded domains: brackets on the highest probability each unreachable token reaches.

    The budget is the option's, and at most a tenth of the time the verdicts took (1 s at
    least): the brackets are a report's extra, not its verdicts (a quarter, as before, made
    SmolLM2's audit 2.27 products instead of 1.82, for bounds on a few of its 15 tokens).
    Probabilities depend on the logits' scale, so they are bounded on the layer as given.
    """
    options = state.options
    if options.probability_seconds <= 0 or not bounded(state.domain):
        return None
    deadline = time.perf_counter() + min(options.probability_seconds, max(_MIN_SECONDS, _SHARE * state.elapsed()))
    flagged, done = bound_probabilities(state.results, state.original, state.domain, deadline, state.progress)
    return StageStats("probability", flagged, done)


def bounded(domain) -> bool:
    """Whether the maximum probability is defined (and computed) on this domain."""
    return domain.bounded


def max_probability(weight: np.ndarray, bias: np.ndarray | None, p: int, domain, x0: np.ndarray | None = None,
                    rows: int = 256, max_rounds: int = 8, deadline: float | None = None,
                    seed_rows: np.ndarray | None = None, fw_steps: int = 100) -> MaxProbability | None:
    """Largest probability row ``p`` reaches on a bounded, resolved domain; None if not solved.

    ``x0`` is a starting point (e.g. the centre, or where the token came
    closest to winning); ``rows`` competitors start the working set and as
    many are added per round, besides ``seed_rows`` (e.g. a certificate's support: the rows
    that beat the token where it comes closest). ``deadline`` is a ``time.perf_counter()`` value;
    ``fw_steps`` caps the Frank-Wolfe phase.
    """
    m, d = weight.shape
    b = np.zeros(m) if bias is None else bias
    x = domain.centre() if x0 is None else np.asarray(x0, dtype=np.float64)
    # Every row first: Frank-Wolfe finds where the token does best and which rows carry the
    # softmax mass there, which the restricted solves below then polish.
    started = time.perf_counter()
    x, lower, upper = _frank_wolfe(weight, b, p, domain, x, deadline, fw_steps)
    # A restricted solve starts only where the budget still holds what the last one took, or, before the
    # first, four times the Frank-Wolfe phase and, in a process that has not imported cvxpy yet, a
    # second for that: cvxpy's set-up is not under the solver's time limit, and on layernorm_ball
    # 32768 x 512 one round took 7.2 s after a 1.8 s phase, 4.2 s past the deadline; on the 8192 x 256
    # heads a first round (the import 0.8 s of it) ran 0.8-1.1 s past a 1 s budget.
    needed = 4 * (time.perf_counter() - started) + (0.0 if "cvxpy" in sys.modules else 1.0)
    best = MaxProbability(float(np.exp(lower)), float(np.exp(upper)), x)
    if upper - lower <= _LOG_TOL:
        return best
    working = _top_rows(weight @ x + b, p, np.zeros(m, dtype=bool), rows)  # mass ranks as the scores do
    if seed_rows is not None:
        working[np.asarray(seed_rows, dtype=np.int64)] = True
    polish_end = time.perf_counter() + _POLISH_SECONDS
    var = constraints = None
    for _ in range(max_rounds):
        now = time.perf_counter()
        if now > min(polish_end, deadline or np.inf) or (deadline is not None and deadline - now < needed):
            break
        # Imported only for a solve: the first import costs about 0.8 s, more than the whole stage's
        # budget on a small head (where Frank-Wolfe alone uses it up).
        import cvxpy as cp  # noqa: PLC0415
        if var is None:
            var = cp.Variable(d)
            constraints = domain.cvxpy_constraints(var)
        ids = np.flatnonzero(working)
        scores = weight[ids] @ var + b[ids]
        objective = weight[p] @ var + b[p] - cp.log_sum_exp(scores)
        problem = cp.Problem(cp.Maximize(objective), constraints)
        # The solver gets what is left of the budget: one solve over a thousand 768-wide rows can
        # take minutes (measured 117 s on a 50k x 768 head), and the deadline is a promise.
        limit = {"time_limit": max(0.5, min(polish_end, deadline or np.inf) - time.perf_counter())}
        try:
            with warnings.catch_warnings():  # an inaccurate solve is handled below, not printed
                warnings.simplefilter("ignore")
                problem.solve(solver=cp.CLARABEL, tol_gap_abs=_SOLVER_TOL, tol_gap_rel=_SOLVER_TOL,
                              tol_feas=_SOLVER_TOL, **limit)
        except cp.error.SolverError:
            break
        needed = time.perf_counter() - now
        if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or var.value is None:
            break
        # The restricted optimum bounds the true one only up to the solver's tolerance: add it.
        restricted = float(problem.value) + 10 * _SOLVER_TOL if problem.status == cp.OPTIMAL else np.inf
        # The solver's point, pulled into the domain (solvers meet constraints only to a tolerance).
        x = domain.project(np.asarray(var.value, dtype=np.float64), inset=_INSET)
        _, reached, _, probs, bound = _evaluate(weight, b, p, domain, x)
        upper = min(restricted, bound)
        lower = max(reached, float(np.log(best.reached)))
        upper = min(upper, float(np.log(best.upper)))
        best = MaxProbability(float(np.exp(lower)), float(np.exp(upper)),
                              x if reached >= float(np.log(best.reached)) else best.x)
        if upper - lower <= _LOG_TOL:
            break
        extra = _top_rows(probs, p, working, rows)
        if not extra.any():
            break
        working |= extra
    return best


def _frank_wolfe(weight, b, p, domain, x, deadline, steps: int = 100):
    """Conditional gradient on f(x) = s_p(x) - logsumexp(s(x)) over every row, with an exact line
    search (scores are linear along a segment, so it costs one product). Returns
    (x, best f seen, smallest bound f(x) + max_y g.(y - x) seen): a bracket on max f."""
    lower, upper = -np.inf, 0.0
    for _ in range(steps):
        s, f, grad, _, bound = _evaluate(weight, b, p, domain, x)
        lower = max(lower, f)
        upper = min(upper, bound)
        if upper - lower <= _LOG_TOL or (deadline is not None and time.perf_counter() > deadline):
            break
        y = _linear_argmax(domain, grad)
        delta = (weight @ y + b) - s
        x = x + _line_search(s, delta, p) * (y - x)
    return x, lower, upper


def _line_search(s, delta, p, evaluations: int = 40) -> float:
    """argmax over [0, 1] of the concave phi(gamma) = (s + gamma delta)_p - logsumexp(s + gamma delta)."""
    return _argmax_on_unit_interval(lambda gamma: _log_softmax(s + gamma * delta, p), evaluations)


def _linear_argmax(domain, g: np.ndarray) -> np.ndarray:
    """A point of the domain maximising g.y (a ball's, pulled in so that rounding keeps it inside)."""
    return domain.linear_min(-g, inset=_INSET)[1]


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
    """max of g.y over the domain (the negation of min (-g).y is exact)."""
    return -domain.linear_min(-g)[0]


def _argmax_on_unit_interval(phi, evaluations: int) -> float:
    """Golden-section search for the maximiser of a concave (unimodal) phi on [0, 1]."""
    ratio = (5**0.5 - 1) / 2
    lo, hi = 0.0, 1.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = phi(a), phi(b)
    for _ in range(evaluations):
        if fa < fb:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = phi(b)
        else:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = phi(a)
    return (lo + hi) / 2


def bound_probabilities(results: dict, layer: OutputLayer, domain, deadline: float,
                        progress: Progress) -> tuple[int, int]:
    """Add max-probability bounds to unreachable tokens, in id order, until the deadline; returns how many
    tokens were unreachable and how many got bounds."""
    done = 0
    flagged = [i for i in sorted(results) if results[i].verdict in (UNARGMAXABLE, PRACTICAL)]
    progress.stage("highest probabilities (time budget)", len(flagged))
    for i in flagged:
        res = results[i]
        progress.advance(1)
        if time.perf_counter() > deadline:
            continue
        found = max_probability(layer.weight, layer.bias, i, domain, deadline=deadline, seed_rows=res.support)
        if found is not None:
            results[i] = replace(res, max_probability=found.reached, max_probability_upper=found.upper)
            done += 1
    return len(flagged), done
