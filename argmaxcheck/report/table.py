"""Tables in the human formats leave out a column that no row has a value in (the ``max prob`` column of an
audit on R^d, say), rather than show it empty."""

from __future__ import annotations

from collections.abc import Sequence


def drop_empty_columns(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[tuple[str, ...], list[tuple]]:
    """``(columns, rows)`` without the columns whose cell is ``''`` in every row; a table with no rows keeps
    every column."""
    rows = [tuple(row) for row in rows]
    if not rows:
        return tuple(columns), rows
    keep = [k for k in range(len(columns)) if any(row[k] != "" for row in rows)]
    return tuple(columns[k] for k in keep), [tuple(row[k] for k in keep) for row in rows]
