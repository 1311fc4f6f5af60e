"""The JSON report (schema: docs/report-schema.md and argmaxcheck/report/report.schema.json)."""

from __future__ import annotations

import json

from ..gate import GateResult
from ..model import AuditReport


def render(report: AuditReport, gate: GateResult | None = None) -> str:
    """The report as indented JSON, with the gate's result when given."""
    return json.dumps(report.to_dict(None if gate is None else gate.to_dict()), indent=2, ensure_ascii=False) + "\n"
