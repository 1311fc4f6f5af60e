"""The rich terminal report (the default on a terminal)."""

from __future__ import annotations

from ..gate import GateResult
from ..model import AuditReport
from ..table import drop_empty_columns
from ._common import (
    COLUMNS,
    ROUND_TRIP_COLUMNS,
    ROUND_TRIP_TITLE,
    SECTIONS,
    gate_lines,
    round_trip_rows,
    rows,
    summary_lines,
)


def print_terminal(report: AuditReport, gate: GateResult | None = None, console=None, limit: int = 500) -> None:
    """The rich terminal report: summary, then one table per flagged category (``limit`` rows each;
    a column no row has a value in is left out)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = console or Console()
    # soft_wrap: summary lines stay whole (greppable) when the output is a pipe or a narrow terminal
    for k, line in enumerate(summary_lines(report) + gate_lines(gate)):
        style = "bold" if k == 2 else ("bold red" if line.startswith("gate: FAILED") else None)
        console.print(Text(line, style=style or ""), soft_wrap=True)
    sections = [(title, COLUMNS, list(rows(report, verdict, gate))) for verdict, title in SECTIONS]
    sections.append((ROUND_TRIP_TITLE, ROUND_TRIP_COLUMNS, list(round_trip_rows(report, gate))))
    for title, all_columns, all_rows in sections:
        columns, table_rows = drop_empty_columns(all_columns, all_rows)
        if not table_rows:
            continue
        shown = Table(title=f"{title} ({len(table_rows)})", title_justify="left")
        for col in columns:
            shown.add_column(col, overflow="fold", no_wrap=col in ("id", "margin", "gate"))
        for row in table_rows[:limit]:
            shown.add_row(*(Text(cell) for cell in row))  # Text: no markup; cells are printable already
        console.print(shown)
        if len(table_rows) > limit:
            console.print(f"... and {len(table_rows) - limit} more (see --format json or --html)", markup=False)
