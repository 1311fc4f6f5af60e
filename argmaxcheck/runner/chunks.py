"""Chunks of tokens: the unit that is audited, journaled and shipped to Ray, and how chunk reports merge.

``audit(layer, tokens=ids)`` audits a subset of rows against *every* row, so
a chunk needs nothing from any other chunk. The plan is deterministic (sorted
ids cut into consecutive blocks of ``chunk_size``), so a local chunked run, a
resumed run and a Ray run audit exactly the same chunks and merge the same
chunk reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..domains import Domain
from ..engine import AuditOptions, audit
from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import AuditReport
from ..report.stats import joined
from ..selection import check_ids

DEFAULT_CHUNK_SIZE = 4096


def plan_chunks(tokens: Sequence[int] | None, num_classes: int,
                chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[np.ndarray]:
    """The audited ids (sorted, without repeats) cut into consecutive blocks of ``chunk_size``."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"chunk size must be a whole number >= 1, got {chunk_size!r}")
    if tokens is None:
        ids = np.arange(num_classes, dtype=np.int64)
    else:
        ids = np.asarray(check_ids(tokens, num_classes), dtype=np.int64)
    return [ids[k:k + chunk_size] for k in range(0, ids.size, int(chunk_size))]


def chunk_options(options: AuditOptions, chunk: np.ndarray, total: int) -> AuditOptions:
    """The options one chunk runs with: the max-probability time budget split in proportion to its tokens.

    A budget per audit call would give an n-chunk run n times the time of an
    unchunked one; split this way the whole run has the same budget.
    """
    if options.probability_seconds <= 0:
        return options
    return replace(options, probability_seconds=options.probability_seconds * chunk.size / total)


def audit_chunk(layer: OutputLayer, domain: Domain, ids: np.ndarray, options: AuditOptions,
                progress=None) -> AuditReport:
    """Audit one chunk of rows against every row (the unit of work of every executor)."""
    return audit(layer, domain=domain, tokens=[int(i) for i in ids], options=options, progress=progress)


def merge_reports(parts: Sequence[AuditReport], expected: np.ndarray) -> AuditReport:
    """One report from chunk reports: tokens in id order, counts over all of them, timings combined.

    ``expected`` is every id the run was asked for; a token missing or present
    twice is a bug in the caller (a lost or doubly counted chunk), not bad input.

    ``seconds`` is the sum of the chunks' audit times: the work done, the same
    whether the chunks ran in one go, after a resume or in parallel (the
    wall-clock time of one invocation is in ``stats.run``, set by the caller).
    Every other field is the first chunk's, by :func:`dataclasses.replace`, so
    no field can be dropped: stage records merge with
    :meth:`~argmaxcheck.report.stats.AuditStats.merge`, the device fields keep
    each distinct value.
    """
    if not parts:
        raise ValueError("no chunk reports to merge")
    first = parts[0]
    for p in parts[1:]:
        if (p.num_classes, p.dim, p.has_bias, p.source_dtype) != (first.num_classes, first.dim, first.has_bias,
                                                                  first.source_dtype) or p.domain != first.domain:
            raise ValueError("chunk reports of different layers or domains cannot be merged")
    tokens = sorted((t for p in parts for t in p.tokens), key=lambda t: t.id)
    got = np.array([t.id for t in tokens], dtype=np.int64)
    if got.shape != expected.shape or not np.array_equal(got, expected):
        lost = np.setdiff1d(expected, got)
        twice = got[1:][got[1:] == got[:-1]]
        raise RuntimeError(f"merged chunks do not cover the audited tokens exactly once:"
                           f" {lost.size} missing, {twice.size} repeated, {np.setdiff1d(got, expected).size} extra")
    stats = first.stats
    for p in parts[1:]:
        stats = stats.merge(p.stats)
    return replace(first, seconds=float(sum(p.seconds for p in parts)), tokens=tokens, stats=stats,
                   device=_all_of(p.device for p in parts), device_note=_all_of(p.device_note for p in parts),
                   precision=_all_of(p.precision for p in parts))


def _all_of(values) -> str | None:
    merged = None
    for value in values:
        merged = joined(merged, value)
    return merged
