"""What the human formats share: section titles, summary and gate lines, one row per flagged token."""

from __future__ import annotations

import math

import numpy as np

from ..escape import PLAIN, Style, printable
from ..gate import GateResult
from ..model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult

ROUND_TRIP_TITLE = "Not round-trip: the tokenizer does not give these back from their own text"
ROUND_TRIP_COLUMNS = ("id", "token", "verdict", "gate", "its text encodes to")
SECTIONS = ((UNARGMAXABLE, "Unargmaxable: no input makes these the argmax"),
            (PRACTICAL, "Practically unreachable: they win only by less than the logits' precision"),
            (UNDECIDED, "Undecided: no certificate could be checked"))


def probability_text(t: TokenResult) -> str:
    """The max-probability bracket in words ('' when not computed)."""
    lo, hi = t.max_probability, t.max_probability_upper
    if math.isnan(lo):
        return ""
    if hi <= lo * 1.01 + 1e-300:
        return f"{lo:.3g}"
    return f"{lo:.2g} to {hi:.2g}"


def summary_lines(report: AuditReport) -> list[str]:
    """Source and shape, domain (with why), counts: printable text, for each format to escape for its syntax."""
    s = report.summary()
    return [printable(f"{report.source or 'layer'}: {s['num_classes']} classes x {s['dim']} dims"
                      f" ({s['source_dtype']}{', bias' if s['bias'] else ''})"),
            f"domain: {report.domain_text()}",
            f"audited {s['audited']}{_rows(s)}: {s[ARGMAXABLE]} argmaxable, {s[UNARGMAXABLE]} unargmaxable,"
            f" {s[PRACTICAL]} practically unreachable, {s[UNDECIDED]} undecided in {s['seconds']:.1f} s",
            *round_trip_lines(report)]


def _rows(summary: dict, limit: int = 120) -> str:
    """`` (rows 5,7-9)`` when only some rows were audited (``--tokens``), so a reader sees which."""
    if summary["audited"] == summary["num_classes"]:
        return ""
    ids = summary["audited_ids"]
    return f" (rows {ids if len(ids) <= limit else ids[:limit].rsplit(',', 1)[0] + ',...'})"


def round_trip_lines(report: AuditReport) -> list[str]:
    """The input side in one line: how many audited tokens the tokenizer gives back ([] without a tokenizer)."""
    if report.round_trip is None:
        return []
    c = report.round_trip.counts(t.id for t in report.tokens)
    return [f"tokenizer round trip: {c['round_trip']} give back their own id, {c['not_round_trip']} do not,"
            f" {c['special']} only as special tokens" + (f", {c['no_token']} rows have no token" if c["no_token"]
                                                          else "")]


def round_trip_rows(report: AuditReport, gate: GateResult | None = None, style: Style = PLAIN):
    """One row of cells per audited token whose round trip fails (see :data:`ROUND_TRIP_COLUMNS`)."""
    verdicts = {t.id: t.verdict for t in report.tokens}
    for i in report.not_round_trip or ():
        got = report.round_trip.produced.get(i, ())
        shown = ", ".join(f"{j} " + (report.label(j) if j < report.num_classes else "") for j in got[:6])
        shown = f"[{shown}{', …' if len(got) > 6 else ''}]"
        status = gate.status(i) if gate is not None else ""
        yield str(i), style.literal(report.token_text(i)), verdicts[i], status, style.literal(shown)


def gate_lines(gate: GateResult | None) -> list[str]:
    """The gate's verdict, per category, and the baseline and ignores it applied (printable text)."""
    if gate is None:
        return []
    counted = ", ".join(f"{n} {v.replace('_', ' ')} (allowed {limit_text(gate.fail_on[v])}"
                        f"{': fails' if gate.exceeded(v) else ''})" for v, n in gate.counts.items())
    lines = [f"gate: {'PASSED' if gate.passed else 'FAILED'}: counted {counted}"]
    if gate.baseline:
        lines.append(printable(f"baseline {gate.baseline}: {len(gate.already_in_baseline)} already flagged there,"
                               f" {len(gate.recovered)} recovered")
                     + (f" ({id_list(gate.recovered)})" if gate.recovered else ""))
    if gate.ignored:
        lines.append(f"ignored: {len(gate.ignored)} token(s) ({id_list(gate.ignored)})")
    return lines


def rows(report: AuditReport, verdict: str, gate: GateResult | None = None, style: Style = PLAIN):
    """One row of cells per token with this verdict (see :data:`COLUMNS`); names and sentences in ``style``."""
    for t in report.tokens:
        if t.verdict == verdict:
            margin = "" if np.isnan(t.margin) else f"{t.margin:.3g}"
            name = style.literal(report.token_text(t.id))  # decoded text, raw piece, kind
            status = gate.status(t.id) if gate is not None else ""
            yield str(t.id), name, margin, probability_text(t), status, report.explain(t, style=style) + style.text(
                bias_raise_text(report, t.id))


def bias_raise_text(report: AuditReport, i: int) -> str:
    """'; a bias raise of more than 0.0123 makes it reachable (...)' for a flagged added token ('' otherwise)."""
    lower, sufficient = report.bias_raise.get(i, (None, None))
    if sufficient is None:
        return ""
    return (f"; raising its bias by more than {sufficient:.3g} makes it reachable"
            + (f" (by {lower:.3g} or less cannot)" if lower is not None else ""))


COLUMNS = ("id", "token", "margin", "max prob", "gate", "why")


def limit_text(value: float) -> str:
    return "any" if math.isinf(value) else str(int(value))


def id_list(ids: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f", … {len(ids) - shown} more" if len(ids) > shown else "")
