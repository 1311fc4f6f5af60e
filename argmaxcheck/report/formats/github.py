"""GitHub Actions workflow commands: an error per counted token, a notice with the summary."""

from __future__ import annotations

from ..escape import github_data, github_property
from ..gate import GateResult
from ..model import ARGMAXABLE, AuditReport
from ._common import gate_lines, probability_text, summary_lines


def render(report: AuditReport, gate: GateResult) -> str:
    """GitHub Actions workflow commands: an error per counted token, a notice with the summary."""
    lines = []
    counted = gate.counted()
    title = f"argmaxcheck {report.source}".strip()
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        level = "error" if t.id in counted else "notice"
        msg = f"token {t.id} {report.token_text(t.id)} is {t.verdict.replace('_', ' ')}: {report.explain(t)}"
        if probability_text(t):
            msg += f" (highest probability it can reach: {probability_text(t)})"
        lines.append(f"::{level} title={github_property(title)}::{github_data(msg)}")
    summary = "; ".join(summary_lines(report) + gate_lines(gate))
    lines.append(f"::notice title={github_property(title)}::{github_data(summary)}")
    return "\n".join(lines) + "\n"
