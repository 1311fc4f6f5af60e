"""The sweep's comparison table as data, its four files (Markdown, CSV, JSON, offline HTML) and its screen table.

One :class:`SweepRow` per source: the model, vocabulary x dim, domain, counts
per category, the tokens the tokenizer does not give back from their own text
(``not_round_trip``; n/a without a tokenizer), time and gate, or the one-line error that kept it from being
audited. :func:`write_sweep` writes ``sweep.md``, ``sweep.csv``,
``sweep.json`` and ``sweep.html`` (a table and a plotly bar chart of
unreachable counts per model, plotly's JavaScript inlined: no network needed);
:func:`render_terminal` and :func:`render_text` show the table on a terminal and in a log.

Model names, sources and errors are untrusted (a path, a hub id, a message quoting a model file): the
row keeps them as given, and every rendering shows them through :mod:`.escape` (``printable`` first).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._text import printable
from ..exit_codes import EXIT_FOUND, EXIT_OK, EXIT_USAGE
from .escape import html_text, json_text, markdown_code, markdown_text
from .model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, VERDICTS
from .table import drop_empty_columns

SWEEP_SCHEMA_VERSION = "1.1"  # 1.1: not_round_trip
_COUNTS = (ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED)


@dataclass
class SweepRow:
    """One source of a sweep: what its audit found, or why it could not be audited.

    ``report`` is the per-model JSON report's path relative to the sweep folder;
    ``error`` is empty when the source was audited.
    """

    source: str
    model: str
    num_classes: int | None = None
    dim: int | None = None
    domain: str = ""
    counts: dict = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    audited: int = 0
    not_round_trip: int | None = None  # audited tokens the tokenizer does not give back; None: no tokenizer
    seconds: float | None = None
    gate_passed: bool | None = None
    report: str | None = None
    error: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def unreachable(self) -> int:
        return self.counts[UNARGMAXABLE] + self.counts[PRACTICAL]

    def flat(self) -> dict:
        """One flat record (the CSV row and the JSON row)."""
        out = {k: v for k, v in asdict(self).items() if k != "counts"}
        out.update({k: (None if self.failed else self.counts[k]) for k in _COUNTS})
        out["status"] = "error" if self.failed else ("passed" if self.gate_passed else "failed")
        return out


@dataclass
class SweepResult:
    """Every row of a sweep, in the order the sources were given.

    ``exit_code``: 2 if any source could not be loaded or audited, else 1 if
    any audit failed its gate, else 0.
    """

    rows: list[SweepRow]

    @property
    def exit_code(self) -> int:
        if any(r.failed for r in self.rows):
            return EXIT_USAGE
        return EXIT_FOUND if any(not r.gate_passed for r in self.rows) else EXIT_OK


_COLUMNS = ("model", "vocabulary x dim", "domain", "argmaxable", "practically unreachable", "unargmaxable",
            "undecided", "not round trip", "seconds", "gate", "report")


def _cells(row: SweepRow) -> list[str]:
    if row.failed:
        return [row.model, "", "", "", "", "", "", "", "", "error", f"error: {row.error}"]
    return [row.model, f"{row.num_classes} x {row.dim}", row.domain,
            *(str(row.counts[k]) for k in _COUNTS), "n/a" if row.not_round_trip is None else str(row.not_round_trip),
            f"{row.seconds:.1f}",
            "passed" if row.gate_passed else "FAILED", row.report or ""]


def _table(result: SweepResult) -> tuple[tuple[str, ...], list[dict[str, str]]]:
    """The human tables' columns and each row's cells by column: a column no row has a value in (the counts
    when no source could be audited) is left out."""
    columns, body = drop_empty_columns(_COLUMNS, [_cells(r) for r in result.rows])
    return columns, [dict(zip(columns, cells, strict=True)) for cells in body]


def render_markdown(result: SweepResult) -> str:
    columns, body = _table(result)
    lines = ["# argmaxcheck sweep", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    # The model (a path or id) is shown literally in code; the other cells are plain text.
    lines += ["| " + " | ".join(markdown_code(c, table=True) if name == "model" else markdown_text(c)
                                for name, c in cells.items()) + " |" for cells in body]
    return "\n".join([*lines, "", _footer(result), ""])


def render_csv(result: SweepResult) -> str:
    buffer = io.StringIO()
    fields = list(SweepRow("", "").flat())
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in result.rows:
        # A leading =, +, - or @ makes spreadsheets evaluate a cell; model names and errors are quoted text.
        # Strings are shown printable: a spreadsheet or a terminal `cat` is a human output.
        cells = {k: printable(v) if isinstance(v, str) else v for k, v in r.flat().items()}
        writer.writerow({k: (f"'{v}" if isinstance(v, str) and v.startswith(("=", "+", "-", "@")) else v)
                         for k, v in cells.items()})
    return buffer.getvalue()


def render_json(result: SweepResult) -> str:
    body = {"schema_version": SWEEP_SCHEMA_VERSION, "exit_code": result.exit_code,
            "rows": [r.flat() for r in result.rows]}
    return json_text(body) + "\n"  # the strings as given; a lone surrogate as its \\u escape


def render_html(result: SweepResult) -> str:
    """The table and a bar chart of unreachable tokens per model, in one offline file."""
    import plotly.graph_objects as go  # noqa: PLC0415 - heavy import, only for HTML
    from plotly.offline import get_plotlyjs  # noqa: PLC0415

    audited = [r for r in result.rows if not r.failed]
    labels = [html_text(r.model) for r in audited]
    fig = go.Figure()
    for verdict, color in ((UNARGMAXABLE, "#d1495b"), (PRACTICAL, "#edae49")):
        fig.add_trace(go.Bar(x=labels, y=[r.counts[verdict] for r in audited], name=verdict.replace("_", " "),
                             marker_color=color))
    fig.update_layout(title="Unreachable tokens per model", barmode="stack", yaxis_title="tokens", height=420,
                      margin={"t": 60, "b": 120})
    plot = fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    columns, table = _table(result)
    head = "".join(f"<th>{html_text(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_report_link(r) if name == 'report' else html_text(c)}</td>"
                                    for name, c in cells.items()) + "</tr>"
                   for r, cells in zip(result.rows, table, strict=True))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>argmaxcheck sweep</title>"
            f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body><h1>argmaxcheck sweep</h1>"
            f"<div class=\"plot\">{plot}</div><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<p class=\"muted\">{html_text(_footer(result))}</p></body></html>\n")


def _report_link(row: SweepRow) -> str:
    if row.failed or not row.report:
        return html_text(_cells(row)[-1])
    return f'<a href="{html_text(row.report)}">{html_text(row.report)}</a>'


_RIGHT = {"argmaxable", "practically unreachable", "unargmaxable", "undecided", "seconds"}  # the numbers


def render_text(result: SweepResult) -> str:
    """The table as plain aligned columns (a log, a pipe): no markup, no colour, every cell printable."""
    columns, body = _table(result)
    rows = [list(columns), *([printable(c) for c in cells.values()] for cells in body)]
    widths = [max(len(row[k]) for row in rows) for k in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if columns[k] in _RIGHT else c.ljust(w)
                       for k, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    return "\n".join([*lines, "", _footer(result), ""])


def render_terminal(result: SweepResult, console) -> None:
    """The table on a rich ``console``; every cell is a Text of printable characters, never rich markup."""
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    columns, body = _table(result)
    table = Table(title="argmaxcheck sweep", title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in _RIGHT else "left", overflow="fold")
    styles = {"FAILED": "bold red", "error": "bold red", "passed": "green"}
    for cells in body:
        table.add_row(*(Text(printable(c), style=styles.get(c, "") if name == "gate" else "")
                        for name, c in cells.items()))
    console.print(table)
    console.print(Text(_footer(result)))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; } th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; }
th { background: #f4f6f8; } .muted { color: #666; font-size: 0.9em; }
"""


def _footer(result: SweepResult) -> str:
    failed = sum(r.failed for r in result.rows)
    gated = sum(1 for r in result.rows if not r.failed and not r.gate_passed)
    return (f"{len(result.rows)} sources: {len(result.rows) - failed} audited ({gated} failed the gate),"
            f" {failed} could not be audited; exit code {result.exit_code}."
            " Per-model JSON reports are in models/; seconds are audit time.")


RENDERERS: dict[str, Callable[[SweepResult], str]] = {
    "sweep.md": render_markdown, "sweep.csv": render_csv, "sweep.json": render_json, "sweep.html": render_html}


def write_sweep(result: SweepResult, folder: Path, write: Callable[[Path, str], None]) -> list[Path]:
    """Render every table into ``folder`` with ``write(path, text)`` (the caller's atomic writer)."""
    paths = []
    for name, render in RENDERERS.items():
        write(folder / name, render(result))
        paths.append(folder / name)
    return paths
