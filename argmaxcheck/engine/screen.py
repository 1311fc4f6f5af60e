"""Batched screening: certify most tokens argmaxable with guessed witnesses.

For each token a guess direction is tried (the token's own row, centred, in
whitened coordinates first: extremeness is invariant under linear maps, and
whitening makes a skewed cloud of rows round, so "pointing at the row" tends to
work). Guesses are scored for a block of tokens at once with one float32
matrix product against all competitors; a guess is accepted only when its gap
clears a rigorous bound on the product's rounding error, so acceptance is a
proof (see :mod:`certify`). Tokens no guess certifies go to the exact step,
with their best guess as its starting point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._rounding import U32, U64
from ..report.stats import StageStats
from . import certify
from .backend import NUMPY_OPS, NumpyBackend, make_backend, rivals_of, row_parts

if TYPE_CHECKING:
    from .state import AuditState

# Scales tried along a guessed direction when the bias makes scale matter.
_UNBOUNDED_SCALES = 2.0 ** np.arange(-3, 8)
_BALL_FRACTIONS = np.array([1.0, 0.5, 0.25, 0.1, 0.03, 0.01])


@dataclass
class ScreenResult:
    """Per screened token: certified gap lower bound (> 0 means proven) and best guess."""

    gap: np.ndarray  # (k,) float64
    witness: np.ndarray  # (k, d) float64: best point found (a proof where gap > 0)


def run(state: AuditState) -> StageStats | None:
    """Stage 2: guessed witnesses for every open token; the best guess of each is kept as its start point."""
    from .state import Guesses  # noqa: PLC0415 - state imports the stage modules' types

    pending = state.open_ids()
    if not pending.size or state.options.exact_all:
        return None
    comp = state.comp
    state.backend = make_backend(comp.weight32, state.options.device)
    found = screen(comp.weight32, comp.weight, comp.bias, state.position[pending], state.domain,
                   block_bytes=state.options.block_bytes, progress=state.progress, backend=state.backend)
    for i, gap, x in zip(pending.tolist(), found.gap, found.witness, strict=True):
        if gap > 0:
            state.argmaxable(i, x, gap, "screen")
    scale = np.sqrt(np.einsum("ij,ij->i", found.witness, found.witness)) * float(comp.norms.max())
    if comp.bias is not None:
        scale += float(np.abs(comp.bias).max())
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.where(found.gap > 0, 0.0, -found.gap / scale)
    state.guesses = Guesses(pending, found.witness, np.nan_to_num(depth, nan=np.inf, posinf=np.inf))
    return StageStats("screen", int(pending.size), int(np.count_nonzero(found.gap > 0)))


def screen(weight32: np.ndarray, weight64: np.ndarray, bias: np.ndarray | None, positions: np.ndarray,
           domain, *, block_bytes: int = 128 << 20,
           progress=None, backend=None) -> ScreenResult:
    """Try guessed witnesses for the tokens at ``positions`` (rows of the competitor matrix).

    ``weight32`` is the competitor matrix in float32 (used for speed),
    ``weight64`` the same rows in float64 (the truth the bounds refer to).
    ``progress`` (a :class:`~argmaxcheck.engine.progress.Progress`) hears of each pass and block.
    ``backend`` (:mod:`.backend`) runs the float32 products; default numpy.
    """
    m, d = weight64.shape
    k = positions.size
    norms = np.sqrt(np.einsum("ij,ij->i", weight64, weight64))
    max_norm = float(norms.max()) if m else 0.0
    cast_unit = 0.0 if _same_values(weight32, weight64) else U32
    gaps = np.full(k, -np.inf)
    witness = np.zeros((k, d))
    if k == 0:
        return ScreenResult(gaps, witness)
    backend = backend or NumpyBackend(weight32)
    # ``block`` columns of scores fit in ``block_bytes`` (the passes that hold a whole m x B product);
    # guesses go ``wide`` columns at a time where the backend reduces scores as it makes them, as long
    # as their points (about six float64 copies of a B x d array on the way) fit there too.
    block = int(max(1, min(k, block_bytes // (4 * max(m, 1)))))
    wide = int(min(k, backend.score_columns(block), max(block, block_bytes // (48 * d))))
    made: dict[str, list] = {}  # the guess functions, per place their arrays live (a GPU, or numpy after it)

    def guesses(ops) -> list[Callable[[np.ndarray], np.ndarray]]:
        if ops.name not in made:
            made.clear()  # a device's arrays are let go once the backend has moved to numpy
            made[ops.name] = _guess_directions(weight64, ops)
        return made[ops.name]

    def direction(ops, number: int, pos: np.ndarray) -> np.ndarray:
        # After a move to numpy the guesses are rebuilt there; if that gave fewer (a failed
        # decomposition), the last one stands in.
        made_here = guesses(ops)
        return made_here[min(number, len(made_here)) - 1](pos)

    count = len(backend.on_device(guesses, "whitening the rows"))
    ctx = _Context(weight32, bias, max_norm, cast_unit, domain, d, backend, block)
    source = np.ones(k, dtype=np.int64)  # the guess that gave each token's best point

    def try_guess(number: int, at: np.ndarray) -> None:
        """Guess ``number`` for the tokens ``at``, a block at a time; keep each one's best point."""
        for start in range(0, at.size, wide):
            idx = at[start:start + wide]
            dirs = backend.on_device(lambda ops, pos=positions[idx]: direction(ops, number, pos), "computing guesses")
            g, x = ctx.best_points(dirs, positions[idx])
            better = g > gaps[idx]
            gaps[idx[better]] = g[better]
            witness[idx[better]] = x[better]
            source[idx[better]] = number
            if progress is not None:
                progress.advance(int(idx.size))

    todo = np.arange(k)
    for number in range(1, count + 1):
        if progress is not None:
            progress.stage(f"screen, guess {number} of {count}", int(todo.size))
        try_guess(number, todo)
        todo = todo[gaps[todo] <= 0]
        if number == 1 and count > 1 and todo.size > 1:
            # A row within the products' rounding error of another hardly beats it by a certified
            # margin anywhere: on near_dup 32768 x 512 the other guesses proved none of its 5,898
            # twins, a third of the screen's time. Only twins that the first guess missed by about
            # that error are left there (their point is as good as a guess makes it); on whisper-base
            # the other guesses moved 4 twins that it missed by far to points the polish then proved.
            top_bias = 0.0 if bias is None else float(np.abs(bias).max())
            scale = np.linalg.norm(witness[todo], axis=1) * max_norm + top_bias
            close = (_twins_within(weight64, bias, positions[todo], ctx.kappa * max_norm, ctx.kappa * top_bias)
                     & (-gaps[todo] <= 4 * ctx.kappa * scale))
            todo = todo[~close]
        if todo.size == 0:
            break
    # The tokens no guess proved start the exact step from their best point: its scale is chosen
    # again from every row's scores (the bucket bounds chose it: swish_box 8192 x 256 sent 34 tokens
    # on to the per-token solver from those points, 7 from these), on the guess that found it.
    # Without an offset no scale is searched (the rays' gaps scale with their length): nothing to redo.
    if todo.size and ctx.has_offset:
        ctx.exact_scales = True
        if progress is not None:
            progress.stage("screen, exact scales for the tokens left", int(todo.size))
        for number in np.unique(source[todo]):
            try_guess(int(number), todo[source[todo] == number])
    return ScreenResult(gaps, witness)


def _twins_within(weight: np.ndarray, bias: np.ndarray | None, rows: np.ndarray, reach: float,
                  bias_reach: float, neighbours: int = 8) -> np.ndarray:
    """Which of ``rows`` have another of them whose weights lie within ``reach`` of theirs, and whose
    bias within ``bias_reach``.

    With ``reach`` the float32 products' error bound at x per unit of ``|x|``, such a pair's
    ``(w_p - w_j).x`` never clears it, and their biases barely differ: on near_dup's twins
    (1e-5 apart in weight and bias) the guesses after the first proved none. Only a hint (which
    tokens get more guesses); nothing is decided by it.

    Pairs are sought among the ``neighbours`` next rows in the order of one fixed random projection
    (a pair that close projects closer still), then measured: O(m d) where all pairs cost m^2 d.
    A pair it misses is only tried by more guesses, as before.
    """
    found = np.zeros(rows.size, dtype=bool)
    if rows.size < 2 or not reach > 0:
        return found
    w = weight[rows]
    direction = np.random.default_rng(_TWIN_SEED).normal(size=w.shape[1])
    order = np.argsort(w @ (direction / np.linalg.norm(direction)), kind="stable")
    for shift in range(1, min(neighbours, rows.size - 1) + 1):
        a, b = order[:-shift], order[shift:]
        close = np.einsum("ij,ij->i", w[a] - w[b], w[a] - w[b]) <= reach * reach
        if bias is not None:
            close &= np.abs(bias[rows[a]] - bias[rows[b]]) <= bias_reach
        found[a[close]] = found[b[close]] = True
    return found


def _same_values(weight32: np.ndarray, weight64: np.ndarray, rows: int = 4096) -> bool:
    """Whether the float32 copy holds the float64 weights exactly (a block of rows at a time: no
    float64 copy of the whole matrix, 4 GB at 128k x 4096)."""
    return all(np.array_equal(weight32[lo:lo + rows], weight64[lo:lo + rows])
               for lo in range(0, weight64.shape[0], rows))


def _inside_float32(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The float32 numbers nearest to each bound on its inner side (as float64), where they keep
    ``lower <= upper``; elsewhere the bounds as they are (points there are then not exact, and dropped)."""
    with np.errstate(over="ignore"):
        lo32 = lower.astype(np.float32)
        hi32 = upper.astype(np.float32)
    lo32 = np.where(lo32.astype(np.float64) < lower, np.nextafter(lo32, np.float32(np.inf)), lo32).astype(np.float64)
    hi32 = np.where(hi32.astype(np.float64) > upper, np.nextafter(hi32, np.float32(-np.inf)), hi32).astype(np.float64)
    # Beyond float32's range a finite bound would round to an infinite one: kept as it is.
    keep = (lo32 <= hi32) & (np.isfinite(lo32) | np.isinf(lower)) & (np.isfinite(hi32) | np.isinf(upper))
    return np.where(keep, lo32, lower), np.where(keep, hi32, upper)


def _guess_directions(weight: np.ndarray, ops=NUMPY_OPS) -> list[Callable[[np.ndarray], np.ndarray]]:
    """Guess functions: row positions -> (B, d) directions, best first.

    ``ops`` (:mod:`.backend`) does the whitening's float64 work (a d x d covariance over every
    row, its eigenvectors, and one B x d x d product a block): on a GPU at 128k x 4096 it is
    seconds of the screen's time, on the CPU minutes. Guesses are only hints, so where they run
    changes no proof.
    """
    mean = weight.mean(axis=0)
    simple = [lambda pos: weight[pos] - mean, lambda pos: weight[pos]]
    n, d = weight.shape
    try:
        if d <= n:
            evals, evecs = ops.eigh(ops.centred_gram(weight, mean) / max(n - 1, 1))
        else:  # d x d would be too big: the centred rows span at most n dimensions
            _, sing, vt = np.linalg.svd(weight - mean, full_matrices=False)
            evals, evecs = ops.asarray(sing**2 / max(n - 1, 1)), ops.asarray(vt.T)
    except np.linalg.LinAlgError:  # guesses only: the simpler ones still work
        return simple
    # Regularise so rank-deficient layers do not explode the inverse. Directions outside the
    # span of the centred rows do not occur: every centred row lies in it.
    floor = max(float(evals.max()), 1e-300) * 1e-6
    # The whitening map E diag(1/lambda) E^T as one d x d matrix: one product a block, not two.
    transform = (evecs / ops.where(evals > floor, evals, floor)) @ evecs.T
    mean_on = ops.asarray(mean)
    return [lambda pos: ops.numpy((ops.asarray(weight[pos]) - mean_on) @ transform), *simple]


class _Context:
    """Scores guesses on one domain; returns certified gap bounds and the points they hold at.

    Scores stay in float32 end to end (the max of float32 numbers is exact);
    every rounding on the way is covered by a per-column bound ``err`` on
    |computed score - exact score at the claimed point|, valid for every row.

    The domain's ``screen_search`` picks the search: ``"rays"`` (the domain is the ball of radius
    ``ray_reach`` around ``anchor()``, all of R^d when that is infinite) scores whole rays from the
    anchor with one product per direction; ``"clip"`` clips guesses into ``coordinate_bounds()``.
    """

    def __init__(self, weight32, bias, max_norm, cast_unit, domain, d, backend, block):
        self.weight32 = weight32
        self.block = block  # the most columns of one whole m x B product held at once
        self.product = backend.product  # weight32 @ points.T, on the CPU or a GPU
        self.rival_scores = backend.rival_scores  # the same, reduced to own score and best rival
        self.max_norm = max_norm
        # float32 product error, weights rounded to float32 (cast_unit), points rounded to
        # float32 (U32) and the float64 arithmetic that assembles a point (8 U64).
        self.kappa = certify.gamma(d + 2, U32) * (1 + cast_unit) + cast_unit + U32 + 8 * U64
        self.domain = domain
        self.d = d
        offset = np.zeros(weight32.shape[0]) if bias is None else bias.astype(np.float64)
        offset_err = 0.0
        self.rays = domain.screen_search == "rays"
        self.exact_scales = False  # scales picked from every row's scores, not from bucket bounds
        c = domain.anchor()
        if self.rays and c.any():  # rays from a point other than 0: fold W c into the offset
            # weight32 differs from the true weights by cast_unit: fold that into the bound.
            offset = offset + weight32.astype(np.float64) @ c
            offset_err = (certify.gamma(d + 2, U64) + cast_unit) * max_norm * float(np.linalg.norm(c))
            # The float32 weights may have lost entries to underflow (absolutely, up to ETA32 / 2 each).
            offset_err += d * certify.ETA32 * float(np.abs(c).max())
        self.has_offset = bias is not None or offset_err > 0
        self.offset = offset
        self.offset32 = offset.astype(np.float32)
        self.offset_max = float(np.abs(offset).max()) if offset.size else 0.0
        self._offset_order = None
        # |offset32 - offset| <= U32 |offset| on top of the offset's own error.
        # Casting the offset to float32 errs relatively, and absolutely where it underflows.
        self.offset_err = offset_err + U32 * self.offset_max + certify.ETA32
        if not self.rays:
            lo, hi = domain.coordinate_bounds()
            # Points are claimed as float32 numbers: clipped to a bound whose nearest float32 number
            # lies outside it (swish's minimum -0.2784645...), none survived the float32 round trip,
            # so every point that touched such a bound was thrown away (heads.py's swish_box: both
            # reaches proved nothing). Clipped to the nearest float32 numbers inside, they are exact.
            self.clip_lower, self.clip_upper = _inside_float32(lo, hi)
            widths = (hi - lo)[np.isfinite(hi - lo) & (hi > lo)]
            self.box_half = float(np.median(widths)) / 2 if widths.size else 1.0
            self.box_centre = c  # the point of the box nearest 0
            self.short_reach = [0, 0, 0]  # blocks, and columns the shorter reach was tried on and proved

    @property
    def offset_order(self) -> np.ndarray:
        """The rows sorted by offset (for :func:`_rival_gaps`' buckets), computed once."""
        if self._offset_order is None:
            self._offset_order = np.argsort(self.offset32, kind="stable")
        return self._offset_order

    def _gaps(self, points32: np.ndarray, own: np.ndarray, scale: np.ndarray | None = None,
              product: np.ndarray | None = None) -> np.ndarray:
        """Certified gap bounds of the B points ``scale * points`` (plus the offset), own rows ``own``.

        The backend reduces the float32 scores to each column's own score and best rival
        (on a GPU, where they are computed). ``product`` is ``weight32 @ points32.T`` when the
        caller has it already; it is then reduced here, and overwritten.
        """
        scale32 = None if scale is None else scale.astype(np.float32)
        offset32 = self.offset32 if self.has_offset else None
        if product is None:
            mine, best = self.rival_scores(points32, own, scale32, offset32)
        else:
            mine, best = rivals_of(product, own, scale32, offset32)
        return certify.gap_bounds(mine, best, self._error(points32, scale))

    def _error(self, points32: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
        """Per column, a bound on |computed score - exact score| of every row at ``scale * points``."""
        # Squares of float32 numbers are exact in float64; the sum's rounding (d U64, relative) is far
        # inside the 1.0001. einsum: np.linalg.norm's temporaries cost 37 ms a block of 1024 x 4096.
        pnorm = np.sqrt(np.einsum("ij,ij->i", points32, points32, dtype=np.float64)) * 1.0001
        mag = self.max_norm * pnorm  # bound on any |w_j . point|
        # Relative rounding, plus what underflow in the cast and the products can lose absolutely.
        err = self.kappa * mag + 4 * self.d * certify.ETA32 * (1.0 + pnorm)
        if scale is not None:
            mag = mag * np.abs(scale)
            err = err * np.abs(scale) + U32 * mag
        if self.has_offset:
            err = err + self.offset_err + U32 * (mag + self.offset_max)
        # A product by the scale, or the offset's addition, can underflow: up to ETA32 / 2 each, absolutely,
        # whatever the scale (a bias tiny next to the weights makes the scale, and so err, tiny).
        return err * 1.0001 + 2 * certify.ETA32

    def best_points(self, dirs: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        norms = np.sqrt(np.einsum("ij,ij->i", dirs, dirs))  # a guess: any rounding will do
        norms[norms == 0] = 1.0
        unit32 = (dirs / norms[:, None]).astype(np.float32)
        unit = unit32.astype(np.float64)
        dom = self.domain
        if not self.rays:
            return self._box(unit, own)
        if dom.origin_ball_radius is not None:
            return self._centred_ball(unit32, own, dom.origin_ball_radius)
        if not np.isfinite(dom.ray_reach) and not self.has_offset:  # R^d without bias: scale is irrelevant
            return self._gaps(unit32, own), unit
        return self._by_block(self._scaled, unit32, own)

    def _by_block(self, score, unit: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``score(unit, own)`` (gaps and points) on at most :attr:`block` columns at a time: ``score``
        holds a whole m x B product."""
        if unit.shape[0] <= self.block:
            return score(unit, own)
        parts = [score(unit[lo:lo + self.block], own[lo:lo + self.block])
                 for lo in range(0, unit.shape[0], self.block)]
        return np.concatenate([g for g, _ in parts]), np.concatenate([x for _, x in parts])

    def _centred_ball(self, unit32: np.ndarray, own: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
        """A ball around 0 (a folded LayerNorm or RMSNorm): the whole radius first, scored by one product
        at the claimed points themselves (no pass to rescale or re-score them); without a bias that is
        all (gaps scale with the radius), with one the smaller radii are tried for the columns left."""
        radius32 = np.float32(radius * (1 - 1e-9))
        if float(radius32) > radius * (1 - 1e-9):
            radius32 = np.nextafter(radius32, np.float32(0))
        pts32 = unit32 * radius32
        pts = pts32.astype(np.float64)
        gap = self._gaps(pts32, own)
        # |p| <= radius, rigorously: the ball about 0 of that radius is the domain.
        inside = np.einsum("ij,ij->i", pts, pts) * (1 + certify.gamma(pts.shape[1] + 2, U64)) <= radius**2
        gap[~inside] = -np.inf
        left = np.flatnonzero(gap <= 0)
        if self.has_offset and left.size:
            g, x = self._by_block(self._scaled, unit32[left], own[left])
            better = g > gap[left]
            gap[left[better]], pts[left[better]] = g[better], x[better]
        return gap, pts

    def _scaled(self, unit32: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Scale matters (a bias, or a ball): pick a scale per column with a float32 search over the
        unscaled scores, then certify only the chosen scale. Points lie on rays from the anchor."""
        unit = unit32.astype(np.float64)
        dom = self.domain
        g32 = self.product(unit32)
        reach = dom.ray_reach
        if not np.isfinite(reach):  # R^d: the bias sets the scale
            scales = self._spread(g32)[None, :] * _UNBOUNDED_SCALES[:, None]
        else:  # a ball: fractions of its radius
            scales = reach * (1 - 1e-9) * np.repeat(_BALL_FRACTIONS[:, None], unit.shape[0], axis=1)
        base = np.broadcast_to(dom.anchor(), unit.shape)
        # Scales rounded to float32 are the ones certified and claimed; round them down so
        # that points on a ball's sphere stay inside it.
        scales32 = scales.astype(np.float32)
        scales32 = np.where(scales32.astype(np.float64) > scales, np.nextafter(scales32, np.float32(0)), scales32)
        scales = scales32.astype(np.float64)
        n = unit.shape[0]
        # On a ball the first scale (the whole radius) settles most columns; the other scales are
        # then tried only where it did not win (measured: screen 4.6 -> 3.2 s for 3200 tokens of a
        # 50k x 768 LayerNorm head); on R^d with a bias most columns are still open: all scales at once.
        first = 1 if np.isfinite(reach) else scales.shape[0]
        approx = _rival_gaps(g32, own, scales32[:first], self.offset32, self.exact_scales, self.offset_order)
        best = approx.argmax(axis=0)
        best_gap = approx[best, np.arange(n)]
        best_scale = scales[best, np.arange(n)]
        left = np.flatnonzero(best_gap <= 0)
        if first < scales.shape[0] and left.size:
            part = g32 if left.size > n // 4 else np.ascontiguousarray(g32[:, left])
            at = np.arange(n) if part is g32 else left
            approx = _rival_gaps(part, own[at], scales32[first:, at], self.offset32, self.exact_scales,
                                 self.offset_order)
            best = approx.argmax(axis=0)
            gain = approx[best, np.arange(at.size)]
            better = gain > best_gap[at]
            best_gap[at[better]] = gain[better]
            best_scale[at[better]] = scales[first:, at][best, np.arange(at.size)][better]
        gap = self._gaps(unit32, own, best_scale, product=g32)  # g32 becomes the scores: one GEMM a block
        points = base + unit * best_scale[:, None]
        self._drop_outside(gap, points)
        return gap, points

    def _box(self, unit: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = self.clip_lower, self.clip_upper
        best_gap = np.full(unit.shape[0], -np.inf)
        best_pts = np.zeros_like(unit)
        cols = np.arange(unit.shape[0])
        for shorter, reach in enumerate((self.box_half * np.sqrt(self.d), self.box_half)):
            # The shorter reach only for the columns the longer one did not prove: a product fewer
            # for most of them (box_bias 32768 x 512: the screen was 3 products, 16.5 s). And only
            # while it proves some: on every box head measured it proved 1 column in all (box_bias,
            # swish_box 8192 x 256 and 32768 x 512, PP-OCRv4 and PP-OCRv5 on swish, ddddocr), and
            # cost a fifth of the screen (box_bias 32768 x 512: 7,170 columns, a fifth of a product).
            if shorter and not self._short_reach_pays():
                break
            gap, pts = self._clipped_gaps(self.box_centre + reach * unit[cols], own[cols])
            better = gap > best_gap[cols]
            if shorter:
                # The shorter reach keeps only the points that prove: its near misses lead by more than
                # the longer reach's but start the polish worse (PP-OCRv5 on swish: 383 instead of 568
                # near misses moved into their cells, 2,277 instead of 2,092 tokens to the exact step).
                better &= gap > 0
                self.short_reach[1] += int(cols.size)
                self.short_reach[2] += int(np.count_nonzero(gap[better] > 0))
            best_gap[cols[better]], best_pts[cols[better]] = gap[better], pts[better]
            cols = np.flatnonzero(best_gap <= 0)
            if cols.size == 0:
                break
        left = cols  # the columns neither reach proved
        if self.has_offset and left.size and np.isinf(upper - lower).any():
            gap, pts = self._by_block(self._open_sides, unit[left], own[left])
            better = gap > best_gap[left]
            best_gap[left[better]], best_pts[left[better]] = gap[better], pts[better]
        return best_gap, best_pts

    def _open_sides(self, unit: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A box open on some side, with a bias: the scale of a good point is set by the bias, not by
        the box. Scales are searched as on R^d (float32, clipping ignored), then the clipped point at
        the chosen scale is certified."""
        lower, upper = self.clip_lower, self.clip_upper
        # Along the direction's part that the open sides allow (the rest stays at the finite bound).
        free = np.where(np.isinf(upper), np.maximum(unit, 0.0), 0.0) + np.where(
            np.isinf(lower), np.minimum(unit, 0.0), 0.0)
        norms = np.linalg.norm(free, axis=1)
        free /= np.where(norms > 0, norms, 1.0)[:, None]
        free32 = free.astype(np.float32)
        g32 = self.product(free32)
        scale = self._best_scale(g32, own)
        if self.box_centre.any():
            return self._clipped_gaps(self.box_centre + scale[:, None] * free, own)
        # 0 is in the box and a free direction moves only along open sides, away from their
        # finite bound: scale * free is in the box as it is, and the product just made scores it
        # (a second product of the clipped points cost swish_box 32768 x 512 a fifth of its screen).
        scale = scale.astype(np.float32).astype(np.float64)  # float32 scale x float32 entries: exact
        pts = free32.astype(np.float64) * scale[:, None]
        gap = self._gaps(free32, own, scale, product=g32)
        self._drop_outside(gap, pts)
        return gap, pts

    def _drop_outside(self, gap: np.ndarray, points: np.ndarray) -> None:
        """Points must truly lie in the domain: a gap is no proof (-inf, in place) where rounding pushed
        the claimed point out, or where it overflowed."""
        gap[~self.domain.certainly_contains(points.T)] = -np.inf
        gap[~np.isfinite(points).all(axis=1)] = -np.inf

    def _clipped_gaps(self, points: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Certified gaps at ``points`` clipped into the box, and the points claimed: float32 numbers
        inside it (rounding must not leave it; a point that cannot be one gets gap -inf)."""
        lower, upper = self.clip_lower, self.clip_upper
        pts32 = np.clip(points, lower, upper).astype(np.float32)
        pts = np.clip(pts32.astype(np.float64), lower, upper)
        pts32 = pts.astype(np.float32)
        exact = np.all(pts32.astype(np.float64) == pts, axis=1)
        gap = self._gaps(pts32, own)
        gap[~exact] = -np.inf
        return gap, pts

    def _short_reach_pays(self) -> bool:
        """Whether the shorter reach is worth a product for this block: until it has been tried on
        ``_SHORT_REACH_TRIAL`` columns, while it proves at least 1 % of those it was tried on, and on
        every 8th block whatever it did (a head whose first rows are unlike the rest is not judged by
        them alone; on random rows with a bias it proves 10-15 % of what the longer reach left)."""
        self.short_reach[0] += 1
        _, tried, proved = self.short_reach
        return tried < _SHORT_REACH_TRIAL or 100 * proved >= tried or self.short_reach[0] % 8 == 0

    def _spread(self, g32: np.ndarray) -> np.ndarray:
        """Per column, the scale at which the products' range matches the bias's (finite in float32
        at every factor of ``_UNBOUNDED_SCALES``, 1 where the products do not vary)."""
        width = np.ptp(g32, axis=0).astype(np.float64)
        spread = np.ptp(self.offset) / np.where(width > 0, width, np.inf)
        return np.where(width > 0, np.minimum(spread, 1e30), 1.0)

    def _best_scale(self, g32: np.ndarray, own: np.ndarray) -> np.ndarray:
        """Per column, the scale of ``_UNBOUNDED_SCALES`` times the bias spread that wins by the most
        in float32 (a guess: nothing is certified here)."""
        spread = self._spread(g32)
        scales = spread[None, :] * _UNBOUNDED_SCALES[:, None]
        approx = _rival_gaps(g32, own, scales.astype(np.float32), self.offset32, self.exact_scales,
                             self.offset_order)
        best_scale = scales[approx.argmax(axis=0), np.arange(g32.shape[1])]
        return best_scale


def _rival_gaps(g32: np.ndarray, own: np.ndarray, scales32: np.ndarray, offset32: np.ndarray,
                exact: bool = False, order: np.ndarray | None = None) -> np.ndarray:
    """Per scale and column, a lower bound on the float32 gap ``s_own - max_{j != own} s_j`` of the
    scores ``scales32[k, c] * g32[:, c] + offset32``, within each bucket's spread of offsets of it
    (a guess, to pick a scale: nothing is certified here).

    Rows are put in buckets of similar offset; a bucket's scores at a positive scale ``s`` are at
    most ``s max_j g_j + max_j o_j`` over its rows, so one pass over the products (their maximum per
    bucket and column) serves every scale, where scoring every row cost a pass per scale (near_dup
    32768 x 512, 11 scales: 8.4 s of a 20 s screen). With ``exact``, the gaps over every row.
    ``order``, the rows sorted by offset, when the caller keeps it (one argsort per screen, not per block).
    """
    n, cols = g32.shape
    if exact or n < 8 * _BUCKET_ROWS or not (scales32 > 0).all():
        return _all_rival_gaps(g32, own, scales32, offset32)
    if order is None:
        order = np.argsort(offset32, kind="stable")
    at = np.arange(cols)
    mine = g32[own, at].copy()
    g32[own, at] = -np.inf  # a token is never its own rival; restored below
    try:
        top = np.stack([g32[order[lo:lo + _BUCKET_ROWS]].max(axis=0) for lo in range(0, n, _BUCKET_ROWS)])
    finally:
        g32[own, at] = mine
    offset_top = np.maximum.reduceat(offset32[order], np.arange(0, n, _BUCKET_ROWS))[:, None]
    rival = np.stack([(scale * top + offset_top).max(axis=0) for scale in scales32])
    out = scales32 * mine[None, :] + offset32[own][None, :]
    return out.astype(np.float64) - rival


_SHORT_REACH_TRIAL = 512  # columns a box's shorter reach is tried on before its yield decides (see _box)
_TWIN_SEED = 20261207  # the projection that orders rows in the search for twins (any fixed seed)
_BUCKET_ROWS = 256  # rows of similar offset whose largest product stands for them all at every scale


def _all_rival_gaps(g32: np.ndarray, own: np.ndarray, scales32: np.ndarray, offset32: np.ndarray) -> np.ndarray:
    """Per scale and column, the float32 gap ``s_own - max_{j != own} s_j`` of the scores
    ``scales32[k, c] * g32[:, c] + offset32``.

    The scores of every scale are made and reduced a few hundred rows at a time, while those rows
    are in the cache: scale by scale over the whole ``(n, B)`` matrix, the passes through memory
    cost ten times the product itself (PP-OCRv5, 11 scales: 11.5 s of a 12.9 s screen).
    """
    n, cols = g32.shape
    count = scales32.shape[0]
    rival = np.full((count, cols), -np.inf, dtype=np.float32)
    rows = max(16, (512 << 10) // (4 * max(cols, 1)))
    work = np.empty((rows, cols), dtype=np.float32)
    for lo, hi, here, at in row_parts(own, n, rows):
        chunk = g32[lo:hi]
        buf = work[:hi - lo]
        offset = offset32[lo:hi, None]
        for k in range(count):
            np.multiply(chunk, scales32[k], out=buf)
            buf += offset
            buf[at, here] = -np.inf
            np.maximum(rival[k], buf.max(axis=0), out=rival[k])
    mine = scales32 * g32[own, np.arange(cols)][None, :] + offset32[own][None, :]
    return mine.astype(np.float64) - rival
