"""What the audit's stages share: the layer as they see it, the competitors, and the results so far.

Every stage is a function ``run(state) -> StageStats | None`` (None: the stage had nothing to do
and did not run). A stage reads the tokens still open (:meth:`AuditState.open_ids`), settles
some of them with a checked result, and returns its record. Tokens are named by their row id
everywhere; :attr:`AuditState.position` maps a row id to its row of the competitor matrix at the
one boundary where a stage hands rows to a solver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..domains import Domain
from ..layer import OutputLayer
from ..report.model import ARGMAXABLE, UNARGMAXABLE, UNDECIDED, TokenResult
from . import certify
from .competitors import Competitors
from .options import AuditOptions
from .progress import Progress
from .ties import RowGroups


@dataclass
class Guesses:
    """A start point per row id (the screen's best guesses, then the seeding's points), and how far
    short of winning the screen's guess fell: ``depth`` is the best rival's lead there over the
    logits' scale at that point (``-gap / (|x| max|w_j| + max|b_j|)``; 0 where the guess won)."""

    ids: np.ndarray  # sorted row ids
    points: np.ndarray  # (ids.size, d)
    depth: np.ndarray | None = None  # (ids.size,)

    def at(self, ids: np.ndarray) -> np.ndarray:
        return self.points[np.searchsorted(self.ids, ids)]

    def depth_at(self, ids: np.ndarray) -> np.ndarray | None:
        return None if self.depth is None else self.depth[np.searchsorted(self.ids, ids)]


@dataclass
class AuditState:
    """The audit in progress.

    Attributes
    ----------
    layer : OutputLayer
        The layer scaled by ``2**-exponent`` (max |w|, |b| in [0.5, 1)): what every stage solves.
    original : OutputLayer
        The layer as given (probabilities depend on the logits' scale and are bounded on it).
    exponent : int
    domain : Domain
        The resolved domain of the audit.
    solve_domain : Domain
        What the solvers work on: for a bias-free layer, the cone the domain generates (same
        verdicts, exact certificates on its open sides); else the domain itself.
    targets : list of int
        The audited row ids, sorted.
    groups : RowGroups
        Rows with identical weights, and the representative of each (the competitors).
    comp : Competitors
        One row per distinct weight row; ``position[i]`` is row i's competitor.
    results : dict of int to TokenResult
        The verdicts so far, each backed by a checked witness or certificate.
    guesses : Guesses or None
        Start points for the tokens the screen left (None when the screen did not run).
    backend
        Where the heavy products run (:mod:`.backend`), once a stage has made it.
    precision : str or None
        The dtype the practical label took the logits to be computed in, once it ran.
    """

    layer: OutputLayer
    original: OutputLayer
    exponent: int
    domain: Domain
    solve_domain: Domain
    targets: list[int]
    options: AuditOptions
    progress: Progress
    groups: RowGroups
    comp: Competitors
    position: np.ndarray
    started: float = field(default_factory=time.perf_counter)
    results: dict[int, TokenResult] = field(default_factory=dict)
    guesses: Guesses | None = None
    backend: object | None = None
    precision: str | None = None  # the dtype the practical label assumed the logits are computed in
    seeded: bool = False  # the guesses come from the seeding stage (the exact step need not seed again)

    @property
    def reps(self) -> np.ndarray:
        return self.groups.reps

    def open_ids(self) -> np.ndarray:
        """Audited row ids without a result yet, sorted."""
        return np.array([i for i in self.targets if i not in self.results], dtype=np.int64)

    def name(self, i: int) -> str | None:
        return self.layer.tokens[i] if self.layer.tokens else None

    def argmaxable(self, i: int, x: np.ndarray, gap: float, stage: str) -> None:
        """Settle row ``i`` with a witness whose gap the caller has checked to be > 0."""
        self.results[i] = TokenResult(i, self.name(i), ARGMAXABLE, float(gap), stage,
                                      witness=np.asarray(x, dtype=np.float64),
                                      check="witness gap > rounding-error bound")

    def unargmaxable(self, i: int, cert: certify.CertificateCheck, stage: str) -> None:
        """Settle row ``i`` with a checked certificate over competitor positions (mapped back to row ids)."""
        self.results[i] = TokenResult(i, self.name(i), UNARGMAXABLE, cert.bound, stage,
                                      support=self.reps[cert.support], weights=cert.weights, check=cert.method)

    def undecided(self, i: int, stage: str, reason: str) -> None:
        self.results[i] = TokenResult(i, self.name(i), UNDECIDED, np.nan, stage, reason=reason)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @staticmethod
    def competitors_of(layer: OutputLayer, groups: RowGroups, weight32: np.ndarray | None = None) -> Competitors:
        """The competitor matrix: the layer itself when no rows repeat (no copy), else one row per group."""
        if groups.reps.size == layer.num_classes:
            return Competitors(layer.weight, layer.bias, weight32)
        return Competitors(layer.weight[groups.reps], None if layer.bias is None else layer.bias[groups.reps],
                           weight32)

