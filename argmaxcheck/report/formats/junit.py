"""JUnit XML: one test case per flagged token, failing when the gate counts it."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

from ..gate import GateResult
from ..model import ARGMAXABLE, AuditReport


def render(report: AuditReport, gate: GateResult) -> str:
    """JUnit XML: one test case per flagged token (failing when the gate counts it) and one for the rest."""
    cases = []
    counted = gate.counted()
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        case = ET.Element("testcase", classname=f"argmaxcheck.{t.verdict}",
                          name=f"{t.id} {report.token_text(t.id)}".strip(), time="0")
        if t.id in counted:
            failure = ET.SubElement(case, "failure", message=f"{t.verdict}: {report.explain(t)}", type=t.verdict)
            record = t.to_dict(report.names, report.special, None, report.display, report.token_kinds)
            failure.text = json.dumps(record, ensure_ascii=False)
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
