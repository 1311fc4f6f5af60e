"""Plain text: summary lines, then one tab-separated row per flagged token (files and pipes)."""

from __future__ import annotations

from ..gate import GateResult
from ..model import AuditReport
from ._common import SECTIONS, gate_lines, rows, summary_lines


def render(report: AuditReport, gate: GateResult | None = None) -> str:
    """Plain text: summary lines, then tab-separated rows (for files and pipes)."""
    lines = summary_lines(report) + gate_lines(gate)
    for verdict, _ in SECTIONS:
        lines += ["\t".join((*row[:2], verdict, *row[2:])) for row in rows(report, verdict)]
    return "\n".join(lines) + "\n"
