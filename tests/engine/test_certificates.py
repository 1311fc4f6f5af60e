"""Certificates are checked independently: tampering is caught, and the saved file re-checks with numpy."""

import re
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import Ball, Box, Unbounded, audit
from argmaxcheck.engine import certify
from argmaxcheck.engine._blas import matvec, vecmat


def layer(rng):
    weight, bias = rng.normal(size=(200, 5)), rng.normal(size=200)
    return weight, bias


def test_genuine_certificates_pass_and_tampered_ones_fail(rng):
    weight, bias = layer(rng)
    report = audit(weight, bias)
    unarg = [t for t in report.tokens if t.verdict == "unargmaxable"]
    assert unarg
    dom = Unbounded()
    for t in unarg[:10]:
        assert certify.check_certificate(weight, bias, t.id, t.support, t.weights, dom).ok
        # On R^d the weights are re-derived exactly on the support: a perturbed start is
        # repaired to the genuine certificate, not taken on trust. On d + 1 rows that certificate
        # is unique; on more (the batched phase's deep certificates) any exact one will do.
        bad = t.weights.copy()
        bad[0], bad[-1] = bad[0] + 0.05, max(bad[-1] - 0.05, 0)
        repaired = certify.check_certificate(weight, bias, t.id, t.support, bad, dom)
        if repaired.ok and t.support.size == weight.shape[1] + 1:
            np.testing.assert_allclose(repaired.weights, t.weights, atol=1e-9)
        elif repaired.ok:
            v = repaired.weights @ weight[repaired.support] - weight[t.id]
            assert np.abs(v).max() < 1e-12 and repaired.weights.min() >= 0
        # swap in a different competitor
        others = np.setdiff1d(np.arange(200), np.r_[t.support, t.id])
        swapped = certify.check_certificate(weight, bias, t.id, np.r_[t.support[:-1], others[0]], t.weights, dom)
        if t.support.size == weight.shape[1] + 1:
            assert not swapped.ok
        elif swapped.ok:  # a deep certificate can lose a row and stay one: then it must really be one
            v = swapped.weights @ weight[swapped.support] - weight[t.id]
            assert np.abs(v).max() < 1e-12 and swapped.weights.min() >= 0
            assert swapped.weights @ bias[swapped.support] >= bias[t.id] - 1e-12
        # a certificate naming the token itself
        assert not certify.check_certificate(weight, bias, t.id, np.r_[t.support[:-1], t.id], t.weights, dom).ok


def test_tampered_weights_rejected_on_bounded_domain(rng):
    weight, bias = layer(rng)
    dom = Box.symmetric(1.0)
    report = audit(weight, bias, domain=dom)
    rejected = 0
    for t in [t for t in report.tokens if t.verdict == "unargmaxable" and t.support.size > 1][:10]:
        assert certify.check_certificate(weight, bias, t.id, t.support, t.weights, dom.resolve(5)).ok
        # move all the weight onto the lightest competitor
        bad = np.zeros_like(t.weights)
        bad[np.argmin(t.weights)] = 1.0
        check = certify.check_certificate(weight, bias, t.id, t.support, bad, dom.resolve(5))
        if not check.ok:
            rejected += 1
        else:  # then it really is a certificate on its own: the lone competitor wins everywhere
            j = t.support[np.argmin(t.weights)]
            corners = np.array(np.meshgrid(*[[-1.0, 1.0]] * 5)).reshape(5, -1).T
            assert np.all(corners @ (weight[j] - weight[t.id]) + bias[j] - bias[t.id] >= 0)
    assert rejected > 0


def test_tampered_bias_breaks_certificate(rng):
    weight, bias = layer(rng)
    report = audit(weight, bias)
    t = next(t for t in report.tokens if t.verdict == "unargmaxable" and t.margin < -0.05)
    raised = bias.copy()
    raised[t.id] += -t.margin + 0.01  # now the token beats the averaged competitor somewhere
    assert not certify.check_certificate(weight, raised, t.id, t.support, t.weights, Unbounded()).ok


def test_witnesses_are_checked(rng):
    weight, bias = layer(rng)
    report = audit(weight, bias, domain=Box.symmetric(3.0))
    dom = Box.symmetric(3.0).resolve(5)
    norms = np.linalg.norm(weight, axis=1)
    arg = [t for t in report.tokens if t.verdict == "argmaxable"]
    for t in arg[:20]:
        assert certify.check_witness(weight, bias, t.id, t.witness, dom, norms) > 0
        other = next(u for u in arg if u.id != t.id)
        assert certify.check_witness(weight, bias, t.id, other.witness, dom, norms) <= 0
        outside = t.witness.copy()
        outside[0] = 3.5
        assert certify.check_witness(weight, bias, t.id, outside, dom, norms) == -np.inf


def test_witnesses_checked_on_the_scores_a_caller_has_match_a_fresh_product(rng, monkeypatch):
    """The exact step hands its round's float64 scores to the check: the same bounds, no second product."""
    weight, bias = layer(rng)
    dom = Box.symmetric(3.0).resolve(weight.shape[1])
    norms = np.linalg.norm(weight, axis=1)
    report = audit(weight, bias, domain=Box.symmetric(3.0))
    found = [t for t in report.tokens if t.verdict == "argmaxable"][:8]
    rows = np.array([t.id for t in found])
    points = np.array([t.witness for t in found])
    points[1] = points[0]  # a point that is some other token's witness: no proof for this one
    points[2, 0] = 3.5  # outside the box
    fresh = certify.check_witnesses(weight, bias, rows, points, dom, norms)
    scores = certify.float64_scores(weight, bias, points)
    kept = scores.copy()

    def no_product(*args, **kwargs):
        raise AssertionError("the rows were read again")

    monkeypatch.setattr(certify, "rows_times", no_product)
    given = certify.check_witnesses(weight, bias, rows, points, dom, norms, scores=scores)
    np.testing.assert_array_equal(given, fresh)
    np.testing.assert_array_equal(scores, kept)
    assert (fresh[[0, *range(3, rows.size)]] > 0).all() and fresh[1] <= 0 and fresh[2] == -np.inf


def _twins(rng, n=400, d=16, apart=1e-6):
    """Rows with twins ``apart`` (relative) from them: a float32 score cannot tell a pair apart."""
    weight = rng.normal(size=(n, d))
    weight[1::2] = weight[0::2] * (1 + apart * rng.normal(size=(n // 2, d)))
    return weight, rng.normal(scale=0.1, size=n) * 0


def _exact_gap(weight, bias, row, x):
    from fractions import Fraction  # noqa: PLC0415

    xs = [Fraction(float(v)) for v in x]
    scores = [sum(Fraction(float(w)) * v for w, v in zip(r, xs, strict=True)) + Fraction(float(b))
              for r, b in zip(weight, bias, strict=True)]
    return scores[row] - max(s for j, s in enumerate(scores) if j != row)


def test_the_float32_witness_check_separates_twins_in_float64_and_is_never_fooled(rng):
    """Points a hair inside a token's cell, past a twin 1e-6 away: float32 scores alone cannot prove
    them; with the twin rescored in float64 they are proven, and every proven bound is below the exact
    gap (Fractions). Points a hair on the twin's side, where float32 sees a tie, are never proven."""
    weight, bias = _twins(rng)
    norms = np.linalg.norm(weight, axis=1)
    dom = Unbounded()
    rows = np.arange(0, 40, 2)
    towards = weight[rows] - weight[rows + 1]
    hair = towards / np.linalg.norm(towards, axis=1)[:, None]
    ahead = 30.0 * weight[rows] / norms[rows, None]
    ahead -= np.einsum("kd,kd->k", ahead, hair)[:, None] * hair  # level with the twin there
    inside = ahead + 0.5 * hair  # the token's side of the pair, ahead by 1e-8 of the logits
    outside = ahead - 0.5 * hair  # the twin's side
    gap_in, claimed_in = certify.check_witnesses_float32(weight, weight.astype(np.float32), bias, rows, inside, dom,
                                                          norms)
    gap_out, claimed_out = certify.check_witnesses_float32(weight, weight.astype(np.float32), bias, rows, outside,
                                                            dom, norms)
    lost = certify.check_witnesses(weight, bias, rows, claimed_out, dom, norms)
    assert np.all(claimed_in == claimed_in.astype(np.float32))  # float32 points are what is claimed
    # It proves what the float64 check proves at those points (some are beaten by other rows there),
    # and none on the twin's side.
    full = certify.check_witnesses(weight, bias, rows, claimed_in, dom, norms)
    np.testing.assert_array_equal(gap_in > 0, full > 0)
    assert (gap_in > 0).mean() > 0.5 and not (gap_out > 0).any()
    for k in np.flatnonzero(gap_in > 0)[:8]:
        assert gap_in[k] <= float(_exact_gap(weight, bias, rows[k], claimed_in[k]))
    assert not (lost > 0).any()
    for k in range(4):
        assert _exact_gap(weight, bias, rows[k], claimed_out[k]) < 0
    # The caller's own float32 scores of the claimed points give the same bounds, and stay as they were.
    scores32 = weight.astype(np.float32) @ claimed_in.T.astype(np.float32) + bias.astype(np.float32)[:, None]
    kept = scores32.copy()
    given, _ = certify.check_witnesses_float32(weight, weight.astype(np.float32), bias, rows, inside, dom, norms,
                                               scores32=scores32)
    np.testing.assert_array_equal(given, gap_in)
    np.testing.assert_array_equal(scores32, kept)


def _readme_recheck_snippet() -> str:
    readme = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    return next(b for b in blocks if "def recheck" in b)


@pytest.mark.parametrize("domain", [Unbounded(), Box(0.0, np.inf), Box.symmetric(2.0), Ball(1.5, 0.2)])
def test_saved_certificates_recheck_with_numpy_alone(rng, tmp_path, domain):
    """The numpy-only checker of docs/report-schema.md accepts the saved file, and rejects a tampered one."""
    weight, bias = layer(rng)
    report = audit(weight, bias, domain=domain)
    path = tmp_path / "certs.npz"
    report.save_certificates(path)
    namespace = {}
    exec(_readme_recheck_snippet(), namespace)
    recheck = namespace["recheck"]
    counts = recheck(str(path), weight, bias)
    assert counts == {"argmaxable": len(report.ids("argmaxable")),
                      "unargmaxable": len(report.unargmaxable)}
    data = dict(np.load(path))
    data["cert_weights"] = np.roll(data["cert_weights"], 1)
    np.savez(tmp_path / "bad.npz", **data)
    with pytest.raises(AssertionError):
        recheck(str(tmp_path / "bad.npz"), weight, bias)


def test_scipy_blas_products_match_numpy(rng):
    m = rng.normal(size=(300, 70))
    x, y = rng.normal(size=70), rng.normal(size=300)
    for matrix in (m, m[::2], np.asfortranarray(m), m.astype(np.float32)):
        np.testing.assert_allclose(matvec(matrix, x[: matrix.shape[1]]), matrix @ x[: matrix.shape[1]], rtol=1e-5)
        np.testing.assert_allclose(vecmat(y[: matrix.shape[0]], matrix), y[: matrix.shape[0]] @ matrix, rtol=1e-5)


def _exact_basis_solution(a_full, target, lam, basis):
    """x with a_full[:, basis] x = target - a_full[:, rest] lam[rest], in exact rationals."""
    from fractions import Fraction  # noqa: PLC0415

    neq, m = a_full.shape
    rest = [j for j in range(m) if j not in set(basis.tolist())]
    rows = []
    for i in range(neq):
        rhs = Fraction(float(target[i])) - sum(Fraction(float(a_full[i, j])) * Fraction(float(lam[j])) for j in rest)
        rows.append([Fraction(float(a_full[i, j])) for j in basis] + [rhs])
    for col in range(neq):  # Gauss-Jordan, exact
        pivot = next(r for r in range(col, neq) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(neq):
            if r != col and rows[r][col] != 0:
                f = rows[r][col] / rows[col][col]
                rows[r] = [x - f * y for x, y in zip(rows[r], rows[col], strict=True)]
    return [rows[i][neq] / rows[i][i] for i in range(neq)]


@pytest.mark.parametrize("seed", range(12))
def test_shared_basis_enclosure_holds_the_exact_solution(seed):
    """The enclosure's radius (blocked sums, entrywise bound through |C|) contains the exact
    rational solution, on well- and ill-conditioned bases, for several columns at once."""
    from fractions import Fraction  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    neq, m, cols = 5 + seed % 3, 30 + 7 * seed, 3
    a_full = rng.normal(size=(neq, m)) * 10.0 ** rng.integers(-3, 3, size=(neq, 1))
    a_full[-1] = 1.0
    if seed % 2:  # nearly dependent basis columns: condition number about 1e9
        a_full[:, 1] = a_full[:, 0] + 1e-9 * rng.normal(size=neq)
    lams = rng.dirichlet(np.ones(m), size=cols).T
    targets = a_full @ lams + 1e-7 * rng.normal(size=(neq, cols))  # lams are only near a solution
    basis = np.sort(rng.choice(m, size=neq, replace=False)) if seed % 2 == 0 else np.arange(neq)
    found = certify._enclose_columns(a_full, targets, lams, basis)
    assert found is not None
    mid, rad = found
    for b in range(cols):
        exact = _exact_basis_solution(a_full, targets[:, b], lams[:, b], basis)
        for i, j in enumerate(basis):
            assert abs(exact[i] - Fraction(float(mid[j, b]))) <= Fraction(float(rad[j, b])), (seed, b, i)
        assert rad[:, b].max() < 1e-3  # and not vacuous


@pytest.mark.parametrize("case", ["square", "one column", "no columns outside"])
def test_enclosure_edge_shapes_hold_the_exact_solution(case):
    from fractions import Fraction  # noqa: PLC0415

    rng = np.random.default_rng(3)
    neq = 5
    m = neq if case in ("square", "no columns outside") else 17
    a_full = rng.normal(size=(neq, m))
    a_full[-1] = 1.0
    lam = rng.dirichlet(np.ones(m))
    target = a_full @ lam + 1e-9 * rng.normal(size=neq)
    basis = np.arange(neq) if m == neq else np.sort(rng.choice(m, size=neq, replace=False))
    lams, targets = (lam, target) if case != "square" else (lam[:, None], target[:, None])
    mid, rad = certify._enclose_columns(a_full, targets, lams, basis)
    mid, rad = mid.reshape(m, -1)[:, 0], rad.reshape(m, -1)[:, 0]
    exact = _exact_basis_solution(a_full, target, lam, basis)
    for i, j in enumerate(basis):
        assert abs(exact[i] - Fraction(float(mid[j]))) <= Fraction(float(rad[j]))



def test_exact_differences_agree_with_rational_arithmetic(rng):
    """The TwoSum test says a difference is exact exactly when it is, float for float."""
    from fractions import Fraction  # noqa: PLC0415

    a = rng.normal(size=(40, 7))
    b = rng.normal(size=7)
    a32, b32 = a.astype(np.float32).astype(np.float64), b.astype(np.float32).astype(np.float64)
    for left, right in ((a32, b32), (a, b), (a32, b), (a32 * 2.0**-1060, b32 * 2.0**-1060)):
        diff = left - right
        exact = all(Fraction(float(x)) - Fraction(float(y)) == Fraction(float(z))
                    for x, y, z in zip(left.ravel(), np.broadcast_to(right, left.shape).ravel(), diff.ravel(),
                                       strict=True))
        assert certify._exact_differences(left, right, diff) == exact
    assert certify._exact_differences(a32, b32, a32 - b32)  # float32 values: always exact in float64
    assert not certify._exact_differences(a, b, a - b)
    nan = a32.copy()
    nan[3, 2] = np.nan
    assert not certify._exact_differences(nan, b32, nan - b32)


@pytest.mark.parametrize("domain", [Box(np.full(6, -0.3), np.full(6, np.inf)), Box(-np.ones(6), np.ones(6)),
                                    Ball(2.0)])
def test_certificates_sharing_one_support_are_checked_together_as_one_at_a_time(rng, domain, monkeypatch):
    """check_certificates (one support, a column of weights per token) proves what check_certificate
    proves: weights that hold, and weights that fail, which it hands to check_certificate itself (as
    it does any token whose intervals leave an open side undecided)."""
    n, d = 400, 6
    weight, bias = rng.normal(size=(n, d)), rng.normal(size=n)
    support = np.arange(100, 400)
    tokens = np.arange(40)
    lams = rng.dirichlet(np.ones(support.size), size=tokens.size).T  # the support's mean row, roughly
    weight[tokens] = lams.T @ weight[support] - 1e-3  # v = 1e-3 in every coordinate: signed for open sides
    bias[tokens] = lams.T @ bias[support] - 0.05 * (1 + rng.random(tokens.size))  # below its bias there
    lams[:, :5] = rng.dirichlet(np.ones(support.size), size=5).T  # other weights: some of these fail
    bias[35:40] += 10.0  # a bias no weights on the support reach
    resolved = domain.resolve(d)
    single = certify.check_certificate
    handed = []  # the tokens check_certificates leaves to check_certificate
    monkeypatch.setattr(certify, "check_certificate", lambda *a: handed.append(a[2]) or single(*a))
    together = certify.check_certificates(weight, bias, tokens, support, lams, resolved)
    monkeypatch.undo()
    assert len(handed) < tokens.size / 2  # most are decided together
    alone = [certify.check_certificate(weight, bias, int(t), support, lams[:, k], resolved)
             for k, t in enumerate(tokens)]
    assert [c.ok for c in together] == [c.ok for c in alone]
    assert sum(c.ok for c in together) >= 25 and not any(c.ok for c in together[35:])
    for a, b in zip(together, alone, strict=True):
        if a.ok:
            assert a.bound <= 0 and b.bound <= 0 and abs(a.bound - b.bound) <= 1e-9 * max(1.0, abs(b.bound))
            np.testing.assert_allclose(a.weights.sum(), 1.0, rtol=1e-12)
        else:
            assert a.reason == b.reason
    # A token named in its own support is refused as check_certificate refuses it.
    own = certify.check_certificates(weight, bias, np.array([150]), support, lams[:, :1], resolved)
    assert not own[0].ok and "token itself" in own[0].reason
