"""AuditOptions and ExactOptions check themselves when they are made, whatever stages later run."""

import pytest

from argmaxcheck import AuditOptions, ExactOptions, InputError, audit
from argmaxcheck.engine import STAGES


@pytest.mark.parametrize("kwargs, fragment", [
    ({"device": "cdua"}, "unknown device 'cdua'"),
    ({"precision": "float23"}, "unknown precision 'float23'"),
    ({"precision": 16}, "unknown precision"),
    ({"block_bytes": 0}, "block_bytes must be a whole number >= 1"),
    ({"probability_seconds": float("nan")}, "probability_seconds must be a finite number"),
    ({"probability_seconds": -1.0}, "probability_seconds"),
    ({"exact": {"max_rounds": 3}}, "must be an ExactOptions"),
])
def test_bad_audit_options_are_refused_on_construction(kwargs, fragment):
    with pytest.raises(InputError, match=fragment):
        AuditOptions(**kwargs)


@pytest.mark.parametrize("kwargs", [{"max_rounds": -1}, {"seed_steps": 1.5}, {"time_limit": 0.0},
                                    {"initial_rows": True}])
def test_bad_exact_options_are_refused(kwargs):
    with pytest.raises(InputError):
        ExactOptions(**kwargs)


def test_good_options_and_the_stage_list():
    AuditOptions(device="torch-cpu", precision="torch.bfloat16", exact=ExactOptions(max_rounds=5))
    assert [s.__module__.rsplit(".", 1)[1] for s in STAGES] == [
        "ties", "screen", "batched", "polish", "clusters", "seeding", "polish", "block_exact", "exact", "narrow",
        "probability"]
    with pytest.raises(InputError, match="must be an AuditOptions"):
        audit([[1.0, 0.0], [0.0, 1.0]], options={"device": "cpu"})
