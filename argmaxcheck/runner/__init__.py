"""Running audits at scale, above the engine: chunks, resume journals, Ray, sweeps over many models.

The engine (:func:`argmaxcheck.audit`) decides a set of tokens in one process
and does no I/O. This package only calls it, on chunks of tokens, and owns
everything around that: where chunks run (this process or a Ray cluster),
the journal that lets an interrupted run resume, merging chunk reports, and
sweeps that audit many sources into one comparison table. Keeping it out of
``engine/`` keeps the engine a pure function of its inputs, which is exactly
what makes chunks independent, retryable and resumable.

::

    sources/ -> runner/ (chunks -> engine.audit -> merge) -> report/
"""

from .chunks import DEFAULT_CHUNK_SIZE, audit_chunk, merge_reports, plan_chunks
from .executors import ClusterError, LocalExecutor, RayExecutor
from .journal import Journal, RunIdentity
from .sharded import audit_sharded
from .sweep import SweepResult, SweepRow, expand_sources, sweep

__all__ = ["DEFAULT_CHUNK_SIZE", "ClusterError", "Journal", "LocalExecutor", "RayExecutor", "RunIdentity",
           "SweepResult", "SweepRow", "audit_chunk", "audit_sharded", "expand_sources", "merge_reports",
           "plan_chunks", "sweep"]
