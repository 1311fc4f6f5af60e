"""``argmaxcheck diff`` as text and as JSON: what :func:`argmaxcheck.report.diff.diff_reports` found.

Token names reach the text through :meth:`AuditReport.token_text` (escaped) and the JSON through
:func:`~argmaxcheck.report.escape.json_text`, as in the audit's own formats.
"""

from __future__ import annotations

import numpy as np

from ..diff import AuditDiff, TokenChange
from ..escape import json_text
from ..model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, AuditReport


def render_json(diff: AuditDiff) -> str:
    """The JSON form (``argmaxcheck diff --format json``)."""
    return json_text(diff.to_dict()) + "\n"


def render_text(diff: AuditDiff) -> str:
    """Plain text: both summaries, then lost, gained and other changes, then the largest margin shifts."""
    lines = [_summary_line("A", diff.a), _summary_line("B", diff.b)]
    if diff.a.domain != diff.b.domain:
        lines.append("note: A and B were audited on different domains; margins are not in the same units")
    if diff.renamed:
        lines.append(f"note: {len(diff.renamed)} rows have different token strings in A and B"
                     f" (first: {', '.join(map(str, diff.renamed[:5]))})")
    other = [c for c in diff.changed if c not in diff.lost and c not in diff.gained]
    for title, changes in (("lost reachability (argmaxable in A, not in B)", diff.lost),
                           ("gained reachability (unreachable in A, argmaxable in B)", diff.gained),
                           ("other verdict changes", other)):
        lines.append(f"{title}: {len(changes)}")
        lines += [f"  {_change_line(diff, c)}" for c in changes]
    if diff.a.round_trip is not None and diff.b.round_trip is not None:
        lines.append(f"tokenizer round trip changed: {len(diff.round_trip_changed)}")
        for i in diff.round_trip_changed:
            before, after = diff.a.round_trip.status[i], diff.b.round_trip.status[i]
            lines.append(f"  #{i} {diff.b.token_text(i) or ''}: round trip {_rt(before)} -> {_rt(after)}")
    if diff.changed:
        lines.append("transitions: " + ", ".join(f"{k}: {n}" for k, n in diff.transitions().items()))
    lines.append(f"largest margin shifts (B minus A), top {len(diff.shifts)}:")
    lines += [f"  {_change_line(diff, c)}" for c in diff.shifts]
    return "\n".join(lines) + "\n"


def _change_line(diff: AuditDiff, c: TokenChange) -> str:
    name = diff.b.token_text(c.id) or f"#{c.id}"
    verdicts = c.before if c.before == c.after else f"{c.before} -> {c.after}"
    return (f"#{c.id} {name}: {verdicts}, margin {_number(c.margin_before)} -> {_number(c.margin_after)}"
            f" ({'n/a' if np.isnan(c.shift) else f'{c.shift:+.3g}'})")


def _rt(value) -> str:
    return {True: "true", False: "false", None: "n/a"}.get(value, str(value))


def _number(x: float) -> str:
    return "n/a" if np.isnan(x) else f"{x:.4g}"


def _summary_line(label: str, report: AuditReport) -> str:
    s = report.summary()
    dom = s["domain"]
    where = dom["kind"] + (f" r={dom['radius']:.4g}" if dom["kind"] == "ball" else "")
    return (f"{label}: {report.source or 'layer'}: {s['num_classes']} x {s['dim']}"
            f" ({s['source_dtype']}), {where}: {s[ARGMAXABLE]} argmaxable, {s[UNARGMAXABLE]} unargmaxable,"
            f" {s[PRACTICAL]} practically unreachable, {s['undecided']} undecided")
