"""Chunked and resumed audits give the plain audit's report, field by field (display and kinds included)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from report_helpers import assert_same_report

from argmaxcheck import AuditOptions, OutputLayer, audit
from argmaxcheck.report.stats import AuditStats, StageStats
from argmaxcheck.runner import audit_sharded

OPTIONS = AuditOptions(probability_seconds=0.0)


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(5)
    weight = rng.normal(size=(40, 4))
    weight[20:28] = rng.dirichlet(np.ones(3), size=8) @ weight[:3]  # inside the hull
    weight[30] = weight[31]  # a tie
    names = [f"p{i}" for i in range(40)]
    return dataclasses.replace(OutputLayer.from_arrays(weight, None, names), display=[f"text {i}" for i in range(40)],
                               token_kinds={0: "control", 5: "byte"}, special=frozenset({0}))


def test_chunked_and_resumed_reports_equal_the_plain_one(layer, tmp_path):
    plain = audit(layer, options=OPTIONS)
    assert plain.display and plain.token_kinds == {0: "control", 5: "byte"}
    chunked = audit_sharded(layer, chunk_size=7, options=OPTIONS)
    assert_same_report(chunked, plain)
    assert chunked.stats.run.chunks == 6 and chunked.stats.run.chunks_from_journal == 0
    audit_sharded(layer, chunk_size=7, options=OPTIONS, journal=tmp_path / "j")
    resumed = audit_sharded(layer, chunk_size=7, options=OPTIONS, journal=tmp_path / "j")
    assert resumed.stats.run.chunks_from_journal == 6
    assert_same_report(resumed, plain)
    assert_same_report(resumed, chunked, same_split=True)  # the same chunks: every proof and stage record
    recheck = resumed.stats.stage("recheck")  # every proof from the journal was checked again, none failed
    assert (recheck.tokens_in, recheck.settled) == (40, 0)
    # The stage records add up over the chunks: every token went into the first stage once.
    assert chunked.stats.stage("ties").tokens_in == plain.stats.stage("ties").tokens_in == 40


def test_stage_records_merge_without_dropping_a_field():
    a = StageStats("exact", 3, 2, 1.5, {"seeding": 0.5}, {"ipm": 2}, (0.1, 0.2, 0.3))
    b = StageStats("exact", 1, 1, 0.5, {"seeding": 0.25, "other": 1.0}, {"highs": 1}, (0.4,))
    merged = a.merge(b)
    assert merged == StageStats("exact", 4, 3, 2.0, {"seeding": 0.75, "other": 1.0}, {"ipm": 2, "highs": 1},
                                (0.1, 0.2, 0.3, 0.4))
    # Every field of the record is handled by merge: a new field without a rule would fail here.
    assert {f.name for f in dataclasses.fields(StageStats)} == {"name", "tokens_in", "settled", "seconds", "parts",
                                                                 "counts", "token_seconds"}
    stats = AuditStats((a,)).merge(AuditStats((StageStats("screen", 5, 5, 1.0), b)))
    assert [s.name for s in stats.stages] == ["exact", "screen"] and stats.stage("exact") == merged
    assert AuditStats.from_state(stats.to_state()) == stats
    timings = stats.timings()
    assert timings["exact_tokens"] == 4 and timings["screen_tokens"] == 5 and timings["exact_highs"] == 1
    assert timings["exact_median_seconds"] == 0.25 and timings["exact_seeding_seconds"] == 0.75
    with pytest.raises(ValueError):
        a.merge(StageStats("screen"))
