"""The audit reports every stage it runs, with totals it then reaches (what the progress display shows)."""

import numpy as np

from argmaxcheck import AuditOptions, Ball, audit


class _Recorder:
    def __init__(self):
        self.stages = []

    def stage(self, name, total):
        self.stages.append([name, total, 0])

    def advance(self, n=1):
        self.stages[-1][2] += n


def test_every_stage_is_announced_and_completed():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(3000, 24))
    weight[5] = weight[:40].mean(axis=0)  # inside the hull: reaches the exact step
    weight[7] = weight[8]  # same weights, different bias: one is dominated
    recorder = _Recorder()
    audit(weight, rng.normal(size=3000) * 0.1, domain=Ball(3.0), progress=recorder,
          options=AuditOptions(probability_seconds=5.0))
    names = [s[0] for s in recorder.stages]
    assert names[0] == "identical rows" and names[1].startswith("screen")
    assert {"seeding the exact step", "exact step", "best margins of narrow winners",
            "highest probabilities (time budget)"} <= set(names)
    for name, total, done in recorder.stages:
        assert done == total, (name, total, done)
    assert recorder.stages[0][1] == 1 and recorder.stages[1][1] == 2999  # row 7 or 8 is dominated


def test_a_plain_callable_still_hears_the_counts():
    seen = []
    audit(np.random.default_rng(1).normal(size=(50, 4)), progress=seen.append)
    assert sum(seen) >= 50
