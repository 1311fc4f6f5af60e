"""Input domains: the sets of feature vectors over which a token must win.

Each domain is a frozen dataclass. ``resolve(dim)`` validates it against the
layer's dimension once, at the boundary, and returns a domain whose arrays
all have length ``dim``; the engine only ever sees resolved domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class Unbounded:
    """All of R^d."""

    kind: str = field(default="unbounded", init=False)

    def resolve(self, dim: int) -> Unbounded:
        return self

    def describe(self) -> dict:
        return {"kind": "unbounded"}


@dataclass(frozen=True, eq=False)
class Box:
    """Per-coordinate bounds ``lower <= x <= upper``; either side may be infinite.

    Parameters
    ----------
    lower, upper : float or array of shape (dim,)
        Scalars are broadcast. ``-inf`` / ``inf`` leave a side open, e.g.
        ``Box(0.0, np.inf)`` for ReLU features.
    """

    lower: np.ndarray | float = -1.0
    upper: np.ndarray | float = 1.0
    kind: str = field(default="box", init=False)

    @classmethod
    def symmetric(cls, bound: float) -> Box:
        """The box ``[-bound, bound]^d``."""
        return cls(-float(bound), float(bound))

    def resolve(self, dim: int) -> Box:
        lower = _as_vector(self.lower, dim, "box lower bound")
        upper = _as_vector(self.upper, dim, "box upper bound")
        if np.isnan(lower).any() or np.isnan(upper).any():
            raise InputError("box bounds contain NaN")
        if np.isposinf(lower).any() or np.isneginf(upper).any():
            raise InputError("box lower bound is +inf or upper bound is -inf somewhere: the box is empty")
        bad = np.flatnonzero(lower > upper)
        if bad.size:
            k = int(bad[0])
            raise InputError(f"box is empty: lower > upper at coordinate {k} ({lower[k]} > {upper[k]})")
        return Box(lower, upper)

    @property
    def bounded(self) -> bool:
        return bool(np.isfinite(self.lower).all() and np.isfinite(self.upper).all())

    def describe(self) -> dict:
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        return {"kind": "box", "lower": _summarise(lower), "upper": _summarise(upper)}


@dataclass(frozen=True, eq=False)
class Ball:
    """The Euclidean ball ``||x - center|| <= radius`` (center defaults to 0)."""

    radius: float = 1.0
    center: np.ndarray | float | None = None
    kind: str = field(default="ball", init=False)

    def resolve(self, dim: int) -> Ball:
        radius = float(self.radius)
        if not np.isfinite(radius) or radius <= 0:
            raise InputError(f"ball radius must be a finite number > 0, got {self.radius}")
        center = _as_vector(0.0 if self.center is None else self.center, dim, "ball center")
        if not np.isfinite(center).all():
            raise InputError("ball center contains non-finite values")
        return Ball(radius, center)

    def describe(self) -> dict:
        center = np.asarray(self.center if self.center is not None else 0.0)
        return {"kind": "ball", "radius": float(self.radius), "center": _summarise(center)}


Domain = Unbounded | Box | Ball


def _as_vector(value, dim: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(dim, float(arr))
    if arr.shape != (dim,):
        raise InputError(f"{what} has shape {arr.shape}, expected a scalar or ({dim},)")
    return arr.copy()


def _summarise(arr: np.ndarray) -> float | list[float]:
    """A scalar when every coordinate agrees (the common case), else the list."""
    flat = np.ravel(arr)
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return [float(v) for v in flat]
