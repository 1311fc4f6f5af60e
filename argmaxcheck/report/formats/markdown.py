"""Markdown for pull-request comments.

Everything from a model file is inert here: token names and the source path
are code spans (:func:`~argmaxcheck.report.escape.markdown_code`), other text
is escaped prose (:func:`~argmaxcheck.report.escape.markdown_text`), so a
token cannot render an image, a link, a mention or a heading in the comment.
"""

from __future__ import annotations

from ..escape import MARKDOWN_CELL, markdown_code, markdown_text
from ..gate import GateResult
from ..model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport
from ..table import drop_empty_columns
from ._common import (
    COLUMNS,
    ROUND_TRIP_COLUMNS,
    ROUND_TRIP_TITLE,
    SECTIONS,
    gate_lines,
    round_trip_lines,
    round_trip_rows,
    rows,
)

# Numbers right-aligned, words left.
_ALIGN = {"id": "---:", "token": "---", "margin": "---:", "max prob": "---:", "gate": "---", "why": "---",
          "verdict": "---", "its text encodes to": "---"}


def render(report: AuditReport, gate: GateResult | None = None, limit: int = 100) -> str:
    """A pull-request comment: summary, domain, gate and a table per flagged category (a column no row has
    a value in is left out)."""
    s = report.summary()
    status = "" if gate is None else (" — gate passed" if gate.passed else " — **gate failed**")
    out = [f"## argmaxcheck: {markdown_code(report.source or 'layer')}{status}", "",
           "| argmaxable | unargmaxable | practically unreachable | undecided | seconds |",
           "|---:|---:|---:|---:|---:|",
           f"| {s[ARGMAXABLE]} | {s[UNARGMAXABLE]} | {s[PRACTICAL]} | {s[UNDECIDED]} | {s['seconds']:.1f} |", "",
           markdown_text(f"{s['num_classes']} classes × {s['dim']} dims, domain: {report.domain_text()}."), ""]
    out += [f"- {markdown_text(line)}" for line in round_trip_lines(report) + gate_lines(gate)]
    sections = [(title, COLUMNS, list(rows(report, verdict, gate, MARKDOWN_CELL))) for verdict, title in SECTIONS]
    sections.append((ROUND_TRIP_TITLE, ROUND_TRIP_COLUMNS,
                     [(*r[:2], markdown_text(r[2]), markdown_text(r[3]), r[4])
                      for r in round_trip_rows(report, gate, MARKDOWN_CELL)]))
    for title, all_columns, all_rows in sections:
        columns, table_rows = drop_empty_columns(all_columns, all_rows)
        if not table_rows:
            continue
        out += ["", f"### {markdown_text(title)} ({len(table_rows)})", "", "| " + " | ".join(columns) + " |",
                "|" + "".join(f"{_ALIGN[c]}|" for c in columns)]
        out += ["| " + " | ".join(row) + " |" for row in table_rows[:limit]]
        if len(table_rows) > limit:
            out.append(f"\n… and {len(table_rows) - limit} more (see the JSON or HTML report).")
    return "\n".join(out) + "\n"
