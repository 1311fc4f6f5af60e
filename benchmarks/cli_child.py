"""``python -m argmaxcheck``, with every token's stage and verdict added to its JSON report.

The JSON report lists only the flagged tokens; bench_families.py also needs the argmaxable ones' stages
(to draw its ``--exact-all`` samples from every stage). This runs the CLI unchanged and adds one key,
``token_stages``: ``{stage: {verdict: [ids]}}`` over every audited token.

Usage: ``python benchmarks/cli_child.py audit FILE --json OUT ...`` (the arguments of ``argmaxcheck``).
"""

from __future__ import annotations

from argmaxcheck.cli import main
from argmaxcheck.report import model

_to_dict = model.AuditReport.to_dict


def _with_stages(self, *args, **kwargs) -> dict:
    out = _to_dict(self, *args, **kwargs)
    groups: dict[str, dict[str, list[int]]] = {}
    for t in self.tokens:
        groups.setdefault(t.stage, {}).setdefault(t.verdict, []).append(int(t.id))
    out["token_stages"] = groups
    return out


model.AuditReport.to_dict = _with_stages

if __name__ == "__main__":
    raise SystemExit(main())
