"""Max-probability brackets of unreachable tokens: true brackets, and the cone phase agrees with Frank-Wolfe."""

import json
import math

import numpy as np
import pytest
from cli_helpers import ROOT

from argmaxcheck import (
    Ball,
    Box,
)
from argmaxcheck.engine.probability import log_probability, max_probability

SCHEMA = json.loads((ROOT / "argmaxcheck" / "report" / "report.schema.json").read_text())


def test_max_probability_brackets_the_true_maximum(rng):
    weight = rng.normal(size=(40, 3))
    bias = 0.3 * rng.normal(size=40)
    weight[5] = weight[:4].mean(axis=0)
    domain = Box.symmetric(1.0).resolve(3)
    found = max_probability(weight, bias, 5, domain, rows=8)
    assert found is not None and 0 < found.reached <= found.upper * (1 + 1e-9)
    assert math.isclose(found.reached, math.exp(log_probability(weight, bias, 5, found.x)), rel_tol=1e-12)
    assert np.all(np.abs(found.x) <= 1.0)
    # Dense sampling of the box never beats the upper bound, and the bound is tight.
    grid = rng.uniform(-1, 1, size=(20000, 3))
    scores = grid @ weight.T + bias
    logp = scores[:, 5] - scores.max(axis=1) - np.log(np.exp(scores - scores.max(axis=1, keepdims=True)).sum(1))
    assert np.exp(logp.max()) <= found.upper * (1 + 1e-9)
    assert found.upper <= found.reached * (1 + 2e-4)


@pytest.mark.parametrize("domain", [Ball(1.0), Box.symmetric(1.0)], ids=["ball", "box"])
def test_max_probability_cone_phase_agrees_with_frank_wolfe(rng, domain):
    weight = rng.normal(size=(300, 6))
    weight[9] = weight[:5].mean(axis=0)
    bias = 0.2 * rng.normal(size=300)
    domain = domain.resolve(6)
    fw = max_probability(weight, bias, 9, domain)
    cone = max_probability(weight, bias, 9, domain, rows=64, fw_steps=1)  # almost all the work in cvxpy
    for found in (fw, cone):
        assert found.upper >= found.reached and found.upper <= found.reached * (1 + 2e-4)
    assert cone.reached <= fw.upper * (1 + 1e-9) and fw.reached <= cone.upper * (1 + 1e-9)


@pytest.mark.parametrize("left", [0.1, 30.0])
def test_a_restricted_solve_starts_only_where_the_budget_holds_it(rng, monkeypatch, left):
    """cvxpy's set-up is not under the solver's time limit: a restricted solve starts only while the
    budget left holds four times what the Frank-Wolfe phase took (a bracket from that phase is returned
    instead), so the stage keeps its deadline."""
    import time  # noqa: PLC0415

    import cvxpy as cp  # noqa: PLC0415

    from argmaxcheck.engine import probability  # noqa: PLC0415

    weight = rng.normal(size=(200, 5))
    weight[3] = weight[:6].mean(axis=0)
    domain = Ball(1.0).resolve(5)
    phase = probability._frank_wolfe

    def slow_phase(*args, **kwargs):  # 0.2 s, and a bracket left wide open
        time.sleep(0.2)
        x, lower, _ = phase(*args, **kwargs)
        return x, lower - 1.0, lower + 1.0

    solves = []
    solve = cp.Problem.solve

    def counted(self, *args, **kwargs):
        solves.append(kwargs.get("time_limit"))
        return solve(self, *args, **kwargs)

    monkeypatch.setattr(probability, "_frank_wolfe", slow_phase)
    monkeypatch.setattr(cp.Problem, "solve", counted)
    found = max_probability(weight, None, 3, domain, rows=16, deadline=time.perf_counter() + 0.2 + left)
    assert found is not None and 0 < found.reached <= found.upper
    assert (len(solves) > 0) == (left > 1)
