"""Start points for the exact step on balls: a few smoothed max-min steps for a block of tokens at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..report.stats import StageStats
from .competitors import Competitors, row_distances
from .formulation import from_ball

if TYPE_CHECKING:
    from .state import AuditState


def run(state: AuditState) -> StageStats | None:
    """Stage: on balls, the open tokens' start points moved near where each does best (settles nothing)."""
    from .state import Guesses  # noqa: PLC0415 - state imports the stage modules' types

    ids = state.open_ids()
    if not ids.size or not should_seed(state.solve_domain, state.options.exact):
        return None
    state.progress.stage("seeding the exact step", int(ids.size))
    comp, domain = state.comp, state.solve_domain
    begin = state.guesses.at(ids) if state.guesses is not None and not state.options.exact_all \
        else np.broadcast_to(domain.centre(), (ids.size, comp.weight.shape[1]))
    points = seed_points(comp, state.position[ids], domain, begin, state.options.exact.seed_steps,
                         progress=state.progress.advance)
    depth = state.guesses.depth_at(ids) if state.guesses is not None else None
    state.guesses = Guesses(ids, points, depth)
    state.seeded = True
    return StageStats("seeding", int(ids.size), 0)


def should_seed(domain, options) -> bool:
    """Whether the exact step starts a token from :func:`seed_points` (balls, interior-point path)."""
    return (domain.solver_family == "socp" and options.seed_steps > 0 and options.interior_point
            and not options.full)


def seed_points(comp: Competitors, positions: np.ndarray, domain, starts: np.ndarray, steps: int,
                tau: float = 0.05, block: int = 64, progress=None) -> np.ndarray:
    """Points near where each token does best on the ball, from a few Frank-Wolfe steps on the
    smoothed max-min  -tau log sum_j exp(-r_j(x) / tau)  of the Chebyshev slacks r_j over *every*
    row (float32 products; slacks are linear along a segment, so the line search is one-dimensional
    over the rows' values at its two ends).

    Only the first working set is chosen from them (the rows nearest to binding there): measured
    on 20 under-trained tokens of a 50k x 768 LayerNorm head, constraint generation then needs 2.4
    rounds instead of 4. Tokens go ``block`` at a time, so each step is two matrix products
    rather than two matrix-vector products per token (the weights are read once per block).

    Returns one point per position, each inside the ball. ``progress`` is called with the
    number of tokens of each block done.
    """
    points = np.array(starts, dtype=np.float64, copy=True).reshape(len(positions), -1)
    points = domain.project(points.T).T  # one point per column there (a view: no copy either way)
    for first in range(0, len(positions), block):
        pos = np.asarray(positions[first:first + block], dtype=np.int64)
        points[first:first + pos.size] = _seed_block(comp, pos, domain, points[first:first + pos.size], steps, tau)
        if progress is not None:
            progress(int(pos.size))
    return points


def _seed_block(comp: Competitors, pos: np.ndarray, domain, x: np.ndarray, steps: int,
                tau: float) -> np.ndarray:
    w32, bias = comp.weight32, comp.bias
    cols = np.arange(pos.size)
    # 1 / ||w_j - w_p|| per (token, row); 0 for the token itself and for rows identical to it.
    inv = 1.0 / row_distances(comp, pos, comp.weight[pos] @ comp.weight.T)
    parked = inv == 0

    def slacks(points):
        s = (points.astype(np.float32) @ w32.T).astype(np.float64)
        if bias is not None:
            s += bias
        r = (s[cols, pos][:, None] - s) * inv
        r[parked] = 1e300  # never binding (finite, so differences along a segment stay 0)
        return r

    r = slacks(x)
    for _ in range(steps):
        q = np.exp(-(r - r.min(axis=1, keepdims=True)) / tau)
        q *= inv
        grad = comp.weight[pos] * q.sum(axis=1)[:, None] - (q.astype(np.float32) @ w32).astype(np.float64)
        size = np.linalg.norm(grad, axis=1)
        moving = np.isfinite(size) & (size > 0)
        if not moving.any():
            break
        y = x.copy()
        y[moving] = from_ball(domain, grad[moving] / size[moving, None])
        r_y = slacks(y)
        for k in np.flatnonzero(moving):
            step = _smoothed_line_search(r[k], r_y[k], tau)
            x[k] += step * (y[k] - x[k])
            r[k] += step * (r_y[k] - r[k])
    return x


def _smoothed_line_search(r: np.ndarray, r_y: np.ndarray, tau: float, evaluations: int = 6) -> float:
    """argmax over [0, 1] of the (concave) smoothed minimum phi(g) of r + g (r_y - r).

    Safeguarded Newton on phi' (phi' is the softmax average of the slopes, phi'' minus their
    variance over tau): a handful of passes where a golden-section search needs a dozen. The
    weights are computed in float32; the step only seeds the working set, nothing is proven by it.
    """
    live = (r < 1e299) | (r_y < 1e299)  # parked rows never bind
    base, delta = r[live], r_y[live] - r[live]
    if base.size == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    g = 0.0
    for _ in range(evaluations):
        v = base + g * delta
        w = np.exp(((float(v.min()) - v) / tau).astype(np.float32)).astype(np.float64)
        w /= w.sum()
        slope = float(w @ delta)
        curvature = -(float(w @ (delta * delta)) - slope * slope) / tau
        if slope >= 0:
            lo = g
        else:
            hi = g
        newton = g - slope / curvature if curvature < 0 else np.inf
        if abs(newton - g) < 1e-4:
            return min(max(newton, lo), hi)
        g = newton if lo < newton < hi else (lo + hi) / 2
    return (lo + hi) / 2
