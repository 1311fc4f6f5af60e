"""A self-contained HTML report: summary, plots and a card per flagged token, usable offline.

Plots are drawn with plotly; its JavaScript bundle is inlined once, so the
file opens without a network (no CDN). Plots:

* the distribution of margins (log scale: the certified witness gap of
  argmaxable tokens, the best margin of practically unreachable ones);
* a 2-D projection of the output rows (their two leading principal
  components) with flagged tokens highlighted and named on hover;
* for flagged tokens with computed bounds, the highest probability each can reach.
"""

from __future__ import annotations

import html

import numpy as np

from ...layer import OutputLayer
from ..escape import HTML, html_text
from ..gate import GateResult
from ..model import ARGMAXABLE, PRACTICAL, SCHEMA_VERSION, UNARGMAXABLE, UNDECIDED, AuditReport
from ._common import (
    ROUND_TRIP_COLUMNS,
    ROUND_TRIP_TITLE,
    SECTIONS,
    gate_lines,
    probability_text,
    round_trip_rows,
    summary_lines,
)

_COLORS = {ARGMAXABLE: "#9aa5b1", UNARGMAXABLE: "#d1495b", PRACTICAL: "#edae49", UNDECIDED: "#00798c"}
_MAX_BACKGROUND_POINTS = 5000  # argmaxable rows drawn in the projection (a random sample beyond this)
_MAX_CARDS = 500

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
pre.summary { background: #f4f6f8; padding: 1em; white-space: pre-wrap; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 0.8em; }
.card { border: 1px solid #ddd; border-left: 6px solid var(--c); border-radius: 4px; padding: 0.6em 0.8em; }
.card h3 { margin: 0 0 0.3em 0; font-size: 1em; } .card code { background: #f4f6f8; }
.card table { border-collapse: collapse; font-size: 0.9em; } .card td { padding: 0 0.6em 0 0; }
.muted { color: #666; font-size: 0.9em; }
table.roundtrip { border-collapse: collapse; font-size: 0.9em; }
table.roundtrip td, table.roundtrip th { border: 1px solid #ddd; padding: 0.2em 0.5em; }
"""


def render(report: AuditReport, gate: GateResult | None = None, layer: OutputLayer | None = None) -> str:
    """The report as one HTML document. ``layer`` (the audited rows) enables the projection plot."""
    from plotly.offline import get_plotlyjs  # noqa: PLC0415 - heavy import, only for HTML

    figures = [_margin_figure(report)]
    if layer is not None:
        figures.append(_projection_figure(report, layer.weight))
    prob = _probability_figure(report)
    if prob is not None:
        figures.append(prob)
    plots = "\n".join(f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=False, config=_CONFIG)}'
                      "</div>" for fig in figures)
    title = html_text(f"argmaxcheck: {report.source or 'layer'}")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            f"<h1>{title}</h1>"
            f"<pre class=\"summary\">{chr(10).join(map(html_text, summary_lines(report) + gate_lines(gate)))}</pre>"
            f"{plots}{_cards(report, gate)}{_round_trip_table(report, gate)}"
            f"<p class=\"muted\">argmaxcheck report, schema {SCHEMA_VERSION}."
            " Every verdict carries a certificate checked independently of the solver.</p></body></html>\n")


_CONFIG = {"displaylogo": False, "responsive": True}


def _margin_figure(report: AuditReport):
    import plotly.graph_objects as go  # noqa: PLC0415

    fig = go.Figure()
    for verdict, values, name in (
            (ARGMAXABLE, [t.margin for t in report.tokens if t.verdict == ARGMAXABLE and t.margin > 0],
             "argmaxable: certified gap at the witness"),
            (PRACTICAL, [t.best_margin for t in report.tokens if t.verdict == PRACTICAL and t.best_margin > 0],
             "practically unreachable: best margin")):
        if values:
            fig.add_trace(go.Histogram(x=np.log10(values), name=name, marker_color=_COLORS[verdict], opacity=0.8))
    counts = report.summary()
    fig.update_layout(title=f"Margins (log10); {counts[UNARGMAXABLE]} unargmaxable tokens have none (best gap <= 0)",
                      xaxis_title="log10 margin (logit units)", yaxis_title="tokens", barmode="overlay",
                      height=380, margin={"t": 60, "b": 50})
    return fig


def _projection_figure(report: AuditReport, weight: np.ndarray):
    import plotly.graph_objects as go  # noqa: PLC0415

    coords = _principal_plane(weight)
    # Only audited rows are drawn (with --tokens, the others have no verdict to show).
    background = np.array([t.id for t in report.tokens if t.verdict == ARGMAXABLE], dtype=np.int64)
    if background.size > _MAX_BACKGROUND_POINTS:
        background = np.sort(np.random.default_rng(0).choice(background, _MAX_BACKGROUND_POINTS, replace=False))
    fig = go.Figure()
    groups = [(ARGMAXABLE, background)] + [(v, np.array([t.id for t in report.tokens if t.verdict == v]))
                                            for v in (UNARGMAXABLE, PRACTICAL, UNDECIDED)]
    for v, rows in groups:
        if rows.size == 0:
            continue
        hover = [html.escape(f"#{i} {report.label(i) if report.names else ''}") for i in rows]
        fig.add_trace(go.Scatter(x=coords[rows, 0], y=coords[rows, 1], mode="markers", name=v.replace("_", " "),
                                 text=hover, hoverinfo="text",
                                 marker={"color": _COLORS[v], "size": 4 if v == ARGMAXABLE else 8,
                                         "opacity": 0.5 if v == ARGMAXABLE else 0.95}))
    shown = "" if background.size == report.summary()[ARGMAXABLE] else \
        f" ({background.size} argmaxable rows sampled)"
    fig.update_layout(title=f"Output rows on their two leading principal components{shown}",
                      xaxis_title="PC 1", yaxis_title="PC 2", height=560, margin={"t": 60, "b": 50})
    return fig


def _probability_figure(report: AuditReport):
    import plotly.graph_objects as go  # noqa: PLC0415

    flagged = [t for t in report.tokens if t.verdict != ARGMAXABLE and np.isfinite(t.max_probability)]
    if not flagged:
        return None
    flagged.sort(key=lambda t: -t.max_probability_upper)
    labels = [html.escape(f"#{t.id} {report.label(t.id)}") for t in flagged]
    fig = go.Figure(go.Bar(x=labels, y=[t.max_probability_upper for t in flagged],
                           marker_color=[_COLORS[t.verdict] for t in flagged], name="upper bound"))
    fig.add_trace(go.Scatter(x=labels, y=[t.max_probability for t in flagged], mode="markers",
                             marker={"color": "#222", "size": 6}, name="reached"))
    fig.update_layout(title="Highest probability each flagged token can reach (bar: bound; dot: reached)",
                      yaxis_type="log", yaxis_title="probability", height=420, margin={"t": 60, "b": 120})
    return fig


def _cards(report: AuditReport, gate: GateResult | None) -> str:
    parts = []
    for verdict, title in SECTIONS:
        tokens = [t for t in report.tokens if t.verdict == verdict]
        if not tokens:
            continue
        parts.append(f"<h2>{html.escape(title)} ({len(tokens)})</h2><div class=\"cards\">")
        for t in tokens[:_MAX_CARDS]:
            rows = [("margin", "" if np.isnan(t.margin) else f"{t.margin:.4g}"),
                    ("max probability", probability_text(t)), ("decided by", t.stage),
                    ("gate", gate.status(t.id) if gate is not None else "")]
            rows = [(k, html_text(v)) for k, v in rows]
            if t.support is not None:
                order = [k for k in np.argsort(-t.weights)[:5] if t.weights[k] >= 5e-4]
                label = report.label
                rows.append(("competitors", ", ".join(f"{t.weights[k]:.3f}·{HTML.literal(label(int(t.support[k])))}"
                                                     for k in order)))
            table = "".join(f"<tr><td class=\"muted\">{k}</td><td>{v}</td></tr>" for k, v in rows if v)
            parts.append(f"<div class=\"card\" style=\"--c: {_COLORS[verdict]}\"><h3>#{t.id} "
                         f"{HTML.literal(report.token_text(t.id))}</h3>"
                         f"<p>{report.explain(t, style=HTML)}</p><table>{table}</table></div>")
        parts.append("</div>")
        if len(tokens) > _MAX_CARDS:
            parts.append(f"<p class=\"muted\">… and {len(tokens) - _MAX_CARDS} more in the JSON report.</p>")
    return "".join(parts)


def _round_trip_table(report: AuditReport, gate: GateResult | None) -> str:
    """The tokens the tokenizer does not give back from their own text, as one table."""
    table_rows = list(round_trip_rows(report, gate, HTML))
    if not table_rows:
        return ""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ROUND_TRIP_COLUMNS)
    # The token and what it encodes to are HTML.literal already; the id, verdict and gate are our words.
    body = "".join(f"<tr><td>{html_text(i)}</td><td>{name}</td><td>{html_text(verdict)}</td><td>{html_text(status)}"
                   f"</td><td>{got}</td></tr>" for i, name, verdict, status, got in table_rows[:_MAX_CARDS])
    more = (f"<p class=\"muted\">… and {len(table_rows) - _MAX_CARDS} more in the JSON report.</p>"
            if len(table_rows) > _MAX_CARDS else "")
    return (f"<h2>{html.escape(ROUND_TRIP_TITLE)} ({len(table_rows)})</h2><table class=\"roundtrip\"><thead><tr>{head}"
            f"</tr></thead><tbody>{body}</tbody></table>{more}")


def _principal_plane(weight: np.ndarray, iterations: int = 8) -> np.ndarray:
    """Coordinates of the rows on their two leading principal components (subspace iteration)."""
    centred = weight - weight.mean(axis=0)
    basis = np.random.default_rng(0).normal(size=(weight.shape[1], min(8, weight.shape[1])))
    for _ in range(iterations):
        basis, _ = np.linalg.qr(centred.T @ (centred @ basis))
    small = centred @ basis
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    return small @ vt[:2].T if vt.shape[0] >= 2 else np.hstack([small[:, :1], np.zeros((weight.shape[0], 1))])
