"""What an audit did, stage by stage, as typed records: tokens in, tokens settled, seconds, fallbacks.

Each engine stage returns one :class:`StageStats`; the audit collects them in
an :class:`AuditStats` (where the products ran and the precision the practical
label used are fields of the report itself). Chunked, resumed and Ray runs merge the records of
their chunks with :meth:`StageStats.merge` and :meth:`AuditStats.merge`, one
function per record, so no field can be dropped on the way; a sharded run
adds a :class:`RunStats`.

The JSON report carries the records as a ``stages`` list and, for the scripts
that read it, the flat ``timings`` object of earlier versions, derived from the
same records by :meth:`AuditStats.timings`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np


def _summed(a: Mapping, b: Mapping) -> dict:
    return {k: a.get(k, 0) + b.get(k, 0) for k in dict.fromkeys([*a, *b])}


@dataclass(frozen=True)
class StageStats:
    """One stage of one audit.

    Attributes
    ----------
    name : str
        ``ties``, ``screen``, ``batched``, ``cluster``, ``polish``, ``seeding``, ``polish_seeded``,
        ``block_exact``, ``exact``, ``practical`` or ``probability``; ``recheck``
        for chunks from a journal or another process (their proofs checked again here; ``settled``
        counts the tokens decided again).
    tokens_in : int
        Tokens the stage was given.
    settled : int
        Tokens it decided (for ``practical``: relabelled; for ``probability``: bounded).
    seconds : float
    parts : mapping of str to float
        Seconds of the stage's named parts (``seeding``, ``support``, ``search``...).
    counts : mapping of str to int
        Named counts: tokens sent to each fallback solver (``highs``), tokens checked...
    token_seconds : tuple of float
        Per-token seconds of a per-token solver (the exact step), for medians over merged chunks.
    """

    name: str
    tokens_in: int = 0
    settled: int = 0
    seconds: float = 0.0
    parts: Mapping[str, float] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    token_seconds: tuple[float, ...] = ()

    def merge(self, other: StageStats) -> StageStats:
        """The same stage over two disjoint sets of tokens (two chunks)."""
        if other.name != self.name:
            raise ValueError(f"cannot merge stage {other.name!r} into {self.name!r}")
        return replace(self, tokens_in=self.tokens_in + other.tokens_in, settled=self.settled + other.settled,
                       seconds=self.seconds + other.seconds, parts=_summed(self.parts, other.parts),
                       counts=_summed(self.counts, other.counts),
                       token_seconds=self.token_seconds + other.token_seconds)

    def to_dict(self) -> dict:
        """The JSON record: per-token seconds become their median and maximum."""
        out = {"name": self.name, "tokens_in": self.tokens_in, "settled": self.settled,
               "seconds": round(self.seconds, 4)}
        if self.parts:
            out["parts"] = {k: round(float(v), 4) for k, v in self.parts.items()}
        if self.counts:
            out["counts"] = {k: int(v) for k, v in self.counts.items()}
        if self.token_seconds:
            out["median_token_seconds"] = round(float(np.median(self.token_seconds)), 5)
            out["max_token_seconds"] = round(float(np.max(self.token_seconds)), 5)
        return out

    def to_state(self) -> dict:
        """Everything, for a journal (``from_state`` reads it back)."""
        return {**asdict(self), "token_seconds": list(self.token_seconds)}

    @classmethod
    def from_state(cls, data: Mapping) -> StageStats:
        return cls(str(data["name"]), int(data["tokens_in"]), int(data["settled"]), float(data["seconds"]),
                   {str(k): float(v) for k, v in dict(data.get("parts", {})).items()},
                   {str(k): int(v) for k, v in dict(data.get("counts", {})).items()},
                   tuple(float(v) for v in data.get("token_seconds", ())))


@dataclass(frozen=True)
class RunStats:
    """How a chunked run went (:func:`argmaxcheck.runner.audit_sharded`)."""

    chunks: int
    chunk_size: int
    chunks_from_journal: int
    executor: str
    wall_seconds: float


@dataclass(frozen=True)
class AuditStats:
    """Every stage's record, in the order the stages ran, and how a chunked run went."""

    stages: tuple[StageStats, ...] = ()
    run: RunStats | None = None

    def stage(self, name: str) -> StageStats | None:
        return next((s for s in self.stages if s.name == name), None)

    def merge(self, other: AuditStats) -> AuditStats:
        """Two chunks' statistics: stages merged by name, in the order first seen."""
        merged = {s.name: s for s in self.stages}
        for s in other.stages:
            merged[s.name] = merged[s.name].merge(s) if s.name in merged else s
        return replace(self, stages=tuple(merged.values()))

    def to_list(self) -> list[dict]:
        return [s.to_dict() for s in self.stages]

    def timings(self) -> dict:
        """The flat ``timings`` object of schema 1.0, derived from the records (kept for scripts)."""
        out: dict = {}
        for s in self.stages:
            out[f"{s.name}_seconds"] = round(s.seconds, 4)
            # As in 1.0: the exact step counted the tokens it was given, the others what they settled.
            out[f"{s.name}_tokens"] = s.tokens_in if s.name == "exact" else s.settled
            out.update({f"{s.name}_{part}_seconds": round(float(v), 4) for part, v in s.parts.items()})
            out.update({f"{s.name}_{key}": int(v) for key, v in s.counts.items()})
            if s.token_seconds:
                out[f"{s.name}_median_seconds"] = round(float(np.median(s.token_seconds)), 5)
                out[f"{s.name}_max_seconds"] = round(float(np.max(s.token_seconds)), 5)
        if self.run is not None:
            out.update({f.name: getattr(self.run, f.name) for f in fields(self.run)})
        return out

    def to_state(self) -> list[dict]:
        """The stages (not the run, which belongs to the whole invocation), for a journal."""
        return [s.to_state() for s in self.stages]

    @classmethod
    def from_state(cls, stages) -> AuditStats:
        return cls(tuple(StageStats.from_state(s) for s in stages))


def joined(a: str | None, b: str | None) -> str | None:
    """Two chunks' value of a text field: one when they agree, each distinct value otherwise."""
    if a is None or b is None or a == b:
        return a if a is not None else b
    return ", ".join(dict.fromkeys([*a.split(", "), *b.split(", ")]))
