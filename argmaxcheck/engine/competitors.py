"""The rows every token competes against, shared by every stage that works token by token."""

from __future__ import annotations

import numpy as np

from ._blas import matvec, rows_times


class Competitors:
    """The rows every token competes against, with cached norms (shared by all tokens)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, weight32: np.ndarray | None = None):
        self.weight = weight
        self.bias = bias
        self._weight32 = weight32
        self.sq_norms = np.einsum("ij,ij->i", weight, weight)
        self.norms = np.sqrt(self.sq_norms)
        # Rows of the last proven certificate: tokens inside the hull tend to be surrounded
        # by the same rows, so they seed the next token's working set.
        self.recent_support = np.zeros(0, dtype=np.int64)
        self._fetched: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray | None]] = {}

    def scores(self, x: np.ndarray) -> np.ndarray:
        s = matvec(self.weight, x)
        return s if self.bias is None else s + self.bias

    def prefetch(self, positions: np.ndarray, starts: np.ndarray | None = None) -> None:
        """Compute, in one pass over the rows, what the next tokens' solves start with.

        For each position p: every row's product with row p (its distances to the others) and,
        with ``starts``, the scores at its start point. Each token would otherwise make two
        passes over every row of its own; batched, the rows are read once per block.
        Replaces the previous block.
        """
        positions = np.asarray(positions, dtype=np.int64)
        cols = [self.weight[positions].T] + ([np.asarray(starts, dtype=np.float64).T] if starts is not None else [])
        prod = rows_times(self.weight, np.hstack(cols))
        size = positions.size
        if starts is not None and self.bias is not None:
            prod[:, size:] += self.bias[:, None]
        self._fetched = {int(p): (prod[:, k], None if starts is None else starts[k],
                                  None if starts is None else prod[:, size + k])
                         for k, p in enumerate(positions)}

    def cross(self, p: int) -> np.ndarray:
        """Every row's product with row ``p`` (from :meth:`prefetch` when it was fetched)."""
        fetched = self._fetched.get(p)
        if fetched is not None:
            return fetched[0]
        return rows_times(self.weight, self.weight[p][:, None])[:, 0]

    def scores_from(self, p: int, x: np.ndarray) -> np.ndarray:
        """:meth:`scores` at token ``p``'s start point ``x``, from :meth:`prefetch` when it was fetched."""
        fetched = self._fetched.get(p)
        if fetched is not None and fetched[1] is not None and np.array_equal(fetched[1], x):
            return fetched[2]
        return self.scores(x)

    @property
    def weight32(self) -> np.ndarray:
        """A float32 copy for cheap approximate passes (hints only: nothing certified uses it)."""
        if self._weight32 is None:
            self._weight32 = self.weight.astype(np.float32)
        return self._weight32


def row_distances(comp: Competitors, pos: np.ndarray, cross: np.ndarray,
                  exclude: list[np.ndarray] | None = None) -> np.ndarray:
    """||w_j - w_p|| for each token p in ``pos`` (one row each) against every row j.

    Computed from the cached norms and ``cross = W[pos] @ W.T`` (a product instead of a
    subtraction per row), except where that formula cancels: |w_j|^2 - 2 w_j.w_p + |w_p|^2 loses
    everything when the rows are close compared to their length (rows near 1e4 a hair apart
    come out at distance 0 and would be dropped as duplicates). Those entries are recomputed by
    direct, underflow-safe subtraction. Infinite for p itself and for rows exactly identical to
    it (split off before as ties or dominated rows; guarded anyway), and for the rows in
    ``exclude[k]`` (one array per token: rows kept out of its problem, never measured).
    """
    scale = comp.sq_norms[None, :] + comp.sq_norms[pos, None]
    sq = comp.sq_norms[None, :] - 2 * cross + comp.sq_norms[pos, None]
    for k, rows in enumerate(exclude or ()):
        sq[k, rows] = np.inf
    # The formula's absolute error is a few ulps of |w_j|^2 + |w_p|^2 (plus the product's
    # rounding); below a generous multiple of that, the subtraction decides.
    suspect = sq <= 1e-6 * scale + 1e-300
    dist = np.sqrt(np.maximum(sq, 0.0))
    ks, js = np.nonzero(suspect)
    for first in range(0, ks.size, 4096):  # bounded memory however many rows are suspect
        k, j = ks[first:first + 4096], js[first:first + 4096]
        dist[k, j] = exact_distances(comp.weight[j] - comp.weight[pos[k]])
    dist[np.arange(pos.size), pos] = np.inf
    dist[dist == 0] = np.inf
    return dist


def exact_distances(diff: np.ndarray) -> np.ndarray:
    """Row norms of ``diff``, scaled so that neither squaring nor summing underflows or overflows."""
    top = np.abs(diff).max(axis=1)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(np.sum((diff / safe[:, None]) ** 2, axis=1))
