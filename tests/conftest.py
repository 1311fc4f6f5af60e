"""Fixtures shared by every test folder (tests/ is on sys.path: the *_helpers modules import from here)."""

import numpy as np
import pytest
from scipy.optimize import linprog

from argmaxcheck.layer import OutputLayer


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def full_lp_radius(weight, bias, i, lower, upper):
    """Reference: the Chebyshev LP over every row at once, solved by scipy's HiGHS."""
    n, d = weight.shape
    mask = np.arange(n) != i
    a = weight[mask] - weight[i]
    norm = np.linalg.norm(a, axis=1)
    c = np.zeros(n - 1) if bias is None else bias[i] - bias[mask]
    a_ub = np.column_stack([a / norm[:, None], np.ones(n - 1)])
    bounds = [(lo, hi) for lo, hi in zip(lower, upper, strict=True)] + [(None, 1.0)]
    res = linprog(np.r_[np.zeros(d), -1.0], A_ub=a_ub, b_ub=c / norm, bounds=bounds, method="highs")
    assert res.status == 0
    return -res.fun


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if the CLI reads the model or audits: these errors must come first."""
    from argmaxcheck import cli  # noqa: PLC0415

    def forbidden(*_args, **_kwargs):
        raise AssertionError("the model was read or audited before the options and output targets were checked")

    monkeypatch.setattr(cli, "load_source", forbidden)
    monkeypatch.setattr(cli, "audit", forbidden)


@pytest.fixture
def planted(rng):
    """60 rows in 4-D with bias; row 7 is an average of rows 0-2, rows 20/21 tie, row 30 is '<unused>'."""
    weight = rng.normal(size=(60, 4))
    bias = 0.1 * rng.normal(size=60)
    weight[7] = weight[:3].mean(axis=0)
    bias[7] = bias[:3].mean() - 0.05
    weight[21], bias[21] = weight[20], bias[20]
    weight[30], bias[30] = weight[3], bias[3] - 1.0  # dominated by row 3
    names = [f"tok{i}" for i in range(60)]
    names[30] = "<unused>"
    return OutputLayer.from_arrays(weight, bias, names)
