"""The audit: a list of stages over one shared state, every verdict independently checked.

Each stage is a module with a ``run(state)`` function (:mod:`.state`): it settles some of the
open tokens with a checked witness or certificate and returns its record
(:class:`~argmaxcheck.report.stats.StageStats`). A new stage is one module and one line in
:data:`STAGES`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from ..domains import Domain, Unbounded
from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import AuditReport
from ..report.stats import AuditStats
from ..selection import check_ids, select
from . import batched, block_exact, clusters, exact, narrow, polish, probability, screen, seeding, ties
from .options import AuditOptions
from .progress import Progress, as_progress
from .scaling import normalised, unscaled
from .state import AuditState
from .ties import RowGroups

#: The stages, in the order they run: exact ties, guessed witnesses, shared-basis certificates
#: for rows deep inside the hull (R^d), near misses moved into their cells (near-duplicate twins that
#: both win somewhere among them), one exact question per cluster of the near-duplicate rows left,
#: start points on balls (and near misses moved from them), the
#: exact step for blocks of tokens, the per-token exact step for what the blocks leave, the
#: practical label, probability brackets.
STAGES = (ties.run, screen.run, batched.run, polish.run, clusters.run, seeding.run, polish.run_seeded,
          block_exact.run, exact.run, narrow.run, probability.run)


def audit(weight, bias=None, domain: Domain | None = None, tokens: Sequence[int] | str | None = None, *,
          names: Sequence[str] | None = None, options: AuditOptions | None = None,
          progress: Progress | Callable[[int], None] | None = None) -> AuditReport:
    """Decide, for every token, whether some input in ``domain`` makes it the strict argmax.

    Parameters
    ----------
    weight : array-like of shape (num_classes, dim), OutputLayer, or a module with ``weight``
        Output-layer weights (numpy, torch or nested lists; any float dtype).
    bias : array-like of shape (num_classes,), optional
    domain : Unbounded, Box or Ball, default Unbounded()
    tokens : sequence of int or str, optional
        Audit only these rows (they still compete against every row): ids, or a selection
        such as ``"0-99,kind:control,name:<|im_end|>"`` (:mod:`argmaxcheck.selection`).
    names : sequence of str, optional
        Display names of the rows.
    options : AuditOptions, optional
    progress : Progress or callable, optional
        An object with ``stage(name, total)`` and ``advance(n)`` (see
        :mod:`argmaxcheck.engine.progress`), told of each stage and of every
        block of work done in it; or a callable given each ``n``.

    Returns
    -------
    AuditReport
        One :class:`TokenResult` per audited token; every argmaxable verdict
        carries a checked witness and every unargmaxable one a checked
        convex certificate. Tokens neither could be proven for are ``undecided``.
        ``report.stats`` has one record per stage that ran.

    Raises
    ------
    InputError
        For malformed arrays, domains, options or token lists (one-line message).
    """
    state = _begin(weight, bias, domain, tokens, names, options or AuditOptions(), as_progress(progress))
    records = []
    for stage in STAGES:
        t0 = time.perf_counter()
        record = stage(state)
        if record is not None:
            records.append(replace(record, seconds=time.perf_counter() - t0))
    return _report(state, records)


def _begin(weight, bias, domain, tokens, names, options: AuditOptions, progress: Progress) -> AuditState:
    """Validate what ``audit`` was given, once, and set up the state every stage shares."""
    started = time.perf_counter()
    if not isinstance(options, AuditOptions):
        raise InputError(f"options must be an AuditOptions, got {type(options).__name__}")
    original, own_domain = _as_layer(weight, bias, names)
    domain = (domain if domain is not None else own_domain).resolve(original.dim)
    targets = _targets(tokens, original)
    if original.num_classes < 2:
        raise InputError(f"the layer has {original.num_classes} row: a softmax over one class always picks it,"
                         " so there is nothing to audit")
    layer, exponent = normalised(original)
    groups = RowGroups.of(layer)
    comp = AuditState.competitors_of(layer, groups)
    position = groups.positions(layer.num_classes)
    # For a bias-free layer, the cone the domain generates gives the same verdicts (see
    # ``scale_free_cone`` in domains.py) and admits exact certificates on its open sides.
    solve_domain = (domain.scale_free_cone() if comp.bias is None else None) or domain
    return AuditState(layer, original, exponent, domain, solve_domain, targets, options, progress, groups, comp,
                      position, started=started)


def _report(state: AuditState, records: list) -> AuditReport:
    """The report of a finished state: results in the layer's own units, in id order."""
    original, backend = state.original, state.backend
    results = [state.results[i] for i in state.targets]
    if state.exponent:  # margins back in the layer's own logit units (exact: a power of two)
        results = [unscaled(r, state.exponent) for r in results]
    return AuditReport(original.num_classes, original.dim, state.domain.describe(), original.bias is not None,
                       original.source_dtype, state.elapsed(), results, names=original.tokens,
                       stats=AuditStats(tuple(records)), special=original.special, display=original.display,
                       token_kinds=original.token_kinds,
                       device=None if backend is None else backend.name,
                       device_note=(backend.note or None) if backend is not None else None,
                       precision=state.precision)


def _as_layer(weight, bias, names) -> tuple[OutputLayer, Domain]:
    """The validated layer for what ``audit`` was given, and the domain to use when none is named.

    Arrays (numpy, torch, nested lists) and ``OutputLayer`` audit on R^d; a module with a
    ``weight`` (and ``bias``), such as ``torch.nn.Linear``, audits that head. (A ``transformers``
    model is read by :func:`argmaxcheck.audit`, above the engine, which folds its final norm in.)
    """
    if isinstance(weight, OutputLayer):
        return weight, Unbounded()
    if hasattr(weight, "config") and hasattr(weight, "state_dict"):
        raise InputError("a transformers model is read by argmaxcheck.audit (or argmaxcheck.integrations."
                         "audit_model), which folds its final norm in; the engine takes arrays and layers")
    if not isinstance(weight, np.ndarray) and hasattr(weight, "weight") and not isinstance(weight, (list, tuple)):
        module = weight
        weight = module.weight
        if bias is None:
            bias = getattr(module, "bias", None)
        name = type(module).__name__
        return OutputLayer.from_arrays(weight, bias, names, name=f"{name}.weight", bias_name=f"{name}.bias"), \
            Unbounded()
    return OutputLayer.from_arrays(weight, bias, names), Unbounded()


def _targets(tokens, layer: OutputLayer) -> list[int]:
    """The audited row ids: every row, checked integers, or a selection string (:mod:`argmaxcheck.selection`)."""
    if tokens is None:
        return list(range(layer.num_classes))
    if isinstance(tokens, str):
        return select(tokens, layer, what="tokens")
    return check_ids(tokens, layer.num_classes)
