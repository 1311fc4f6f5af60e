"""JUnit XML: one test case per flagged token, failing exactly when it fails the gate.

Well-formed for any token: names and messages are printable text (no
character XML 1.0 forbids), and the JSON record in a failure escapes the
rest (:func:`~argmaxcheck.report.escape.xml_safe`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from ..escape import json_text, printable, xml_safe
from ..gate import GateResult
from ..model import ARGMAXABLE, AuditReport

_SKIPPED = {"ignored": "ignored (--ignore)", "in baseline": "already flagged in the baseline"}


def render(report: AuditReport, gate: GateResult) -> str:
    """JUnit XML: a test case per flagged token and one for the rest; ``failures`` is the number failing the gate.

    A token fails when the gate fails on its category (see
    :meth:`GateResult.failures`); a counted token within its category's
    threshold, an ignored one and one already in the baseline are skipped,
    with the reason.
    """
    cases = []
    for t in report.tokens:
        if t.verdict == ARGMAXABLE:
            continue
        case = ET.Element("testcase", classname=f"argmaxcheck.{t.verdict}",
                          name=printable(f"{t.id} {report.token_text(t.id)}".strip()), time="0")
        status = gate.status(t.id)
        if status == "fails":
            failure = ET.SubElement(case, "failure", message=f"{t.verdict}: {report.explain(t)}", type=t.verdict)
            record = t.to_dict(report.names, report.special, None, report.display, report.token_kinds)
            failure.text = xml_safe(json_text(record, indent=None))
        else:
            limit = gate.fail_on[t.verdict]
            reason = _SKIPPED.get(status) or (f"counted, within --fail-on {t.verdict}="
                                              f"{'never' if math.isinf(limit) else int(limit)}"
                                              f" ({gate.counts[t.verdict]} counted)")
            ET.SubElement(case, "skipped", message=reason)
        cases.append(case)
    # The input side, when the gate counts it: a case per token the tokenizer does not give back.
    for i in gate.failing.get("not_round_trip", ()):
        case = ET.Element("testcase", classname="argmaxcheck.not_round_trip",
                          name=printable(f"{i} {report.token_text(i)}".strip()), time="0")
        got = list(report.round_trip.produced.get(i, ())) if report.round_trip is not None else []
        if gate.exceeded("not_round_trip"):
            failure = ET.SubElement(case, "failure", type="not_round_trip",
                                    message=f"not_round_trip: its text encodes to {got}")
            failure.text = xml_safe(json_text({"id": i, "round_trip": False, "round_trip_ids": got}, indent=None))
        else:
            limit = gate.fail_on["not_round_trip"]
            ET.SubElement(case, "skipped", message=f"counted, within --fail-on not_round_trip="
                                                   f"{'never' if math.isinf(limit) else int(limit)}")
        cases.append(case)
    ok = ET.Element("testcase", classname="argmaxcheck.argmaxable", name=f"{report.summary()[ARGMAXABLE]} argmaxable"
                    " tokens", time=f"{report.seconds:.3f}")
    cases.append(ok)
    suite = ET.Element("testsuite", name=printable(f"argmaxcheck {report.source}".strip()), tests=str(len(cases)),
                       failures=str(sum(1 for c in cases if c.find("failure") is not None)), errors="0",
                       skipped=str(sum(1 for c in cases if c.find("skipped") is not None)),
                       time=f"{report.seconds:.3f}")
    suite.extend(cases)
    return ET.tostring(ET.ElementTree(suite).getroot(), encoding="unicode", xml_declaration=True) + "\n"
