"""Report formats, each behind one interface: ``render(report, gate, layer) -> str``.

Every format renders the same :class:`~argmaxcheck.report.gate.GateResult`,
so the gate means one thing in all of them. ``layer`` is the audited
:class:`~argmaxcheck.layer.OutputLayer`, for formats that draw the rows (HTML).
To add a format: one module with a ``render`` function, and one line in
:data:`FORMATS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...layer import OutputLayer
from ..gate import GateResult
from ..model import AuditReport
from . import github, html, json, junit, markdown, text
from .terminal import print_terminal


@dataclass(frozen=True)
class Format:
    """A named report format. ``terminal`` prints it richly to a terminal instead of as ``render``'s text."""

    name: str
    render: Callable[[AuditReport, GateResult | None, OutputLayer | None], str]
    terminal: Callable[[AuditReport, GateResult | None], None] | None = None

    def __call__(self, report: AuditReport, gate: GateResult | None = None, layer: OutputLayer | None = None) -> str:
        return self.render(report, gate, layer)


def _ignoring_layer(render):
    return lambda report, gate=None, layer=None: render(report, gate)


FORMATS: dict[str, Format] = {
    "table": Format("table", _ignoring_layer(text.render), print_terminal),
    "text": Format("text", _ignoring_layer(text.render)),
    "json": Format("json", _ignoring_layer(json.render)),
    "markdown": Format("markdown", _ignoring_layer(markdown.render)),
    "html": Format("html", html.render),
    "github": Format("github", _ignoring_layer(github.render)),
    "junit": Format("junit", _ignoring_layer(junit.render)),
}

__all__ = ["FORMATS", "Format", "print_terminal"]
