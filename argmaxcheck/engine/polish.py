"""Witnesses for tokens the screen missed by a few rows: the smallest move of its best guess.

The screen's best point for a token often loses to a handful of rows only: a near-duplicate twin
(rows 1e-5 apart lead each other by 1e-5 of the logits' scale wherever the pair is on top), or a
rival or two at a point just short of the token's cell. Moving the point a little, in the span of
the token's differences with exactly those rows, is enough; the exact step would instead solve a
whole linear program (a d x d factorisation per iteration, 20 ms a token at d = 512).

For a block of tokens at once, from each token's guess ``x`` (``lead_j`` = row j's score minus the
token's there):

1. the rows that beat the token or come close (``lead_j > -reach``) form its small active set J;
2. the move ``u`` is the least-norm solution of ``(w_p - w_j) . u >= lead_j + eps`` over J, a
   quadratic program in |J| <= ``_MAX_ROWS`` unknowns solved through its dual by an active-set
   method on the Gram matrix of the differences (no d x d work);
3. one float32 product of every row with every moved point (a hint, never a proof) finds the
   rows the move let past, which join J, and step 2 is repeated from the same guess.

A point that beats every row is proven by :func:`certify.check_witnesses` (float64, with its
rounding bound) before anything is settled; tokens it does not prove stay open for the
stages after it. Nothing is decided here that the check did not prove.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..report.stats import StageStats
from . import certify
from .exact import ExactResult, settle_or_reopen

if TYPE_CHECKING:
    from .state import AuditState

_MAX_ROWS = 48  # rows of a token's active set; beyond it the token is no near miss
_FIRST_ROWS = 16  # rows closest to beating the token that start its active set
_ROUNDS = 4  # moves per token (each one float32 product for the block)
_REACH = 1e-4  # rows within this fraction of the logits' scale of beating the token start in J
# The margin asked of every active row, as a fraction of ||w_p - w_j|| ||x|| for its nearest row j: a
# twin 1e-5 away cannot be beaten by much more than that near x, and a rival far away can. A margin
# that clears the logits' precision spares the practical label's ascent: on whisper-base 1e-3 sent
# 110 moved tokens to it (5.8 s), 0.1 sent 61 (2.2 s), and settled as many (near_dup 8192 x 256:
# 1,446 of 1,470 instead of 1,470; PP-OCRv5: 922 instead of 894).
_EPS = 0.1
_SLACK32 = 1e-6  # rows this close to the token (fraction of the scale) in the float32 scores count as in the way
_BLOCK = 128
# A move past a ball's sphere is projected this far inside it (relative to the radius): a point on the
# sphere is refused by the witness check (its norm's rounding may put it outside), and a point's float32
# rounding moves it by up to 6e-8 of its norm. SmolLM2's polish proved 2 of 30 moved points on the sphere.
_INSET = 2e-7


def run(state: AuditState) -> StageStats | None:
    """Stage: argmaxable near misses of the screen proven by a small move of their best guess."""
    return _polish_open(state, "polish")


def run_seeded(state: AuditState) -> StageStats | None:
    """Stage: the same from the seeding's points, where it ran (balls).

    The seeding's few smoothed steps over every row cost 40 ms a token on whisper-base, and move
    the start far better than the screen's guess (116 of its 118 open tokens polished from them,
    65 from the screen's): the tokens polished first are not seeded at all.
    """
    if not state.seeded:
        return None
    return _polish_open(state, "polish_seeded")


def _polish_open(state: AuditState, name: str) -> StageStats | None:
    ids = state.open_ids()
    if not ids.size or state.guesses is None or state.options.exact_all:
        return None
    state.progress.stage("moving near misses into their cell", int(ids.size))
    points = state.guesses.at(ids)
    found = 0
    for first in range(0, ids.size, _BLOCK):
        part = ids[first:first + _BLOCK]
        # The guesses are points of the audit's domain (the screen's), and so are the moves.
        xs, gaps = polish(state.comp, state.position[part], state.domain, points[first:first + _BLOCK])
        for i, x, gap in zip(part.tolist(), xs, gaps, strict=True):
            if gap > 0:
                found += settle_or_reopen(state, i, ExactResult(witness=x, witness_gap=float(gap)), "polish")
        state.progress.advance(int(part.size))
    return StageStats(name, int(ids.size), found)


def polish(comp, positions: np.ndarray, domain, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moved points and their certified gaps (> 0: a proof) for the tokens at ``positions``."""
    positions = np.asarray(positions, dtype=np.int64)
    x0 = np.array(starts, dtype=np.float64, copy=True)
    size = x0.shape[0]
    weight, bias = comp.weight, comp.bias
    top_w = float(comp.norms.max())
    top_b = 0.0 if bias is None else float(np.abs(bias).max())
    norm0 = np.linalg.norm(x0, axis=1)
    scale = norm0 * top_w + top_b  # the logits' scale at each start
    scale = np.where(scale > 0, scale, 1.0)
    scores0 = certify.float32_scores(comp.weight32, comp.bias, x0)
    within = _ahead(positions, scores0, _REACH * scale, strict=True)
    scores0[positions, np.arange(size)] = -np.inf  # a token is never its own rival
    # Each token's rows closest to beating it (at most _FIRST_ROWS), among those within reach; a
    # column with many such rows is searched on its own (each column of the scores is contiguous).
    active = _rows_per_column(within, 4 * _FIRST_ROWS)
    first = min(_FIRST_ROWS, scores0.shape[0] - 1)
    for b in range(size):
        close = active[b]
        if close is None:
            close = np.argpartition(-scores0[:, b], first - 1)[:first]
            active[b] = np.sort(close[within[close, b]])
        elif close.size > first:
            active[b] = np.sort(close[np.argpartition(-scores0[close, b], first - 1)[:first]])
    del scores0, within
    xs = x0.copy()
    live = np.ones(size, dtype=bool)  # still moving
    ready = np.zeros(size, dtype=bool)  # moved to where the float32 scores see no row in the way
    final32 = np.empty((weight.shape[0], size), dtype=np.float32, order="F")  # those scores, for the check
    for _ in range(_ROUNDS):
        idx = np.flatnonzero(live)
        if idx.size == 0:
            break
        for b in idx:
            rows = active[b]
            if rows.size == 0:
                xs[b] = x0[b]
                continue
            diff = weight[positions[b]] - weight[rows]  # (k, d)
            # The leads of the active rows again in float64: a twin's lead (1e-5 of the scale) is
            # below float32's resolution of a logit.
            need = -(diff @ x0[b]) + _EPS * float(np.sqrt(np.einsum("kd,kd->k", diff, diff).min())) * norm0[b]
            if bias is not None:
                need -= bias[positions[b]] - bias[rows]
            u = _least_move(diff, need)
            xs[b] = x0[b] if u is None else x0[b] + u
            if u is None:
                live[b] = False
        xs[idx] = domain.project(xs[idx].T, inset=_INSET).T
        # At the points rounded to float32: those are claimed if they win.
        scores = certify.float32_scores(comp.weight32, comp.bias, xs[idx])
        way = _ahead(positions[idx], scores, _SLACK32 * scale[idx])
        for m, b in enumerate(idx):
            way[active[b], m] = False  # held at eps by the move: rounding, not new rows
        in_way = _rows_per_column(way, 2 * _MAX_ROWS)
        for m, b in enumerate(idx):
            if not live[b]:
                continue
            past = in_way[m]
            if past is not None and past.size == 0:
                live[b], ready[b] = False, True
                final32[:, b] = scores[:, m]
                continue
            room = _MAX_ROWS - active[b].size
            if past is None or room <= 0:
                live[b] = False  # too many rows in the way: no near miss
                continue
            if past.size > room:
                past = past[np.argpartition(-scores[past, m], room - 1)[:room]]
            active[b] = np.concatenate([active[b], past])
    gaps = np.full(size, -np.inf)
    if ready.any():
        # Checked at their float32 roundings from the last round's float32 scores, with float64 for
        # the rows those cannot separate (twins): a float64 product of every point was a third of the
        # stage (near_dup 32768 x 512). A point whose rounding loses (or leaves a ball) is checked as
        # it is, in float64.
        at = np.flatnonzero(ready)
        found, claimed = certify.check_witnesses_float32(weight, comp.weight32, bias, positions[at], xs[at],
                                                         domain, comp.norms, scores32=final32[:, at])
        proven = found > 0
        gaps[at[proven]], xs[at[proven]] = found[proven], claimed[proven]
        again = at[~proven]
        if again.size:
            gaps[again] = certify.check_witnesses(weight, bias, positions[again], xs[again], domain, comp.norms)
    return xs, gaps


def _rows_per_column(mask: np.ndarray, most: int) -> list[np.ndarray | None]:
    """For each column of an (n, B) mask, the rows where it holds (ascending), or None where it holds
    for more than ``most`` rows (no near miss: the caller gives up on it).

    Only the columns with few rows are read twice (one pass over the mask counts them): listing
    every row of the others cost box_bias 32768 x 512 a quarter of the stage, in sorts."""
    counts = np.count_nonzero(mask, axis=0)
    out: list[np.ndarray | None] = [None] * mask.shape[1]
    few = np.flatnonzero(counts <= most)
    if few.size:
        rows, cols = np.nonzero(mask[:, few])  # row-major: a linear scan
        order = np.argsort(cols, kind="stable")
        parts = np.split(rows[order].astype(np.int64), np.searchsorted(cols[order], np.arange(1, few.size)))
        for c, part in zip(few.tolist(), parts, strict=True):
            out[c] = part
    return out


def _ahead(positions, scores: np.ndarray, reach: np.ndarray, strict: bool = False) -> np.ndarray:
    """Which rows score within ``reach`` of each token or above it (an n x B mask, from
    :func:`certify.float32_scores`: hints, never a proof); the token's own row is not among them. No
    array of leads is made: at 262k rows a block's float32 scores are 134 MB, and the moved points'
    check keeps them."""
    cols = np.arange(positions.size)
    limit = scores[positions, cols].astype(np.float64) - reach
    mask = scores > limit[None, :] if strict else scores >= limit[None, :]
    mask[positions, cols] = False
    return mask


def _least_move(diff: np.ndarray, need: np.ndarray) -> np.ndarray | None:
    """The least-norm u with ``diff @ u >= need``, through the dual (``alpha >= 0``, ``u = diff.T alpha``).

    Active-set iterations on the Gram matrix ``diff diff^T`` (Lawson-Hanson's, for the dual's
    non-negative least squares form); None when its rows are (nearly) dependent on the active
    set, where no small move exists or the system says nothing reliable.
    """
    gram = diff @ diff.T
    k = need.size
    on = need > 0
    if not on.any():
        return np.zeros(diff.shape[1])
    alpha = np.zeros(k)
    for _ in range(3 * k):
        a = np.flatnonzero(on)
        g = gram[np.ix_(a, a)]
        try:
            sol = np.linalg.solve(g + 1e-13 * np.trace(g) / a.size * np.eye(a.size), need[a])
        except np.linalg.LinAlgError:
            return None
        if (sol < 0).any():  # drop the most negative and solve again
            on[a[np.argmin(sol)]] = False
            if not on.any():
                return None
            continue
        alpha[:] = 0.0
        alpha[a] = sol
        slack = gram @ alpha - need
        slack[on] = 0.0
        worst = int(np.argmin(slack))
        if slack[worst] >= -1e-12 * max(1.0, float(np.abs(need).max())):
            u = diff.T @ alpha
            # The ridge keeps a dependent set solvable but then misses its equations: no move.
            return u if (diff @ u >= need - 1e-6 * np.abs(need)).all() else None
        on[worst] = True
    return None
