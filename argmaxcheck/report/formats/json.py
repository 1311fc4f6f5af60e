"""The JSON report (schema: docs/report-schema.md and argmaxcheck/report/report.schema.json)."""

from __future__ import annotations

from ..escape import json_text
from ..gate import GateResult
from ..model import AuditReport


def render(report: AuditReport, gate: GateResult | None = None) -> str:
    """The report as indented JSON, with the gate's result when given: valid UTF-8 for any token string."""
    return json_text(report.to_dict(None if gate is None else gate.to_dict())) + "\n"
