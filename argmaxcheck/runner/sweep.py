"""Sweeps: audit many sources, one after another, into one comparison table.

Each source is anything ``argmaxcheck audit`` accepts (a file, a checkpoint
folder, an ONNX model, and whatever the source registry reads), audited on its
own domain (``domain=None``: what the model can really produce) or on the
domain given. A source that cannot be loaded or audited becomes a row with its
one-line error; the sweep goes on. Per-model JSON reports go to
``OUTPUT/models/``, the table to ``OUTPUT/sweep.{md,csv,json,html}``
(:mod:`argmaxcheck.report.sweep`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from ..domains import Domain, Unbounded
from ..engine import AuditOptions, audit
from ..errors import InputError
from ..inputside import attach_input_side
from ..outputs import plan_outputs
from ..report.escape import json_text
from ..report.gate import GatePolicy, evaluate
from ..report.sweep import SweepResult, SweepRow, write_sweep
from ..sources import SourceRequest, load_source
from .chunks import DEFAULT_CHUNK_SIZE
from .executors import LocalExecutor, RayExecutor
from .journal import Log, atomic_write, stderr_note
from .sharded import audit_sharded


def expand_sources(items: Sequence[str]) -> list[str]:
    """Sources as given, with each ``@FILE`` replaced by the sources it lists.

    A list file has one source per line; blank lines and lines starting with
    ``#`` are skipped. A relative path in it is taken relative to the list's
    folder when something exists there, else as written (a hub id, say).
    """
    out: list[str] = []
    for item in items:
        if not item.startswith("@"):
            out.append(item)
            continue
        listing = Path(item[1:])
        try:
            text = listing.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"sweep: cannot read the source list {listing} ({getattr(exc, 'strerror', None) or exc})"
                             ) from None
        for line in text.splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            beside = listing.parent / entry
            out.append(str(beside) if not Path(entry).is_absolute() and beside.exists() else entry)
    if not out:
        raise InputError("sweep: no sources given")
    return out


def load_for_audit(source: str, request: SourceRequest, domain: Domain | None):
    """(layer, domain, checkpoint info) as ``argmaxcheck audit`` uses them.

    ``domain=None`` audits a model on the features it can really produce (a
    folded final norm, an inferred activation range) and a plain array file on
    R^d; an explicit domain audits the head as stored.
    """
    return _load_for_audit(source, request, domain)[:3]


def _load_for_audit(source: str, request: SourceRequest, domain: Domain | None):
    """:func:`load_for_audit`, and the loaded source itself (its tokenizer's round trip)."""
    loaded = load_source(source, request)
    if not loaded.info:
        return loaded.layer, domain or Unbounded(), None, loaded
    if domain is None:
        audited = "folded final norm" if loaded.norm != "none" else "domain inferred from the model"
        return loaded.layer, loaded.domain, {**loaded.info, "audited": audited}, loaded
    return loaded.raw, domain, {**loaded.info, "audited": "raw head"}, loaded


def sweep(sources: Sequence[str], output: str | os.PathLike, *, request: SourceRequest | None = None,
          domain: Domain | None = None, options: AuditOptions | None = None, policy: GatePolicy | None = None,
          chunk_size: int | None = None, journal: str | os.PathLike | None = None,
          executor: LocalExecutor | RayExecutor | None = None, log: Log = stderr_note,
          on_row: Callable[[int, int, SweepRow], None] | None = None) -> SweepResult:
    """Audit every source and write the comparison table and the per-model reports to ``output``.

    Parameters
    ----------
    sources : sequence of str
        Paths (and ``@FILE`` lists, see :func:`expand_sources`).
    output : path
        Folder for ``sweep.md/.csv/.json/.html`` and ``models/*.json``
        (created; its parent must exist). Every file it will hold is checked
        first (:func:`argmaxcheck.outputs.plan_outputs`): none may be a source,
        an ``@FILE`` list or in the journal, and a read-only folder is refused;
        nothing is created before those checks pass.
    request, domain, options, policy
        What ``argmaxcheck audit`` takes from its flags, applied to every source.
    chunk_size, journal, executor
        As for :func:`~argmaxcheck.runner.audit_sharded`; the journal gets one
        sub-folder per source. With none of them, each source is one plain
        :func:`argmaxcheck.audit` call.
    on_row : callable, optional
        Called as ``on_row(k, total, row)`` after each source.

    Returns
    -------
    SweepResult
        Its ``exit_code`` is 2 if any source failed, else 1 if any gate failed, else 0.
    """
    lists = [item[1:] for item in sources if item.startswith("@")]
    sources = expand_sources(sources)
    output = Path(output)
    # Every check before anything is created: a refused sweep leaves no folder behind.
    if os.path.lexists(output) and not output.is_dir():
        raise InputError(f"sweep --output {output}: exists and is not a folder")
    if not output.resolve().parent.is_dir():
        raise InputError(f"sweep --output {output}: folder {output.resolve().parent} does not exist")
    if journal is not None:
        if os.path.lexists(journal) and not Path(journal).is_dir():
            raise InputError(f"sweep --resume {journal}: exists and is not a folder")
        if not Path(journal).resolve().parent.is_dir():
            raise InputError(f"sweep --resume {journal}: folder {Path(journal).resolve().parent} does not exist")
    # The table, and one report per source: never over a source, a list file or the journal (outputs.py).
    names = [*(f"sweep.{ext}" for ext in ("md", "csv", "json", "html")),
             *dict.fromkeys(f"models/{_slug(source)}.json" for source in sources)]
    plan_outputs([("sweep --output", str(output / name)) for name in names], inputs=[*sources, *lists],
                 owned=[journal] if journal is not None else [], make_folders=True)
    (output / "models").mkdir(parents=True, exist_ok=True)
    if journal is not None:
        Path(journal).mkdir(exist_ok=True)
    request, options, policy = request or SourceRequest(), options or AuditOptions(), policy or GatePolicy()
    sharded = chunk_size is not None or journal is not None or executor is not None
    rows = []
    for k, source in enumerate(sources):
        slug = _slug(source)
        row = SweepRow(source=source, model=_model_name(source))
        try:
            layer, dom, info, loaded = _load_for_audit(source, request, domain)
            if sharded:
                report = audit_sharded(layer, domain=dom, options=options, executor=executor, log=log,
                                       chunk_size=chunk_size or DEFAULT_CHUNK_SIZE,
                                       journal=None if journal is None else Path(journal) / slug)
            else:
                report = audit(layer, domain=dom, options=options)
            report.source, report.checkpoint = source, info
            attach_input_side(report, loaded, layer, dom)
            gate = evaluate(report, policy)
            name = f"models/{slug}.json"
            atomic_write(output / "models", f"{slug}.json",
                         (json_text(report.to_dict(gate.to_dict())) + "\n").encode("utf-8"))
            summary = report.summary()
            row.num_classes, row.dim, row.audited = report.num_classes, report.dim, summary["audited"]
            row.domain, row.seconds = _domain_text(report.domain), round(report.seconds, 3)
            row.counts = {v: summary[v] for v in row.counts}
            row.not_round_trip = summary["not_round_trip"]
            row.gate_passed, row.report = gate.passed, name
        except Exception as exc:  # one bad source is a row of the table, not the end of the sweep
            row.error = _one_line(exc)
        rows.append(row)
        if on_row is not None:
            on_row(k, len(sources), row)
    result = SweepResult(rows)
    write_sweep(result, output, lambda path, text: atomic_write(path.parent, path.name, text.encode("utf-8")))
    return result


def _slug(source: str) -> str:
    """A file name for a source: readable, safe, and distinct for distinct sources (a hash of the whole string)."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", _model_name(source)).strip("._") or "model"
    return f"{base[:60]}-{hashlib.sha256(source.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _model_name(source: str) -> str:
    path = Path(source)
    return path.name if path.exists() and path.name else source.rstrip("/\\") or source


def _domain_text(domain: dict) -> str:
    kind = domain["kind"]
    if kind == "ball":
        return f"ball r={_num(domain['radius'])}" + ("" if domain.get("center") == 0.0 else " (off-centre)")
    if kind == "box":
        return f"box [{_num(domain['lower'])}, {_num(domain['upper'])}]"
    return kind


def _num(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else "per-coordinate"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text if isinstance(exc, InputError) else f"{type(exc).__name__}: {text}".rstrip(": ")

