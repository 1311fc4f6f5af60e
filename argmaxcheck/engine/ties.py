"""Stage 1, identical rows: a row with another's exact weights loses everywhere or ties.

Rows with bit-identical weights are grouped first (every later stage works on one
representative per group, the best-biased). A row whose group has a row with a higher bias
is *dominated*; equal weights and bias are an exact *tie*. Either way the certificate is a
single competitor with weight 1, checked like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..layer import OutputLayer
from ..report.model import UNARGMAXABLE, TokenResult
from ..report.stats import StageStats
from . import certify
from ._fingerprint import row_groups

if TYPE_CHECKING:
    from .state import AuditState


@dataclass(frozen=True)
class RowGroups:
    """Rows split into representatives (one per distinct weight row, the best bias) and the rest.

    ``reps``: sorted ids of representatives; ``rep_of[i]``: the representative of row i's group;
    ``tie_partner[i]``: another row with identical weights *and* bias, for rows in such a tie.
    """

    reps: np.ndarray
    rep_of: np.ndarray
    tie_partner: dict[int, int]

    @classmethod
    def of(cls, layer: OutputLayer) -> RowGroups:
        return cls(*_group_identical_rows(layer))

    def positions(self, n: int) -> np.ndarray:
        """Each row id's row of the competitor matrix (-1 for rows represented by another)."""
        position = np.full(n, -1, dtype=np.int64)
        position[self.reps] = np.arange(self.reps.size)
        return position


def run(state: AuditState) -> StageStats | None:
    """Settle every audited row that repeats another's weights, with a one-row certificate."""
    groups = state.groups
    grouped = [i for i in state.targets if groups.rep_of[i] != i or i in groups.tie_partner]
    state.progress.stage("identical rows", len(grouped))
    for i in grouped:
        partner = groups.tie_partner.get(i)
        other = partner if partner is not None else int(groups.rep_of[i])
        check = certify.check_certificate(state.layer.weight, state.layer.bias, i, np.array([other]),
                                          np.array([1.0]), state.domain)
        stage = "tie" if partner is not None else "dominated"
        if check.ok:
            state.results[i] = TokenResult(i, state.name(i), UNARGMAXABLE, check.bound, stage,
                                           support=np.array([other]), weights=np.array([1.0]), tie_with=partner,
                                           check=check.method)
        else:  # cannot happen for exact duplicates; kept so a bug shows as undecided, not a guess
            state.undecided(i, stage, check.reason)
        state.progress.advance(1)
    if groups.reps.size == 1 and state.layer.bias is not None:
        # Every row shares one weight vector (without a bias they would all be ties, above): the
        # best-biased row wins at every point, by its smallest bias lead. No solver is needed.
        rep = int(groups.reps[0])
        if rep in state.targets and rep not in state.results:
            lead = float(state.layer.bias[rep] - np.delete(state.layer.bias, rep).max())
            state.argmaxable(rep, state.domain.anchor(), lead, "dominated")
    # Always a record, even with nothing settled: every audited token passes this stage once.
    return StageStats("ties", len(state.targets), sum(1 for i in state.targets if i in state.results))


def _group_identical_rows(layer: OutputLayer):
    """Split rows into representatives (one per distinct weight row, the best bias) and the rest.

    Returns (reps, rep_of, tie_partner): ``reps`` sorted ids of representatives;
    ``rep_of[i]`` the representative of row i's group; ``tie_partner[i]``
    another row with identical weights *and* bias, for rows in such a tie.
    """
    n = layer.weight.shape[0]
    group = row_groups(layer.weight)
    bias = layer.bias if layer.bias is not None else np.zeros(n)
    ids = np.arange(n)
    order = np.lexsort((ids, -bias, group))  # by group, best bias first, then lowest id
    first = np.ones(n, dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    rep_sorted = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    rep_of = np.empty(n, dtype=np.int64)
    rep_of[order] = order[rep_sorted]
    reps = np.sort(order[first])
    tie_partner: dict[int, int] = {}
    for i in np.flatnonzero(rep_of != ids):
        r = int(rep_of[i])
        if bias[i] == bias[r]:
            tie_partner[int(i)] = r
            tie_partner.setdefault(r, int(i))
    return reps, rep_of, tie_partner
