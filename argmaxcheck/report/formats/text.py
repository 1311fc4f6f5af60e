"""Plain text: summary lines, then one tab-separated row per flagged token (files and pipes)."""

from __future__ import annotations

from ..gate import GateResult
from ..model import AuditReport
from ..table import drop_empty_columns
from ._common import COLUMNS, SECTIONS, gate_lines, round_trip_rows, rows, summary_lines


def render(report: AuditReport, gate: GateResult | None = None) -> str:
    """Plain text: summary lines, then rows ``id, token, verdict, margin, max prob, gate, why`` separated by tabs.

    Tokens the tokenizer does not give back from their own text follow as rows
    ``id, token, not_round_trip, verdict, gate, its text encodes to``.

    Every string is printable (no control characters): a token's tab or
    newline shows as ``\\t``/``\\n`` and cannot add a column or a line. A column that is empty in every
    row of the report (``max prob`` on R^d, ``gate`` without a gate) is left out of every row.
    """
    body = [(*row[:2], verdict, *row[2:]) for verdict, _ in SECTIONS for row in rows(report, verdict, gate)]
    _, body = drop_empty_columns((*COLUMNS[:2], "verdict", *COLUMNS[2:]), body)
    lines = summary_lines(report) + gate_lines(gate) + ["\t".join(row) for row in body]
    # The input side: id, token, "not_round_trip", its verdict, gate, what its text encodes to.
    lines += ["\t".join((*row[:2], "not_round_trip", *row[2:])) for row in round_trip_rows(report, gate)]
    return "\n".join(lines) + "\n"
