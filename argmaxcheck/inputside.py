"""Both sides of a token on one report: whether it can be the argmax (the audit) and whether the tokenizer
produces it (the round trip, :mod:`argmaxcheck.sources.roundtrip`).

The audit knows nothing of tokenizers; the commands attach the round trip afterwards, the way they attach
``report.source`` and ``report.checkpoint``, together with the smallest bias raise of each flagged added
token (:func:`argmaxcheck.engine.explain.added_token_bias_raises`).
"""

from __future__ import annotations

from .engine.explain import added_token_bias_raises
from .report.model import AuditReport
from .sources.base import LoadedLayer


def attach_input_side(report: AuditReport, loaded: LoadedLayer | None, layer=None, domain=None) -> AuditReport:
    """Set ``report.round_trip`` from ``loaded`` (None without a tokenizer) and, when ``layer`` (the audited
    one) has a bias, ``report.bias_raise`` for its flagged added tokens. Returns ``report``."""
    if loaded is not None and loaded.tokenizer is not None:
        rt = loaded.round_trip
        if rt is not None and len(rt.status) == report.num_classes:
            report.round_trip = rt
    if layer is not None:
        report.bias_raise = added_token_bias_raises(layer, domain, report)
    return report
