"""Report formatters: terminal (rich), plain text, Markdown, GitHub annotations, JUnit XML.

Each takes an :class:`AuditReport` (and, where the gate matters, a
:class:`GateResult`) and returns text, except :func:`print_terminal`, which
writes to a rich console. JSON is :meth:`AuditReport.to_dict`; HTML lives in
:mod:`argmaxcheck.html_report`.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import numpy as np

from .gate import GateResult
from .report import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult, escape_token

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
    counted = ", ".join(f"{n} {v.replace('_', ' ')} (allowed {_limit(gate.fail_on[v])})"
                        for v, n in gate.counts.items())
    lines = [f"gate: {'PASSED' if gate.passed else 'FAILED'}: counted {counted}"]
    if gate.baseline:
        lines.append(f"baseline {gate.baseline}: {len(gate.already_in_baseline)} already flagged there,"
                     f" {len(gate.recovered)} recovered" + (f" ({_ids(gate.recovered)})" if gate.recovered else ""))
    if gate.ignored:
        lines.append(f"ignored: {len(gate.ignored)} token(s) ({_ids(gate.ignored)})")
    return lines


def _rows(report: AuditReport, verdict: str):
    for t in report.tokens:
        if t.verdict == verdict:
            margin = "" if np.isnan(t.margin) else f"{t.margin:.3g}"
            name = escape_token(t.token) + (" [special]" if t.id in report.special else "")
            yield str(t.id), name, margin, probability_text(t), report.explain(t)


COLUMNS = ("id", "token", "margin", "max prob", "why")


def print_terminal(report: AuditReport, gate: GateResult | None = None, console=None, limit: int = 500) -> None:
    """The rich terminal report: summary, then one table per flagged category (``limit`` rows each)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = console or Console()
    # soft_wrap: summary lines stay whole (greppable) when the output is a pipe or a narrow terminal
    for k, line in enumerate(summary_lines(report) + gate_lines(gate)):
        style = "bold" if k == 2 else ("bold red" if line.startswith("gate: FAILED") else None)
        console.print(Text(line, style=style or ""), soft_wrap=True)
    for verdict, title in SECTIONS:
        rows = list(_rows(report, verdict))
        if not rows:
            continue
        table = Table(title=f"{title} ({len(rows)})", title_justify="left")
        for col in COLUMNS:
            table.add_column(col, overflow="fold", no_wrap=col in ("id", "margin"))
        for row in rows[:limit]:
            table.add_row(*(Text(cell) for cell in row))  # Text: no markup in token strings
        console.print(table)
        if len(rows) > limit:
            console.print(f"... and {len(rows) - limit} more (see --format json or --html)", markup=False)


def render_text(report: AuditReport, gate: GateResult | None = None) -> str:
    """Plain text: summary lines, then tab-separated rows (for files and pipes)."""
    lines = summary_lines(report) + gate_lines(gate)
    for verdict, _ in SECTIONS:
        lines += ["\t".join((*row[:2], verdict, *row[2:])) for row in _rows(report, verdict)]
    return "\n".join(lines) + "\n"


def render_markdown(report: AuditReport, gate: GateResult | None = None, limit: int = 100) -> str:
    """A pull-request comment: summary, gate and a table per flagged category."""
    s = report.summary()
    status = "" if gate is None else (" — gate passed" if gate.passed else " — **gate failed**")
    out = [f"## argmaxcheck: `{report.source or 'layer'}`{status}", "",
           "| argmaxable | unargmaxable | practically unreachable | undecided | seconds |",
           "|---:|---:|---:|---:|---:|",
           f"| {s[ARGMAXABLE]} | {s[UNARGMAXABLE]} | {s[PRACTICAL]} | {s[UNDECIDED]} | {s['seconds']:.1f} |", "",
           f"{s['num_classes']} classes × {s['dim']} dims, domain `{s['domain']['kind']}`.", ""]
    out += [f"- {line}" for line in gate_lines(gate)]
    for verdict, title in SECTIONS:
        rows = list(_rows(report, verdict))
        if not rows:
            continue
        out += ["", f"### {title} ({len(rows)})", "", "| " + " | ".join(COLUMNS) + " |",
                "|---:|---|---:|---:|---|"]
        out += ["| " + " | ".join(_md_cell(c, code=k == 1) for k, c in enumerate(row)) + " |" for row in rows[:limit]]
        if len(rows) > limit:
            out.append(f"\n… and {len(rows) - limit} more (see the JSON or HTML report).")
    return "\n".join(out) + "\n"


def render_github(report: AuditReport, gate: GateResult) -> str:
    """GitHub Actions workflow commands: an error per counted token, a notice with the summary."""
    lines = []
    counted = gate.counted()
    title = f"argmaxcheck {report.source}".strip()
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        level = "error" if t.id in counted else "notice"
        msg = f"token {t.id} {escape_token(t.token)} is {t.verdict.replace('_', ' ')}: {report.explain(t)}"
        if probability_text(t):
            msg += f" (highest probability it can reach: {probability_text(t)})"
        lines.append(f"::{level} title={_gh_property(title)}::{_gh_data(msg)}")
    summary = "; ".join(summary_lines(report) + gate_lines(gate))
    lines.append(f"::notice title={_gh_property(title)}::{_gh_data(summary)}")
    return "\n".join(lines) + "\n"


def render_junit(report: AuditReport, gate: GateResult) -> str:
    """JUnit XML: one test case per flagged token (failing when the gate counts it) and one for the rest."""
    cases = []
    counted = gate.counted()
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        case = ET.Element("testcase", classname=f"argmaxcheck.{t.verdict}",
                          name=f"{t.id} {escape_token(t.token)}".strip(), time="0")
        if t.id in counted:
            failure = ET.SubElement(case, "failure", message=f"{t.verdict}: {report.explain(t)}", type=t.verdict)
            failure.text = json.dumps(t.to_dict(report.names, report.special), ensure_ascii=False)
        else:
            ET.SubElement(case, "skipped", message="ignored or already flagged in the baseline")
        cases.append(case)
    ok = ET.Element("testcase", classname="argmaxcheck.argmaxable", name=f"{report.summary()[ARGMAXABLE]} argmaxable"
                    " tokens", time=f"{report.seconds:.3f}")
    cases.append(ok)
    suite = ET.Element("testsuite", name=f"argmaxcheck {report.source}".strip(), tests=str(len(cases)),
                       failures=str(len(counted)), errors="0",
                       skipped=str(sum(1 for c in cases if c.find("skipped") is not None)),
                       time=f"{report.seconds:.3f}")
    suite.extend(cases)
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"


def _limit(value: float) -> str:
    return "any" if math.isinf(value) else str(int(value))


def _ids(ids: list[int], shown: int = 10) -> str:
    return ", ".join(map(str, ids[:shown])) + (f", … {len(ids) - shown} more" if len(ids) > shown else "")


def _md_cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    if code and text:
        return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</code>"
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _gh_data(text: str) -> str:  # escaping rules of GitHub's workflow commands
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_property(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")
