"""GitHub Actions workflow commands: an error per token that fails the gate, a notice with the summary.

Each command is one line: every string is printable and then escaped as
workflow-command data, so a token or path holding ``\\n::error::`` or ESC
cannot start a command of its own or drive the log viewer.
"""

from __future__ import annotations

from ..._text import printable
from ..escape import github_data, github_property
from ..gate import GateResult
from ..model import ARGMAXABLE, AuditReport
from ._common import gate_lines, probability_text, summary_lines

# The gate's status of a flagged token -> the annotation level: only failures are errors.
_LEVEL = {"fails": "error", "allowed": "warning", "ignored": "notice", "in baseline": "notice"}


def render(report: AuditReport, gate: GateResult) -> str:
    """An ``::error`` per token failing the gate, a ``::warning`` per counted token within its threshold,
    a ``::notice`` per ignored or baseline token and one with the summary."""
    lines = []
    title = f"argmaxcheck {report.source}".strip()
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        status = gate.status(t.id)
        name = printable(report.token_text(t.id))
        msg = f"token {t.id} {name} is {t.verdict.replace('_', ' ')}: {report.explain(t)}"
        if probability_text(t):
            msg += f" (highest probability it can reach: {probability_text(t)})"
        msg += f" [gate: {status}]"
        lines.append(f"::{_LEVEL[status]} title={github_property(title)}::{github_data(msg)}")
    for i in gate.failing.get("not_round_trip", ()):
        got = list(report.round_trip.produced.get(i, ())) if report.round_trip is not None else []
        level = "error" if gate.exceeded("not_round_trip") else "warning"
        msg = (f"token {i} {printable(report.token_text(i))}: the tokenizer does not give it back from its own text"
               f" (it encodes to {got}) [gate: {'fails' if level == 'error' else 'allowed'}]")
        lines.append(f"::{level} title={github_property(title)}::{github_data(msg)}")
    summary = "; ".join(summary_lines(report) + gate_lines(gate))
    lines.append(f"::notice title={github_property(title)}::{github_data(summary)}")
    return "\n".join(lines) + "\n"
