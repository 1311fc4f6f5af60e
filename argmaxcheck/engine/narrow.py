"""Narrow winners decided, not measured: is a token's best margin above or below the precision threshold?

An argmaxable token whose witness wins by less than the precision threshold tau (see
:mod:`argmaxcheck.engine.precision`) may still win clearly elsewhere in the domain. The label
"practically unreachable" needs only the side of tau its best margin

    m* = max_{x in D} s_i(x) - max_{j != i} s_j(x)

lies on, not m* itself. Blocks of such tokens are advanced together:

* a batched ascent on the smoothed margin ``s_i - T log sum_j exp(s_j / T)`` (a temperature T
  that falls with the steps, projected steps of adaptive length), one ``n x d x B`` product for the
  trial points and one for the softmax-weighted rows per step;
* every step's softmax weights ``lambda`` are dual weights: ``m* <= h_D(sum_j lambda_j (w_i - w_j))
  + sum_j lambda_j (b_i - b_j)``, with ``h_D`` the domain's support function, so the ascent
  also tightens an upper bound.

Both ends are then checked rigorously: the best point's gap with
:func:`certify.check_witness`, the best weights' bound with :func:`certify.best_gap_bound`
(float64 with rounding-error bounds). A checked gap >= tau at that point keeps the token
argmaxable, with the better witness; a checked bound below half of tau there labels it practically
unreachable (the threshold moves with the point: the margin of safety covers the distance between
the ascent's point and the optimum where the per-token solver measures it). The rest, the
stragglers, go to :func:`precision.best_margin` one at a time, as before.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import blas

from ..report.model import ARGMAXABLE, PRACTICAL, TokenResult
from ..report.stats import StageStats
from . import certify
from ._blas import rows_times
from .competitors import Competitors
from .precision import best_margin, margin_domain, threshold, thresholds, unit_roundoff
from .progress import Progress, as_progress

if TYPE_CHECKING:
    from .state import AuditState

STEPS = 40  # ascent steps per block
BLOCK = 64  # tokens advanced together (whisper-base, 47 tokens: 4.6 s in one block, 9.5 s in blocks of 32)
# A dual bound decides only when below this fraction of the threshold at the ascent's best point.
# With m* far below tau, that point may lie far from the per-token solver's optimum, and the
# threshold there differ (0.8x to 2.3x on whisper-base's byte tokens): tokens between half the
# threshold and the threshold go to the per-token solver instead.
_DUAL_FRACTION = 0.5
_FIRST_STEP = 0.02  # first step length, as a fraction of the domain's radius
_SUPPORT = 1e-15  # dual weights below this (of a softmax summing to 1) are dropped before the check


@dataclass
class Candidate:
    """What the ascent found for one token: its best point and its best dual weights (float64
    estimates; nothing here is trusted until :func:`decide_narrow` checks it)."""

    x: np.ndarray
    support: np.ndarray
    weights: np.ndarray
    lower: float  # estimated gap at x
    upper: float  # estimated dual bound of the weights


def on_the_sphere(x: np.ndarray, domain, bias) -> np.ndarray:
    """Where the precision threshold of a best margin is measured.

    Without a bias, on a ball around 0, every gap and every logit scales with |x|: the best
    margin is reached on the sphere, where the solver's point may not quite be. Its ray is
    what matters, so the threshold is taken where the ray meets the sphere (the solver's
    interior point would understate the logits, and so the threshold, by |x| / R).
    """
    norm = float(np.linalg.norm(x))
    radius = domain.origin_ball_radius
    if bias is not None or radius is None or norm == 0:
        return x
    return x * (radius / norm)


def run(state: AuditState) -> StageStats | None:
    """Stage 5, on bounded domains: argmaxable tokens whose best margin the logits cannot resolve
    (the rule in :mod:`.precision`), decided in blocks."""
    if not state.options.practical:
        return None
    state.precision = state.options.precision or state.layer.source_dtype
    return decide_narrow(state.results, state.comp, state.position, state.domain, unit_roundoff(state.precision),
                         state.progress)


def decide_narrow(results: dict, comp: Competitors, position, domain, unit: float,
                  progress: Progress | None = None, *, steps: int | None = None,
                  block: int | None = None) -> StageStats:
    """Relabel argmaxable tokens whose best margin is below the precision threshold (in place).

    Returns the stage's record: the tokens close enough to the threshold to be looked at, how many
    were relabelled, the seconds of the batched ascent, and the counts ``checked`` (tokens whose
    witness gap was below the threshold there), of which ``ascent_settled`` (a checked point
    clears it), ``dual_settled`` (a checked dual bound is below it) and ``stragglers`` (left to
    the per-token solver).
    """
    progress = as_progress(progress)
    steps = STEPS if steps is None else steps  # read at call time: tests set STEPS = 0 for the per-token path
    if block is None:  # about six float64 arrays of n x block live at once: keep them within ~256 MB
        block = int(max(1, min(BLOCK, (256 << 20) // (48 * comp.weight.shape[0]))))
    stats = {"checked": 0, "ascent_settled": 0, "dual_settled": 0, "stragglers": 0}
    parts: dict[str, float] = {}
    close: list[int] = []

    def record() -> StageStats:
        relabelled = sum(results[i].verdict == PRACTICAL for i in close)
        return StageStats("practical", len(close), relabelled, parts=parts, counts=stats)

    bounded = margin_domain(domain, comp.bias is not None)
    if bounded is None:
        return record()
    bounded = bounded.resolve(comp.weight.shape[1])

    def tau_at(x):
        return threshold(comp, on_the_sphere(x, bounded, comp.bias), unit)

    def taus_at(points: list[np.ndarray]) -> np.ndarray:
        """``tau_at`` for many points, one product per ``block`` of them (a pass over the rows a
        point cost whisper-base 117 passes of 7 ms)."""
        return thresholds(comp, np.column_stack([on_the_sphere(x, bounded, comp.bias) for x in points]),
                          unit, block)

    max_norm = float(comp.norms.max())
    max_bias = 0.0 if comp.bias is None else float(np.abs(comp.bias).max())
    # |s_j(x)| <= |x| max|w_j| + max|b_j| settles almost every token without a product.
    close = [i for i, res in results.items() if res.verdict == ARGMAXABLE
             and res.margin < 1.01 * unit * (math.sqrt(res.witness @ res.witness) * max_norm + max_bias)]
    progress.stage("best margins of narrow winners", len(close))  # the name a test and the CLI know
    taus = taus_at([results[i].witness for i in close]) if close else np.zeros(0)
    narrow = [i for i, tau in zip(close, taus, strict=True) if results[i].margin < tau]
    progress.advance(len(close))
    stats["checked"] = len(narrow)
    if not narrow:
        return record()

    progress.stage("narrow winners: batched ascent and dual bounds", len(narrow))
    stragglers = []
    t0 = time.perf_counter()
    for lo in range(0, len(narrow), block):
        ids = narrow[lo:lo + block]
        rows = np.array([int(position[i]) for i in ids], dtype=np.int64)
        starts = np.column_stack([results[i].witness for i in ids])
        found = _ascend(comp, rows, starts, bounded, unit, steps)
        # The ascent's points checked, and the thresholds at the points kept, a block at a time.
        tried = [b for b, cand in enumerate(found) if cand is not None]
        gaps = np.full(len(ids), -np.inf)
        if tried:
            gaps[tried] = certify.check_witnesses(comp.weight, comp.bias, rows[tried],
                                                  np.array([found[b].x for b in tried]), bounded, comp.norms)
        kept = [(found[b].x, gaps[b]) if found[b] is not None and gaps[b] > results[i].margin
                else (results[i].witness, results[i].margin) for b, i in enumerate(ids)]
        limits = taus_at([x for x, _ in kept])
        for i, p, cand, (x, lower), limit in zip(ids, rows, found, kept, limits, strict=True):
            res = results[i]
            upper = np.inf if cand is None else certify.best_gap_bound(comp.weight, comp.bias, int(p),
                                                                       cand.support, cand.weights, bounded)
            if lower >= limit:  # a checked point clears the threshold: the token wins clearly there
                stats["ascent_settled"] += 1
                results[i] = TokenResult(i, res.token, ARGMAXABLE, lower, res.stage, witness=x, check=res.check,
                                         threshold=limit, bracket_lower=lower,
                                         bracket_upper=upper if np.isfinite(upper) else np.nan)
            elif upper < _DUAL_FRACTION * limit:
                stats["dual_settled"] += 1
                results[i] = TokenResult(i, res.token, PRACTICAL, lower, res.stage, witness=x, check=res.check,
                                         best_margin=upper, threshold=limit, bracket_lower=lower,
                                         bracket_upper=upper)
            else:
                stragglers.append((i, int(p), x, lower, upper))
        progress.advance(len(ids))
    parts["ascent"] = time.perf_counter() - t0
    stats["stragglers"] = len(stragglers)

    progress.stage("narrow winners: best margins of the stragglers", len(stragglers))
    for i, p, x, lower, upper in stragglers:
        progress.advance(1)
        res = results[i]
        best = best_margin(comp, p, bounded, x, cap=max(1.0, 1e3 * tau_at(x)), threshold_at=tau_at)
        if best is None:  # unsolved: the token keeps its verdict, with the bracket found
            if lower > res.margin or np.isfinite(upper):
                results[i] = TokenResult(i, res.token, ARGMAXABLE, lower, res.stage, witness=x, check=res.check,
                                         threshold=tau_at(x), bracket_lower=lower,
                                         bracket_upper=upper if np.isfinite(upper) else np.nan)
            continue
        limit = tau_at(best.x)
        # best.value is an upper bound, loose where the solve stopped short (2x on a box seen): the
        # ascent's checked bound, when lower, is the better one.
        value = min(float(best.value), upper)
        if value < limit:
            xb, gap = (best.x, best.gap) if best.gap > 0 else (res.witness, res.margin)
            checked = upper < best.value  # decided by the checked bound: report it as a bracket
            results[i] = TokenResult(i, res.token, PRACTICAL, gap, res.stage, witness=xb, check=res.check,
                                     best_margin=value, threshold=limit,
                                     bracket_lower=max(gap, lower) if checked else np.nan,
                                     bracket_upper=upper if checked else np.nan)
    return record()


def _ascend(comp: Competitors, rows: np.ndarray, starts: np.ndarray, domain, unit: float,
            steps: int) -> list[Candidate | None]:
    """Smoothed projected ascent on the margins of the tokens ``rows`` from ``starts`` (d x B).

    Float64 estimates only. Each column stops once its estimates settle it (best point's gap
    above the threshold there, or best dual bound below it with the gap close enough).
    """
    weight, bias = comp.weight, comp.bias
    size = rows.size
    cols = np.arange(size)
    radius = _radius(domain)
    x = domain.project(np.asarray(starts, dtype=np.float64), inset=1e-12)
    if x.ndim == 1:
        x = x[:, None]
    scores = _scores(comp, x)
    eta = np.full(size, _FIRST_STEP)
    best_x = x.copy()
    best_lower = np.full(size, -np.inf)
    best_upper = np.full(size, np.inf)
    best_support: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * size
    best_weights: list[np.ndarray] = [np.zeros(0)] * size
    best_tau = np.full(size, np.inf)
    active = np.ones(size, dtype=bool)
    sphere = domain.origin_ball_radius is not None and bias is None
    for k in range(steps):
        act = np.flatnonzero(active)
        if act.size == 0:
            break
        s = scores[:, act]
        gaps, m = _gaps(s, rows[act], cols[:act.size])
        tau = unit * np.abs(s).max(axis=0)
        if sphere:
            tau = tau * (domain.origin_ball_radius / np.maximum(np.linalg.norm(x[:, act], axis=0), 1e-300))
        temp = np.maximum(0.5 * 0.7**k, 1e-6) * tau
        pi, f = _softmin(gaps, m, temp)
        # v = sum_j pi_j (w_p - w_j): the smoothed margin's gradient and the dual direction.
        v = weight[rows[act]].T - blas.dgemm(1.0, weight.T, np.asfortranarray(pi))
        beta = np.zeros(act.size) if bias is None else bias[rows[act]] - pi.T @ bias
        upper = -domain.linear_min(-v)[0] + beta
        for c, b in enumerate(act):
            if m[c] > best_lower[b]:
                best_lower[b], best_x[:, b], best_tau[b] = m[c], x[:, b], tau[c]
            if upper[c] < best_upper[b]:
                support = np.flatnonzero(pi[:, c] >= _SUPPORT)
                best_upper[b], best_support[b], best_weights[b] = upper[c], support, pi[support, c]
            if best_lower[b] >= best_tau[b] * (1 + 1e-9) or best_upper[b] < _DUAL_FRACTION * best_tau[b] * (1 - 1e-9):
                active[b] = False
        keep = active[act]
        if not keep.any():
            break
        act, v, f, temp = act[keep], v[:, keep], f[keep], temp[keep]
        norms = np.linalg.norm(v, axis=0)
        step = eta[act] * radius / np.maximum(norms, 1e-300)
        y = domain.project(x[:, act] + v * step, inset=1e-12)
        s_y = _scores(comp, y)
        gaps_y, m_y = _gaps(s_y.copy(), rows[act], cols[:act.size])
        _, f_y = _softmin(gaps_y, m_y, temp)
        better = f_y >= f
        for c, b in enumerate(act):
            if better[c]:
                x[:, b], scores[:, b] = y[:, c], s_y[:, c]
                eta[b] = min(eta[b] * 1.5, 1.0)
            else:
                eta[b] *= 0.5
            if m_y[c] > best_lower[b]:  # a trial point may be the best seen even when not accepted
                best_lower[b], best_x[:, b] = m_y[c], y[:, c]
                best_tau[b] = unit * float(np.abs(s_y[:, c]).max()) * (
                    domain.origin_ball_radius / max(float(np.linalg.norm(y[:, c])), 1e-300) if sphere else 1.0)
    out: list[Candidate | None] = []
    for b in range(size):
        if not np.isfinite(best_lower[b]) and not np.isfinite(best_upper[b]):
            out.append(None)
            continue
        out.append(Candidate(best_x[:, b].copy(), best_support[b], best_weights[b], float(best_lower[b]),
                             float(best_upper[b])))
    return out


def _scores(comp: Competitors, x: np.ndarray) -> np.ndarray:
    s = rows_times(comp.weight, x)
    if comp.bias is not None:
        s += comp.bias[:, None]
    return s


def _gaps(scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column's gaps ``s_p - s_j`` (own row +inf) and their minimum, the margin (in place)."""
    own = scores[rows, cols].copy()
    gaps = own[None, :] - scores
    gaps[rows, cols] = np.inf
    return gaps, gaps.min(axis=0)


def _softmin(gaps: np.ndarray, m: np.ndarray, temp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax weights of ``-gaps / temp`` per column and the smoothed margin ``-T log sum exp(-gap/T)``."""
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        e = np.exp(-(gaps - m[None, :]) / temp[None, :])
    e = np.where(np.isfinite(e), e, 0.0)
    total = e.sum(axis=0)
    return e / total[None, :], m - temp * np.log(total)


def _radius(domain) -> float:
    """A length scale for steps: the ball's radius, or half the box's diagonal."""
    if domain.origin_ball_radius is not None or getattr(domain, "kind", "") == "ball":
        return float(domain.ray_reach)
    lower, upper = domain.coordinate_bounds()
    return float(np.linalg.norm((upper - lower) / 2))
