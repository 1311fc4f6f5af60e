"""Field-by-field comparison of two reports of the same audit, run in different ways."""

from __future__ import annotations

import dataclasses

import numpy as np

from argmaxcheck.report import AuditReport

# What may differ between two runs of the same audit: how long it took, and how the work was split.
RUN_FIELDS = {"seconds", "stats", "device", "device_note"}
# A token's proof: which certificate the exact step finds depends on the tokens solved before it in
# the same run (its last support seeds the next working set), so chunking may change it; both are
# checked, and both must be there.
PROOF_FIELDS = {"witness", "support", "weights", "margin", "check", "best_margin", "threshold"}
# Which stage found a proof, for runs split differently (runner/sharded.py says so): the batched
# phase picks its kind of support on a pass's first block, which is another set of tokens in
# each chunk (a 7-token chunk's first kind settled under a quarter of it and the second kind then
# settled a row the unchunked run left to the exact step).
PROVENANCE_FIELDS = {"stage"}


def assert_same_report(got: AuditReport, want: AuditReport, same_split: bool = False) -> None:
    """Every field of the report and of every token equal (arrays exactly), except :data:`RUN_FIELDS`;
    the stage records agree on which stages ran and what each settled. Proofs, the stage that found
    each and the stage records' counts are compared exactly only for runs split into the same chunks
    (``same_split``), else for presence (and the settled tokens' total)."""
    for f in dataclasses.fields(AuditReport):
        if f.name in RUN_FIELDS or f.name == "tokens":
            continue
        assert getattr(got, f.name) == getattr(want, f.name), f.name
    assert len(got.tokens) == len(want.tokens)
    for a, b in zip(got.tokens, want.tokens, strict=True):
        for f in dataclasses.fields(a):
            x, y = getattr(a, f.name), getattr(b, f.name)
            if f.name in PROOF_FIELDS and not same_split:
                assert (x is None) == (y is None), (a.id, f.name)
                assert not isinstance(x, float) or np.isnan(x) == np.isnan(y), (a.id, f.name)
            elif f.name in PROVENANCE_FIELDS and not same_split:
                assert (x is None) == (y is None), (a.id, f.name)
            elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                np.testing.assert_array_equal(x, y, err_msg=f"token {a.id}: {f.name}")
            elif isinstance(x, float) and np.isnan(x):
                assert np.isnan(y), (a.id, f.name)
            else:
                assert x == y, (a.id, f.name, x, y)
    # A journal's or a worker's chunks add a "recheck" record of their own (the proofs checked again).
    settled = {s.name: s.settled for s in got.stats.stages if s.name != "recheck"}
    wanted = {s.name: s.settled for s in want.stats.stages if s.name != "recheck"}
    if same_split:
        assert settled == wanted
    else:  # every token settled once, by some stage
        assert sum(settled.values()) == sum(wanted.values())
    assert got.to_dict().keys() == want.to_dict().keys()
