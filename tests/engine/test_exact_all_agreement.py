"""The staged audit (identical rows, screen, exact step, best margins) gives the verdicts of
--exact-all, which skips every shortcut and sends each token through the per-token solver.

Tokens are drawn from every (stage, verdict) group, so a stage that returned an unchecked or
wrong verdict shows up as a disagreement. benchmarks/check_exact_all.py runs the same
comparison on the real Whisper and SmolLM2 heads.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, OutputLayer, Unbounded, audit
from argmaxcheck.sources import load_source

ROOT = Path(__file__).resolve().parents[2]


def _agree_on_every_stage(layer, domain, per_group: int, seed: int = 0) -> dict:
    staged = audit(layer, domain=domain, options=AuditOptions(probability_seconds=0))
    groups = defaultdict(list)
    for t in staged.tokens:
        groups[(t.stage, t.verdict)].append(t.id)
    rng = np.random.default_rng(seed)
    drawn = sorted(int(i) for ids in groups.values() for i in rng.choice(ids, min(per_group, len(ids)), replace=False))
    reference = audit(layer, domain=domain, tokens=drawn, options=AuditOptions(exact_all=True, probability_seconds=0))
    verdict = {t.id: t.verdict for t in staged.tokens}
    wrong = {t.id: (verdict[t.id], t.verdict) for t in reference.tokens if t.verdict != verdict[t.id]}
    assert not wrong, f"staged vs exact-all verdicts differ: {wrong}"
    return groups


def _layer_with_every_stage(rng, n=400, d=16):
    """Planted interior rows, exact duplicates (ties), a row dominated by its twin's larger bias,
    near-duplicates, a cluster of them and a narrow winner, with a bias."""
    weight = rng.normal(size=(n, d))
    bias = rng.normal(scale=0.1, size=n)
    for i in range(6):  # deep inside the hull
        rows = rng.choice(np.arange(50, n), size=3 * d, replace=False)
        weight[i] = rng.dirichlet(np.ones(rows.size)) @ weight[rows]
    weight[10] = weight[11]  # identical rows and biases: a tie
    bias[10] = bias[11]
    weight[12] = weight[13]  # identical rows, smaller bias: dominated
    bias[12] = bias[13] - 0.5
    weight[14] = weight[15] + 1e-7 * rng.normal(size=d)  # near-duplicate
    weight[16] = 0.5 * (weight[17] + weight[18]) + 1e-6 * rng.normal(size=d)  # narrow winner or loser
    cluster = np.arange(20, 26)  # a cluster of near-duplicates inside the hull, as untrained classes are
    weight[cluster] = weight[50:].mean(axis=0) + 1e-7 * rng.normal(size=(cluster.size, d))
    bias[cluster] = bias.min() - 0.1 + 1e-8 * rng.normal(size=cluster.size)
    return weight, bias


@pytest.mark.parametrize("domain", [Unbounded(), Ball(3.0), Box(-2.0, 2.0), Box(0.0, np.inf)],
                         ids=["R^d", "ball", "box", "half-open box"])
def test_every_stage_agrees_with_exact_all_on_a_layer_with_every_kind_of_row(rng, domain):
    weight, bias = _layer_with_every_stage(rng)

    groups = _agree_on_every_stage(OutputLayer.from_arrays(weight, bias), domain, per_group=8)
    stages = {stage for stage, _ in groups}
    assert {"screen", "tie", "dominated"} <= stages
    assert stages & {"cluster", "batched"}  # on R^d the batched phase settles the deep cluster first


def test_every_stage_agrees_with_exact_all_on_the_bundled_ocr_head():
    layer = load_source(ROOT / "data" / "ppocrv4_rec_head.npz").layer
    groups = _agree_on_every_stage(layer, Unbounded(), per_group=6)
    assert {("screen", "argmaxable"), ("exact", "argmaxable"), ("exact", "unargmaxable")} <= set(groups)
