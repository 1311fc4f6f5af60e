"""An audit run as chunks of tokens: locally, on Ray, and resumable from a journal.

:func:`audit_sharded` plans the chunks (:mod:`.chunks`), takes the finished
ones from the journal (:mod:`.journal`), runs the rest on an executor
(:mod:`.executors`), journals each as it finishes and merges them into one
:class:`~argmaxcheck.report.model.AuditReport`.

**What is identical to what.** A chunk's report depends only on the layer, the
domain, its ids and the options, so for a given chunk size a resumed run, a
Ray run and an uninterrupted local run give the same report apart from
``seconds`` and ``stats``: the same verdicts, margins, witnesses and
certificates, bit for bit (tested). Against an *unchunked* run
(:func:`argmaxcheck.audit` over every token at once) the verdicts agree, but
margins and witnesses may differ in their last bits, the batched phase's
certificates in their weights (a deep certificate is not unique; each is
checked), or come from another stage: the screen's blocked products, the
exact step's batched seeding and the batched phase's blocks see a different
set of tokens per call. One caveat for all of them: the
max-probability bracket has a time budget (split over the chunks in
proportion to their size), so which flagged tokens get one can depend on
the machine's speed; the brackets themselves do not.

**What is trusted.** Chunks from the journal or from Ray workers are checked
again here before the merge (:mod:`.recheck`): a token whose witness or
certificate does not check out is decided again on its own, with a note. Such
a token keeps its verdict (verdicts do not depend on the chunking) but may get other
margins and certificate weights than an uninterrupted run, since it is
audited alone. Chunks this process's engine decided are not checked twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from ..domains import Domain, Unbounded
from ..engine import AuditOptions
from ..engine.progress import as_progress
from ..layer import OutputLayer
from ..report.model import AuditReport
from ..report.stats import RunStats
from .chunks import DEFAULT_CHUNK_SIZE, chunk_options, merge_reports, plan_chunks
from .executors import LocalExecutor, RayExecutor
from .journal import Journal, Log, RunIdentity, stderr_note
from .recheck import recheck


def audit_sharded(weight, bias=None, domain: Domain | None = None, tokens: Sequence[int] | None = None, *,
                  names: Sequence[str] | None = None, options: AuditOptions | None = None,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, journal: str | os.PathLike | None = None,
                  executor: LocalExecutor | RayExecutor | None = None, progress=None,
                  log: Log = stderr_note) -> AuditReport:
    """Audit like :func:`argmaxcheck.audit`, in chunks of ``chunk_size`` tokens, optionally on Ray and resumable.

    Parameters
    ----------
    weight, bias, domain, tokens, names, options
        As for :func:`argmaxcheck.audit` (``weight`` may be an ``OutputLayer``).
    chunk_size : int
        Tokens per chunk (sorted ids, consecutive blocks). Part of the run's
        identity: a journal is only resumed with the same size.
    journal : path, optional
        A folder for the resume journal. Chunks already there are not
        decided again; each new chunk is recorded as soon as it finishes, so
        a run killed at any point loses at most the chunks in progress.
    executor : LocalExecutor or RayExecutor, optional
        Where chunks run (default: this process). A ``RayExecutor`` is
        connected here if needed; closing it is the caller's business.
    progress : callable, optional
        Called with the number of tokens newly decided (journaled chunks count at once).
    log : callable
        Receives one-line notes (a damaged chunk decided again, tokens whose proof did not check out
        and were decided again: :mod:`.recheck`); default: stderr.

    Returns
    -------
    AuditReport
        The merged report (see the module docstring for what it is identical
        to). ``seconds`` sums the chunks' audit times; ``stats.run`` says
        ``chunks``, ``chunk_size``, ``chunks_from_journal``, ``executor`` and
        ``wall_seconds`` (this call's wall-clock time).

    Raises
    ------
    InputError
        Bad input (as for ``audit``), a journal from another run or with an
        unreadable header, or (``ClusterError``) an unreachable Ray cluster.
    """
    started = time.perf_counter()
    layer = weight if isinstance(weight, OutputLayer) else OutputLayer.from_arrays(weight, bias, names)
    options = options or AuditOptions()
    domain = (domain if domain is not None else Unbounded()).resolve(layer.dim)
    chunks = plan_chunks(tokens, layer.num_classes, chunk_size)
    expected = np.concatenate(chunks)
    progress = as_progress(progress)
    book = None
    if journal is not None:
        book = Journal.open(journal, RunIdentity.of(layer, domain, chunks, options, chunk_size), chunks, layer, log,
                            domain)
    try:
        parts: dict[int, AuditReport] = {}
        if book is not None:
            progress.stage("chunks already in the journal", len(chunks))
            for k in range(len(chunks)):
                found = book.load(k)
                if found is not None:
                    parts[k] = found
                progress.advance(1)
        from_journal = len(parts)
        jobs = [(k, ids, chunk_options(options, ids, expected.size)) for k, ids in enumerate(chunks)
                if k not in parts]
        executor = executor or LocalExecutor()
        fresh: set[int] = set()
        for k, report in executor.run(layer, domain, jobs, progress):
            if book is not None:
                book.save(k, report)
            parts[k] = report
            fresh.add(k)
        # A journal is a cache and a worker another process: their proofs are checked again here. Chunks
        # this process's engine just decided were checked by it already.
        in_process = getattr(executor, "in_process", False)
        for k in sorted(parts):
            if k not in fresh or not in_process:
                ids = chunks[k]
                parts[k] = recheck(parts[k], layer, domain, chunk_options(options, ids, expected.size), log,
                                   f"chunk {k} (tokens {int(ids[0])}-{int(ids[-1])})"
                                   + (" from the journal" if k not in fresh else f" from {executor.name}"))
    finally:
        if book is not None:
            book.close()
    merged = merge_reports([parts[k] for k in sorted(parts)], expected)
    run = RunStats(len(chunks), int(chunk_size), from_journal, executor.name, round(time.perf_counter() - started, 4))
    return replace(merged, stats=replace(merged.stats, run=run))
