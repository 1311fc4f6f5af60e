import numpy as np
import pytest
from scipy.optimize import linprog


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
