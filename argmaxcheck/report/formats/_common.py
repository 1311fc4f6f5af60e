"""What the human formats share: section titles, summary and gate lines, one row per flagged token."""

from __future__ import annotations

import json
import math

import numpy as np

from ..gate import GateResult
from ..model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult

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
    s = report.summary()
    dom = s["domain"]
    dom_text = dom["kind"] + ("" if dom["kind"] == "unbounded" else
                              f" {json.dumps({k: v for k, v in dom.items() if k != 'kind'})}")
    return [f"{report.source or 'layer'}: {s['num_classes']} classes x {s['dim']} dims"
            f" ({s['source_dtype']}{', bias' if s['bias'] else ''})",
            f"domain: {dom_text}",
            f"audited {s['audited']}: {s[ARGMAXABLE]} argmaxable, {s[UNARGMAXABLE]} unargmaxable,"
            f" {s[PRACTICAL]} practically unreachable, {s[UNDECIDED]} undecided in {s['seconds']:.1f} s"]


def gate_lines(gate: GateResult | None) -> list[str]:
    if gate is None:
        return []
    counted = ", ".join(f"{n} {v.replace('_', ' ')} (allowed {limit_text(gate.fail_on[v])})"
                        for v, n in gate.counts.items())
    lines = [f"gate: {'PASSED' if gate.passed else 'FAILED'}: counted {counted}"]
    if gate.baseline:
        lines.append(f"baseline {gate.baseline}: {len(gate.already_in_baseline)} already flagged there,"
                     f" {len(gate.recovered)} recovered" + (f" ({id_list(gate.recovered)})" if gate.recovered else ""))
    if gate.ignored:
        lines.append(f"ignored: {len(gate.ignored)} token(s) ({id_list(gate.ignored)})")
    return lines


def rows(report: AuditReport, verdict: str):
    for t in report.tokens:
        if t.verdict == verdict:
            margin = "" if np.isnan(t.margin) else f"{t.margin:.3g}"
            name = report.token_text(t.id)
            yield str(t.id), name, margin, probability_text(t), report.explain(t)


COLUMNS = ("id", "token", "margin", "max prob", "why")


def limit_text(value: float) -> str:
    return "any" if math.isinf(value) else str(int(value))


def id_list(ids: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f", … {len(ids) - shown} more" if len(ids) > shown else "")
