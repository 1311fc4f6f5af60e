"""Input domains: the sets of feature vectors over which a token must win.

Each domain is a frozen dataclass. ``resolve(dim)`` validates it against the
layer's dimension once, at the boundary, and returns a domain whose arrays
all have length ``dim`` (``Unbounded`` records ``dim``); the engine only ever
sees resolved domains.

The engine never tests a domain's type: it asks the domain (see
:class:`DomainOracle` for the whole list). The geometric questions are
``linear_min`` (a linear-minimisation oracle), ``contains`` /
``certainly_contains``, ``project``, ``centre`` / ``anchor`` and ``bounded``;
the certificate checks ask for rigorous lower bounds of linear functions
(``linear_min_bound``, ``linear_min_bound_rational``). Where the engine runs
genuinely different algorithms, two attributes name the family, each set in
one place per class:

``solver_family``
    ``"lp"``: the domain is the box ``coordinate_bounds()`` (infinite sides
    allowed), so the exact step is a linear program with column bounds.
    ``"socp"``: the domain is the Euclidean ball of radius ``ray_reach``
    around ``anchor()``, solved as a second-order cone program in ball
    coordinates ``x = anchor + ray_reach * u``, ``||u|| <= 1``.
``screen_search``
    ``"rays"``: the domain is the ball of radius ``ray_reach`` around
    ``anchor()`` (all of R^d when ``ray_reach`` is infinite), so the screen
    scores whole rays ``anchor + s u`` with one product per direction.
    ``"clip"``: the screen clips its guesses into ``coordinate_bounds()``.

A new domain implements these methods; one that fits neither solver family
(a polytope given by rows, an ellipsoid) needs a new family in the engine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal, Protocol

import numpy as np

from ._rounding import U64, gamma
from .errors import InputError


class DomainOracle(Protocol):
    """What the engine asks of a resolved domain D (implemented by :class:`Unbounded`, :class:`Box`, :class:`Ball`).

    Points and directions are float64 vectors of shape ``(d,)`` or batches of
    columns of shape ``(d, B)``.
    """

    kind: str
    solver_family: Literal["lp", "socp"]
    screen_search: Literal["rays", "clip"]

    def resolve(self, dim: int) -> DomainOracle: ...
    def describe(self) -> dict: ...
    @property
    def bounded(self) -> bool: ...  # D lies in some ball
    @property
    def whole_space(self) -> bool: ...  # D is all of R^d
    @property
    def ray_reach(self) -> float: ...  # largest r with ball(anchor(), r) inside D
    @property
    def origin_ball_radius(self) -> float | None: ...  # R when D = {||x|| <= R}, else None
    def linear_min(self, directions: np.ndarray, inset: float = 0.0) -> tuple[Any, np.ndarray]: ...
    def contains(self, x: np.ndarray, tol: float = 0.0) -> Any: ...
    def certainly_contains(self, x: np.ndarray) -> Any: ...  # in D despite the test's own rounding
    def project(self, x: np.ndarray, inset: float = 0.0) -> np.ndarray: ...
    def centre(self) -> np.ndarray: ...
    def anchor(self) -> np.ndarray: ...  # the fixed point searches start from
    def coordinate_bounds(self) -> tuple[np.ndarray, np.ndarray]: ...
    def open_coordinates(self) -> np.ndarray: ...  # coordinates along which D is unbounded
    def linear_min_bound(self, v: np.ndarray, v_err: np.ndarray, offset: float = 0.0,
                         offset_err: float = 0.0) -> tuple[float, np.ndarray]: ...
    def linear_min_bound_rational(self, v: Mapping[int, Fraction], offset: Fraction) -> Fraction | None: ...
    def cvxpy_constraints(self, var) -> list: ...
    def scale_free_cone(self) -> DomainOracle | None: ...
    def ray_room(self, x: np.ndarray) -> float: ...
    def margin_domain(self, has_bias: bool) -> DomainOracle | None: ...


@dataclass(frozen=True)
class Unbounded:
    """All of R^d.

    Parameters
    ----------
    dim : int, optional (keyword only)
        Set by :meth:`resolve`; not part of equality (``Unbounded() == Unbounded(dim=5)``).
    """

    kind: str = field(default="unbounded", init=False)
    dim: int | None = field(default=None, compare=False, kw_only=True)

    solver_family = "lp"
    screen_search = "rays"

    def resolve(self, dim: int) -> Unbounded:
        return self if self.dim == dim else Unbounded(dim=int(dim))

    def describe(self) -> dict:
        return {"kind": "unbounded"}

    def _dim(self) -> int:
        if self.dim is None:
            raise ValueError("Unbounded() has no dimension yet: call resolve(dim) first")
        return self.dim

    @property
    def bounded(self) -> bool:
        """False: R^d lies in no ball."""
        return False

    @property
    def whole_space(self) -> bool:
        """True: this is all of R^d."""
        return True

    @property
    def ray_reach(self) -> float:
        """``inf``: every ray from :meth:`anchor` (the origin) stays in R^d."""
        return np.inf

    @property
    def origin_ball_radius(self) -> None:
        """None: R^d is no ball of finite radius."""
        return None

    def linear_min(self, directions, inset: float = 0.0) -> tuple[Any, np.ndarray]:
        """Minimise linear functions over R^d.

        Parameters
        ----------
        directions : array of shape (d,) or (d, B)
            One direction ``c`` per column.
        inset : float
            Ignored (kept for a common signature; see :meth:`Ball.linear_min`).

        Returns
        -------
        values : float or array of shape (B,)
            ``min_x c.x``: 0 for a zero direction, ``-inf`` for any other.
        points : array of shape (d,) or (d, B)
            The origin for every column: the minimiser of a zero direction,
            and a finite point of R^d where the minimum is ``-inf``.
        """
        cols, vector = _columns(directions, self.dim)
        values = np.where(np.any(cols != 0, axis=0), -np.inf, 0.0)
        points = np.zeros_like(cols)
        return (float(values[0]), points[:, 0]) if vector else (values, points)

    def contains(self, x, tol: float = 0.0) -> Any:
        """Whether points lie in R^d: every coordinate finite (``tol`` changes nothing).

        Parameters
        ----------
        x : array of shape (d,) or (d, B)
        tol : float
            Absolute slack; irrelevant here.

        Returns
        -------
        bool, or bool array of shape (B,)
        """
        cols, vector = _columns(x, self.dim)
        inside = np.isfinite(cols).all(axis=0)
        return bool(inside[0]) if vector else inside

    def certainly_contains(self, x) -> Any:
        """Exact membership (no rounding is involved): every coordinate finite."""
        return self.contains(x)

    def project(self, x, inset: float = 0.0) -> np.ndarray:
        """The Euclidean projection onto R^d: ``x`` itself (a float64 copy)."""
        cols, vector = _columns(x, self.dim)
        return cols[:, 0].copy() if vector else cols.copy()

    def centre(self) -> np.ndarray:
        """The origin, a point inside R^d.

        Returns
        -------
        array of shape (d,)
            Zeros (needs a resolved domain).
        """
        return np.zeros(self._dim())

    def anchor(self) -> np.ndarray:
        """The point the engine starts from and casts rays from: the origin."""
        return np.zeros(self._dim())

    def coordinate_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-coordinate bounds: ``-inf`` and ``inf`` everywhere."""
        d = self._dim()
        return np.full(d, -np.inf), np.full(d, np.inf)

    def open_coordinates(self) -> np.ndarray:
        """Coordinates along which D is unbounded: all of them."""
        return np.ones(self._dim(), dtype=bool)

    def linear_min_bound(self, v, v_err, offset: float = 0.0, offset_err: float = 0.0) -> tuple[float, np.ndarray]:
        """See :meth:`Box.linear_min_bound` (here every side is open)."""
        d = np.asarray(v).size
        return _coordinate_min_bound(np.full(d, -np.inf), np.full(d, np.inf), v, v_err, offset, offset_err)

    def linear_min_bound_rational(self, v: Mapping[int, Fraction], offset: Fraction) -> Fraction | None:
        """See :meth:`Box.linear_min_bound_rational` (here every side is open)."""
        return _coordinate_min_rational(v, offset, lambda k: (-np.inf, np.inf))

    def cvxpy_constraints(self, var) -> list:
        """No constraints on a cvxpy variable."""
        return []

    def scale_free_cone(self) -> None:
        """None: R^d is a cone already (see :meth:`Box.scale_free_cone`)."""
        return None

    def ray_room(self, x) -> float:
        """``inf``: the whole ray ``t x, t >= 0`` lies in R^d."""
        return np.inf

    def margin_domain(self, has_bias: bool) -> Ball | None:
        """Where best margins are measured: for a bias-free layer (margins scale with |x|) the unit
        ball; with a bias, nowhere (None)."""
        return None if has_bias else Ball(1.0).resolve(self._dim())


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

    solver_family = "lp"
    screen_search = "clip"

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
        """Whether every side is finite."""
        return bool(np.isfinite(self.lower).all() and np.isfinite(self.upper).all())

    @property
    def whole_space(self) -> bool:
        """Whether every side is open (the box is all of R^d)."""
        return bool(np.isneginf(self.lower).all() and np.isposinf(self.upper).all())

    @property
    def ray_reach(self) -> float:
        """The largest r such that the ball of radius r around :meth:`anchor` lies in the box
        (0 when the anchor is on a face)."""
        point = self.anchor()
        with np.errstate(invalid="ignore"):
            room = np.minimum(point - self.lower, self.upper - point)
        return float(room.min()) if room.size else np.inf

    @property
    def origin_ball_radius(self) -> None:
        """None: a box is no Euclidean ball."""
        return None

    def linear_min(self, directions, inset: float = 0.0) -> tuple[Any, np.ndarray]:
        """Minimise linear functions over the box, one per column.

        Parameters
        ----------
        directions : array of shape (d,) or (d, B)
            One direction ``c`` per column.
        inset : float
            Ignored: a box's minimisers are its bounds, exact floats inside it.

        Returns
        -------
        values : float or array of shape (B,)
            ``min_x c.x = sum_k (c_k lower_k if c_k > 0, c_k upper_k if c_k < 0, 0 if c_k = 0)``;
            ``-inf`` where some ``c_k != 0`` points at an open side (a zero ``c_k`` on an open side
            contributes 0, not NaN).
        points : array of shape (d,) or (d, B)
            A minimiser per column: ``lower_k`` where ``c_k > 0``, ``upper_k`` where ``c_k < 0``,
            and ``lower_k`` where ``c_k = 0`` (so a bounded box always answers with a vertex, as
            Frank-Wolfe wants). Where that bound is infinite, the coordinate of :meth:`centre` is
            used instead, so every point is finite and in the box (it minimises the finite part;
            the value is then ``-inf``).
        """
        cols, vector = _columns(directions, self.lower.size)
        lo, hi, mid = self.lower[:, None], self.upper[:, None], self.centre()[:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            terms = np.where(cols > 0, cols * lo, np.where(cols < 0, cols * hi, 0.0))
        points = np.where(cols < 0, np.where(np.isfinite(hi), hi, mid), np.where(np.isfinite(lo), lo, mid))
        if vector:
            return float(np.sum(terms[:, 0])), points[:, 0]
        return terms.sum(axis=0), points

    def contains(self, x, tol: float = 0.0) -> Any:
        """Whether points lie in the box widened by ``tol`` on every side.

        Parameters
        ----------
        x : array of shape (d,) or (d, B)
        tol : float
            Absolute slack for rounding: ``lower - tol <= x <= upper + tol``.

        Returns
        -------
        bool, or bool array of shape (B,)
            NaN coordinates are never inside.
        """
        cols, vector = _columns(x, self.lower.size)
        inside = np.all((cols >= self.lower[:, None] - tol) & (cols <= self.upper[:, None] + tol), axis=0)
        return bool(inside[0]) if vector else inside

    def certainly_contains(self, x) -> Any:
        """Exact membership: comparisons of floats round nothing, so this is ``contains(x)``."""
        return self.contains(x)

    def project(self, x, inset: float = 0.0) -> np.ndarray:
        """The Euclidean projection onto the box: each coordinate clipped to its bounds.

        Parameters
        ----------
        x : array of shape (d,) or (d, B)
        inset : float
            Ignored: clipped points are exact floats inside the box.

        Returns
        -------
        array of the shape of ``x``
        """
        cols, vector = _columns(x, self.lower.size)
        if vector:
            return np.clip(cols[:, 0], self.lower, self.upper)
        return np.clip(cols, self.lower[:, None], self.upper[:, None])

    def centre(self) -> np.ndarray:
        """A point inside the box.

        Returns
        -------
        array of shape (d,)
            The midpoint of each coordinate whose two sides are finite, the
            finite side where one side is open, and 0 where both are.
        """
        lo, hi = np.asarray(self.lower, dtype=np.float64), np.asarray(self.upper, dtype=np.float64)
        fin_lo, fin_hi = np.isfinite(lo), np.isfinite(hi)
        with np.errstate(invalid="ignore", over="ignore"):
            mid = (lo + hi) / 2
            mid = np.where(np.isfinite(mid), mid, lo / 2 + hi / 2)  # bounds near the float64 limit
        return np.where(fin_lo & fin_hi, mid, np.where(fin_lo, lo, np.where(fin_hi, hi, 0.0)))

    def anchor(self) -> np.ndarray:
        """The point the engine starts from: the point of the box nearest the origin (the origin
        itself when the box contains it)."""
        return np.clip(np.zeros(np.size(self.lower)), self.lower, self.upper)

    def coordinate_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)``, the box's own arrays (do not modify them)."""
        return self.lower, self.upper

    def open_coordinates(self) -> np.ndarray:
        """Coordinates with an infinite side."""
        return ~(np.isfinite(self.lower) & np.isfinite(self.upper))

    def linear_min_bound(self, v, v_err, offset: float = 0.0, offset_err: float = 0.0) -> tuple[float, np.ndarray]:
        """A rigorous lower bound of ``min_{x in D} v'.x + offset'`` for every ``v'`` within
        ``v +- v_err`` and ``offset'`` within ``offset +- offset_err``, float64 rounding included.

        Parameters
        ----------
        v, v_err : arrays of shape (d,)
            Midpoint and radius (>= 0) of an interval vector.
        offset, offset_err : float
            Midpoint and radius of an interval constant.

        Returns
        -------
        bound : float
            The lower bound, valid when ``undecided`` is empty; otherwise it
            leaves out the undecided coordinates.
        undecided : bool array of shape (d,)
            Coordinates on an open side where the interval straddles the sign
            the minimum needs (``v_k >= 0`` for a lower side only, ``<= 0`` for
            an upper side only, exactly 0 for a coordinate open both ways):
            their sign must be proven exactly, or the minimum may be ``-inf``.
        """
        return _coordinate_min_bound(self.lower, self.upper, v, v_err, offset, offset_err)

    def linear_min_bound_rational(self, v: Mapping[int, Fraction], offset: Fraction) -> Fraction | None:
        """``min_{x in D} sum_k v_k x_k + offset`` in exact rationals over the coordinates ``k`` of
        ``v`` (the others are taken as 0); None when it is ``-inf``."""
        return _coordinate_min_rational(v, offset, lambda k: (float(self.lower[k]), float(self.upper[k])))

    def cvxpy_constraints(self, var) -> list:
        """``lower <= var <= upper`` for a cvxpy variable (infinite sides included as given)."""
        return [var >= self.lower, var <= self.upper]

    def scale_free_cone(self) -> Box | Unbounded | None:
        """For a bias-free layer, the cone with the same verdicts as the box, where it is simpler.

        Scores are linear, so x wins iff every positive multiple does: when 0 is in the box, the
        cone it generates gives the same verdicts, and its open sides admit exact certificates
        where the box only has a tie at 0. Returns R^d when 0 is interior, the cone of the faces
        through 0 when 0 is on the boundary, and None when 0 is outside or the box is a cone.
        """
        lo, hi = self.lower, self.upper
        if np.any(lo > 0) or np.any(hi < 0):
            return None  # 0 is not in the box
        if np.all(lo < 0) and np.all(hi > 0):
            return Unbounded(dim=lo.size)
        if np.all(np.isinf(lo) | (lo == 0)) and np.all(np.isinf(hi) | (hi == 0)):
            return None  # already a cone
        return Box(np.where(lo < 0, -np.inf, 0.0), np.where(hi > 0, np.inf, 0.0))

    def ray_room(self, x) -> float:
        """The largest ``t`` with ``t x`` in the box (the box contains 0); ``inf`` if the ray never leaves."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            room = np.where(x > 0, self.upper / x, np.where(x < 0, self.lower / x, np.inf))
        return float(np.min(room))

    def margin_domain(self, has_bias: bool) -> Box | None:
        """Where best margins are measured: the box itself when bounded, else nowhere (None)."""
        return self if self.bounded else None

    def describe(self) -> dict:
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        return {"kind": "box", "lower": _summarise(lower), "upper": _summarise(upper)}


@dataclass(frozen=True, eq=False)
class Ball:
    """The Euclidean ball ``||x - center|| <= radius`` (center defaults to 0)."""

    radius: float = 1.0
    center: np.ndarray | float | None = None
    kind: str = field(default="ball", init=False)

    solver_family = "socp"
    screen_search = "rays"

    def resolve(self, dim: int) -> Ball:
        radius = float(self.radius)
        if not np.isfinite(radius) or radius <= 0:
            raise InputError(f"ball radius must be a finite number > 0, got {self.radius}")
        center = _as_vector(0.0 if self.center is None else self.center, dim, "ball center")
        if not np.isfinite(center).all():
            raise InputError("ball center contains non-finite values")
        return Ball(radius, center)

    @property
    def bounded(self) -> bool:
        """True."""
        return True

    @property
    def whole_space(self) -> bool:
        """False."""
        return False

    @property
    def ray_reach(self) -> float:
        """The radius: the ball is the ball of this radius around :meth:`anchor`."""
        return float(self.radius)

    @property
    def origin_ball_radius(self) -> float | None:
        """The radius when the ball is centred at the origin, else None."""
        return None if self.center.any() else float(self.radius)

    def linear_min(self, directions, inset: float = 0.0) -> tuple[Any, np.ndarray]:
        """Minimise linear functions over the ball, one per column.

        Parameters
        ----------
        directions : array of shape (d,) or (d, B)
            One direction ``c`` per column.
        inset : float
            Return minimisers on the sphere of radius ``radius * (1 - inset)``
            instead, so that rounding keeps them inside (values are unaffected).

        Returns
        -------
        values : float or array of shape (B,)
            ``min_x c.x = c.center - radius ||c||``.
        points : array of shape (d,) or (d, B)
            ``center - radius (1 - inset) c / ||c||``; the centre for a zero direction.
        """
        cols, vector = _columns(directions, self.center.size)
        if vector:
            c = cols[:, 0]
            norm = float(np.linalg.norm(c))
            value = float(c @ self.center) - self.radius * norm
            point = self.center - (self.radius * (1 - inset) / norm) * c if norm > 0 else self.center.copy()
            return value, point
        norms = np.linalg.norm(cols, axis=0)
        values = cols.T @ self.center - self.radius * norms
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(norms > 0, self.radius * (1 - inset) / norms, 0.0)
        return values, self.center[:, None] - cols * step[None, :]

    def contains(self, x, tol: float = 0.0) -> Any:
        """Whether points lie in the ball widened by ``tol``: ``||x - center|| <= radius + tol``.

        Parameters
        ----------
        x : array of shape (d,) or (d, B)
        tol : float
            Absolute slack for rounding.

        Returns
        -------
        bool, or bool array of shape (B,)
            NaN coordinates are never inside.
        """
        cols, vector = _columns(x, self.center.size)
        inside = np.linalg.norm(cols - self.center[:, None], axis=0) <= self.radius + tol
        return bool(inside[0]) if vector else inside

    def certainly_contains(self, x) -> Any:
        """Whether points lie in the ball in exact arithmetic: ``||x - center||^2`` is computed in
        float64 and enlarged by its rounding-error bound before the comparison."""
        cols, vector = _columns(x, self.center.size)
        limit = self.radius**2
        g = gamma(cols.shape[0] + 2, U64)
        inside = np.zeros(cols.shape[1], dtype=bool)
        for j in range(cols.shape[1]):  # one dot product per point: the bound is for a k-term dot
            diff = cols[:, j] - self.center
            inside[j] = float(diff @ diff) * (1.0 + g) <= limit
        return bool(inside[0]) if vector else inside

    def project(self, x, inset: float = 0.0) -> np.ndarray:
        """The Euclidean projection onto the ball: radial, towards the centre.

        Parameters
        ----------
        x : array of shape (d,) or (d, B)
        inset : float
            Project onto the ball of radius ``radius * (1 - inset)`` instead,
            so that rounding keeps the result inside.

        Returns
        -------
        array of the shape of ``x``
            Points already inside are returned unchanged.
        """
        cols, vector = _columns(x, self.center.size)
        limit = self.radius * (1 - inset)
        if vector:
            point = cols[:, 0]
            off = point - self.center
            norm = float(np.linalg.norm(off))
            return self.center + off * (limit / norm) if norm > limit else point.copy()
        out = cols.copy(order="K")  # the caller's memory layout, so a transposed batch stays one
        off = cols - self.center[:, None]
        norms = np.linalg.norm(off, axis=0)
        outside = norms > limit
        out[:, outside] = self.center[:, None] + off[:, outside] * (limit / norms[None, outside])
        return out

    def centre(self) -> np.ndarray:
        """The centre of the ball (a copy).

        Returns
        -------
        array of shape (d,)
        """
        return self.center.copy()

    def anchor(self) -> np.ndarray:
        """The point the engine starts from and casts rays from: the centre."""
        return self.center.copy()

    def coordinate_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The smallest box around the ball: ``center -+ radius``."""
        return self.center - self.radius, self.center + self.radius

    def open_coordinates(self) -> np.ndarray:
        """Coordinates along which D is unbounded: none."""
        return np.zeros(self.center.size, dtype=bool)

    def linear_min_bound(self, v, v_err, offset: float = 0.0, offset_err: float = 0.0) -> tuple[float, np.ndarray]:
        """A rigorous lower bound of ``min_{x in D} v'.x + offset'`` (``= v'.center - radius ||v'||
        + offset'``) for every ``v'`` within ``v +- v_err`` and ``offset'`` within ``offset +-
        offset_err``, float64 rounding included; no coordinate is ever undecided."""
        v, v_err = np.asarray(v, dtype=np.float64), np.asarray(v_err, dtype=np.float64)
        d = v.size
        c = self.center
        norm_hi = _norm_no_underflow(np.abs(v) + v_err) * (1.0 + gamma(d + 2, U64))
        dot_hi = float(-(v @ c)) + float(v_err @ np.abs(c)) + gamma(d + 2, U64) * float(np.abs(v) @ np.abs(c))
        total = dot_hi - offset + offset_err + self.radius * norm_hi
        return -(total * (1.0 + 4 * U64) + 4 * U64 * abs(offset)), np.zeros(d, dtype=bool)

    def linear_min_bound_rational(self, v: Mapping[int, Fraction], offset: Fraction) -> Fraction:
        """A rational lower bound of ``min_{x in D} sum_k v_k x_k + offset`` (the coordinates not in
        ``v`` taken as 0): exact but for ``||v||``, which is bounded from above (sqrt is not rational)."""
        norm_sq = sum(val * val for val in v.values())
        dot = sum(val * Fraction(float(self.center[k])) for k, val in v.items())
        norm_hi = _sqrt_upper(norm_sq)
        return -(-dot - offset + Fraction(float(self.radius)) * norm_hi)

    def cvxpy_constraints(self, var) -> list:
        """``||var - center|| <= radius`` for a cvxpy variable."""
        import cvxpy as cp  # noqa: PLC0415 - heavy import, only needed here

        return [cp.norm(var - self.center) <= self.radius]

    def scale_free_cone(self) -> Unbounded | None:
        """For a bias-free layer, the cone with the same verdicts (see :meth:`Box.scale_free_cone`):
        R^d when 0 is inside the ball, else None."""
        return Unbounded(dim=self.center.size) if np.linalg.norm(self.center) < self.radius else None

    def ray_room(self, x) -> float:
        """A ``t`` such that ``s x`` is in the ball for every ``0 <= s <= t`` (the ball contains 0):
        ``(radius - ||center||) / ||x||``, exact for a ball around 0."""
        norm = float(np.linalg.norm(x))
        if norm == 0:
            return np.inf
        return (self.radius - float(np.linalg.norm(self.center))) / norm

    def margin_domain(self, has_bias: bool) -> Ball:
        """Where best margins are measured: the ball itself."""
        return self

    def describe(self) -> dict:
        center = np.asarray(self.center if self.center is not None else 0.0)
        return {"kind": "ball", "radius": float(self.radius), "center": _summarise(center)}


Domain = Unbounded | Box | Ball


def _norm_no_underflow(vec: np.ndarray) -> float:
    """||vec|| computed after scaling by a power of two (exact), so tiny entries do not underflow
    to a zero norm (``sqrt(x.x)`` does below about 1e-154, which would shrink an upper bound)."""
    top = float(np.max(vec, initial=0.0))
    if top == 0.0 or not np.isfinite(top):
        return top
    exponent = int(np.frexp(top)[1])
    return float(np.ldexp(np.sqrt(np.sum(np.ldexp(vec, -exponent) ** 2)), exponent))


def _sqrt_upper(value: Fraction) -> Fraction:
    """A rational upper bound on sqrt(value), within about 2^-60 relative, at any magnitude.

    sqrt(p / q) = sqrt(p q) / q; the integer square root, rounded up, bounds sqrt(p q 4^k) from
    above once p q is scaled to at least 128 bits (through a float, a tiny ``value`` underflowed
    to a zero bound).
    """
    if value <= 0:
        return Fraction(0)
    p, q = value.numerator, value.denominator
    shift = max(0, (128 - (p * q).bit_length() + 1) // 2)
    scaled = p * q << (2 * shift)
    root = math.isqrt(scaled)
    if root * root < scaled:
        root += 1
    return Fraction(root, q << shift)


def _columns(x, dim: int | None) -> tuple[np.ndarray, bool]:
    """``x`` as float64 columns of shape (d, B), and whether it was one vector."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim not in (1, 2):
        raise ValueError(f"expected a vector (d,) or columns (d, B), got shape {arr.shape}")
    if dim is not None and arr.shape[0] != dim:
        raise ValueError(f"expected {dim} coordinates, got shape {arr.shape}")
    return (arr[:, None], True) if arr.ndim == 1 else (arr, False)


def _coordinate_min_bound(lower, upper, v, v_err, offset, offset_err) -> tuple[float, np.ndarray]:
    """Lower bound of ``min v'.x + offset'`` over the box [lower, upper] (see :meth:`Box.linear_min_bound`)."""
    v, v_err = np.asarray(v, dtype=np.float64), np.asarray(v_err, dtype=np.float64)
    d = v.size
    lo_v, hi_v = v - v_err, v + v_err
    undecided = np.zeros(d, dtype=bool)
    # term_k = max over x_k in [lower, upper] and v_k in [lo_v, hi_v] of -v_k x_k
    terms = np.zeros(d)
    fin_lo, fin_hi = np.isfinite(lower), np.isfinite(upper)
    both = fin_lo & fin_hi
    with np.errstate(invalid="ignore"):
        cand = np.stack([-lo_v * lower, -hi_v * lower, -lo_v * upper, -hi_v * upper])
    terms[both] = cand[:, both].max(axis=0)
    # upper open (x_k -> +inf): need v_k >= 0; then the worst x_k is the lower side.
    only_lo = fin_lo & ~fin_hi
    ok = only_lo & (lo_v >= 0)
    terms[ok] = np.maximum(-lo_v[ok] * lower[ok], -hi_v[ok] * lower[ok])
    undecided |= only_lo & (lo_v < 0)
    # lower open (x_k -> -inf): need v_k <= 0.
    only_hi = ~fin_lo & fin_hi
    ok = only_hi & (hi_v <= 0)
    terms[ok] = np.maximum(-lo_v[ok] * upper[ok], -hi_v[ok] * upper[ok])
    undecided |= only_hi & (hi_v > 0)
    # fully open: v_k must be exactly 0.
    neither = ~fin_lo & ~fin_hi
    exact_zero = neither & (v == 0) & (v_err == 0)
    undecided |= neither & ~exact_zero
    total = float(terms[~undecided].sum()) - offset + offset_err
    # ``total`` bounds max -(v'.x + offset'); the minimum is its negation (exact).
    return -(total * (1.0 + gamma(d + 2, U64)) + gamma(d + 2, U64) * float(np.abs(terms).sum())), undecided


def _coordinate_min_rational(v: Mapping[int, Fraction], offset: Fraction, bounds) -> Fraction | None:
    """Exact ``min sum_k v_k x_k + offset`` over ``x_k`` in ``bounds(k)``; None when it is ``-inf``."""
    total = Fraction(offset)
    for k, val in v.items():
        if val == 0:
            continue
        lo, hi = bounds(k)
        side = lo if val > 0 else hi  # v_k x_k is smallest at the lower end when v_k > 0
        if not np.isfinite(side):
            return None
        total += val * Fraction(side)
    return total


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
