"""Markdown for pull-request comments."""

from __future__ import annotations

from ..escape import markdown_cell
from ..gate import GateResult
from ..model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport
from ._common import COLUMNS, SECTIONS, gate_lines, rows


def render(report: AuditReport, gate: GateResult | None = None, limit: int = 100) -> str:
    """A pull-request comment: summary, gate and a table per flagged category."""
    s = report.summary()
    status = "" if gate is None else (" — gate passed" if gate.passed else " — **gate failed**")
    out = [f"## argmaxcheck: `{report.source or 'layer'}`{status}", "",
           "| argmaxable | unargmaxable | practically unreachable | undecided | seconds |",
           "|---:|---:|---:|---:|---:|",
           f"| {s[ARGMAXABLE]} | {s[UNARGMAXABLE]} | {s[PRACTICAL]} | {s[UNDECIDED]} | {s['seconds']:.1f} |", "",
           f"{s['num_classes']} classes × {s['dim']} dims, domain `{s['domain']['kind']}`.", ""]
    out += [f"- {line}" for line in gate_lines(gate)]
    for verdict, title in SECTIONS:
        table_rows = list(rows(report, verdict))
        if not table_rows:
            continue
        out += ["", f"### {title} ({len(table_rows)})", "", "| " + " | ".join(COLUMNS) + " |",
                "|---:|---|---:|---:|---|"]
        out += ["| " + " | ".join(markdown_cell(c, code=k == 1) for k, c in enumerate(row)) + " |"
                for row in table_rows[:limit]]
        if len(table_rows) > limit:
            out.append(f"\n… and {len(table_rows) - limit} more (see the JSON or HTML report).")
    return "\n".join(out) + "\n"
