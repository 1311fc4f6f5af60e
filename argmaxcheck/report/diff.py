"""What changed between two audits of one vocabulary: a quantisation, a fine-tune, two training steps.

:func:`diff_reports` compares two :class:`~argmaxcheck.report.AuditReport`
objects row by row (the same row is the same token):

* **lost**: argmaxable in A, unargmaxable or practically unreachable in B
  (what a quantisation typically does to tokens near the hull's boundary);
* **gained**: the reverse;
* **changed**: every token whose verdict differs, undecided included, with both verdicts;
* **largest margin shifts**: the tokens whose margin moved most. Margins are
  compared as each report defines them (``MARGIN_DOC``): for argmaxable tokens
  the certified gap at that audit's witness, so a shift among clearly
  reachable tokens can partly reflect where the witness was found; signs and
  the shifts of flagged tokens are exact statements;
* **round trip changed**: tokens whose tokenizer round trip differs
  (:mod:`argmaxcheck.sources.roundtrip`). A quantisation cannot change it (same
  tokenizer); a swapped or edited tokenizer can. Empty unless both sides have a tokenizer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, AuditReport, TokenResult

_UNREACHABLE = (UNARGMAXABLE, PRACTICAL)


@dataclass(frozen=True)
class TokenChange:
    """One token in both audits: its verdicts and margins before (A) and after (B)."""

    id: int
    token: str | None
    before: str
    after: str
    margin_before: float
    margin_after: float

    @property
    def shift(self) -> float:
        """Margin in B minus margin in A (NaN when either is undecided)."""
        return self.margin_after - self.margin_before

    def to_dict(self, b: AuditReport) -> dict:
        def number(x: float) -> float | None:
            return None if np.isnan(x) else float(x)

        return {"id": self.id, "token": self.token,
                **({"display": b.display[self.id]} if b.display else {}),
                **({"kind": b.token_kinds[self.id]} if self.id in b.token_kinds else {}),
                "before": self.before, "after": self.after,
                "margin_before": number(self.margin_before), "margin_after": number(self.margin_after),
                "shift": number(self.shift)}


@dataclass(eq=False)
class AuditDiff:
    """The differences between audit ``a`` and audit ``b`` of the same vocabulary.

    Attributes
    ----------
    a, b : AuditReport
    changed : list of TokenChange
        Every token audited in both whose verdict differs, by id.
    shifts : list of TokenChange
        The tokens with the largest absolute margin change, largest first.
    renamed : list of int
        Rows whose token string differs between the two (a changed tokenizer).
    round_trip_changed : list of int
        Rows whose round trip (true, false, special) differs; empty unless both reports have one.
    """

    a: AuditReport
    b: AuditReport
    changed: list[TokenChange]
    shifts: list[TokenChange]
    renamed: list[int] = field(default_factory=list)
    round_trip_changed: list[int] = field(default_factory=list)

    @property
    def lost(self) -> list[TokenChange]:
        """Tokens argmaxable in A that B makes unreachable."""
        return [c for c in self.changed if c.before == ARGMAXABLE and c.after in _UNREACHABLE]

    @property
    def gained(self) -> list[TokenChange]:
        """Tokens unreachable in A that B makes argmaxable."""
        return [c for c in self.changed if c.before in _UNREACHABLE and c.after == ARGMAXABLE]

    def transitions(self) -> dict[str, int]:
        """How many tokens moved between each pair of verdicts, as ``"before -> after"``."""
        counts = Counter(f"{c.before} -> {c.after}" for c in self.changed)
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        """The JSON form (``argmaxcheck diff --format json``)."""
        return {
            "a": {**self.a.summary(), **({"checkpoint": self.a.checkpoint} if self.a.checkpoint else {})},
            "b": {**self.b.summary(), **({"checkpoint": self.b.checkpoint} if self.b.checkpoint else {})},
            "lost": [c.to_dict(self.b) for c in self.lost],
            "gained": [c.to_dict(self.b) for c in self.gained],
            "changed": [c.to_dict(self.b) for c in self.changed],
            "transitions": self.transitions(),
            "largest_margin_shifts": [c.to_dict(self.b) for c in self.shifts],
            "renamed": self.renamed,
            "round_trip_changed": [self._round_trip_change(i) for i in self.round_trip_changed],
        }

    def _round_trip_change(self, i: int) -> dict:
        a, b = self.a.round_trip, self.b.round_trip
        return {"id": i, "token": self.b.names[i] if self.b.names else None,
                "before": a.status[i], "after": b.status[i],
                "ids_before": list(a.produced.get(i, ())), "ids_after": list(b.produced.get(i, ()))}


def diff_reports(a: AuditReport, b: AuditReport, top: int = 10) -> AuditDiff:
    """Compare two audits of the same vocabulary (same number of rows); tokens audited in only one are skipped.

    Raises
    ------
    InputError
        When the two layers have different numbers of rows.
    """
    if a.num_classes != b.num_classes:
        raise InputError(f"{a.source or 'A'} has {a.num_classes} rows but {b.source or 'B'} has {b.num_classes}:"
                         " diff compares two versions of the same vocabulary")
    if top < 0:
        raise InputError(f"--top must be >= 0, got {top}")
    after = {t.id: t for t in b.tokens}
    pairs = [(t, after[t.id]) for t in a.tokens if t.id in after]
    changes = [_change(x, y, b) for x, y in pairs]
    changed = [c for c in changes if c.before != c.after]
    movable = [c for c in changes if np.isfinite(c.shift)]
    shifts = sorted(movable, key=lambda c: (-abs(c.shift), c.id))[:top]
    renamed = [i for i in range(a.num_classes) if a.names and b.names and a.names[i] != b.names[i]]
    rt_changed = []
    if a.round_trip is not None and b.round_trip is not None:
        audited = sorted({t.id for t in a.tokens} & {t.id for t in b.tokens})
        rt_changed = [i for i in audited if a.round_trip.status[i] != b.round_trip.status[i]
                      or a.round_trip.produced.get(i) != b.round_trip.produced.get(i)]
    return AuditDiff(a, b, changed, shifts, renamed, rt_changed)


def _change(x: TokenResult, y: TokenResult, b: AuditReport) -> TokenChange:
    return TokenChange(x.id, y.token if b.names else x.token, x.verdict, y.verdict, x.margin, y.margin)
