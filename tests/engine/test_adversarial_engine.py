"""Inputs that once gave wrong verdicts or tracebacks: each verdict must be right and checked.

Every argmaxable verdict is re-checked here with a plain float64 product at its witness, and every
unargmaxable one with its convex certificate, independently of the engine.
"""

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, InputError, Unbounded, audit

FAST = AuditOptions(probability_seconds=0.0)


def _recheck(report, weight, bias, domain):
    """Plain float64 re-check of every verdict (witness wins; certificate's average beats the token)."""
    w = np.asarray(weight, dtype=np.float64)
    b = np.zeros(len(w)) if bias is None else np.asarray(bias, dtype=np.float64)
    for t in report.tokens:
        if t.verdict == "argmaxable":
            assert np.isfinite(t.margin) and t.margin > 0, (t.id, t.margin)
            x = t.witness
            assert np.isfinite(x).all()
            if isinstance(domain, Ball):
                assert np.linalg.norm(x - domain.center) <= domain.radius
            s = w @ x + b
            assert s[t.id] > np.delete(s, t.id).max(), f"witness of token {t.id} does not win"
        elif t.verdict == "unargmaxable":
            lam = t.weights
            assert np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-9 and t.id not in t.support


def test_rows_a_hair_apart_at_large_scale_are_decided():
    """|a|^2 - 2a.b + |b|^2 cancels for rows near 1e4 that differ by 1e-4: the midpoint with a lower
    bias was left undecided (competitors dropped as duplicates); it is unargmaxable."""
    rng = np.random.default_rng(1)
    for _ in range(3):
        w = rng.normal(size=(30, 8))
        w[0] = 1e4 + np.round(rng.normal(size=8) * 1e3) / 1024
        w[2] = w[0] + np.round(rng.normal(size=8) * 64) / 2**20
        w[1] = (w[0] + w[2]) / 2
        assert np.array_equal(2 * w[1], w[0] + w[2])
        b = rng.normal(size=30)
        b[0] = b[2] = 5.0
        b[1] = 5.0 - 1e-3
        for bias in (b, None):
            report = audit(w, bias, options=FAST)
            assert report.tokens[1].verdict == "unargmaxable"
            _recheck(report, w, bias, Unbounded())


@pytest.mark.parametrize("with_bias", [True, False])
def test_tiny_layer_gets_the_verdicts_of_the_layer_at_unit_scale(with_bias):
    """A layer scaled by 1e-200 once had 250 of 251 'argmaxable' witnesses that do not win
    (float32 scales overflowed to inf, and inf gaps were accepted); without bias it crashed."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(251, 16))
    b = rng.normal(size=251) if with_bias else None
    ref = audit(w, b, options=FAST)
    for factor in (1e-200, 1e-300, 1e200, 1e300):
        scaled_b = None if b is None else b * factor
        report = audit(w * factor, scaled_b, options=FAST)
        assert [t.verdict for t in report.tokens] == [t.verdict for t in ref.tokens]
        _recheck(report, w * factor, scaled_b, Unbounded())


def test_power_of_two_scaling_changes_nothing_but_margin_units():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(60, 12)), rng.normal(size=60)
    ref = audit(w, b, options=FAST).tokens
    for k in (-1000, -600, -60, 60, 600, 1000):
        got = audit(np.ldexp(w, k), np.ldexp(b, k), options=FAST).tokens
        assert [t.verdict for t in got] == [t.verdict for t in ref]
        assert [np.ldexp(t.margin, -k) for t in got] == pytest.approx([t.margin for t in ref], rel=1e-12)


@pytest.mark.parametrize("factor", [1e307, 1e-320])
@pytest.mark.parametrize("domain", [Unbounded(), Ball(1.0), Box.symmetric(1.0)])
def test_extreme_magnitudes_are_audited_not_crashed(factor, domain):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(10, 4)) * factor
    report = audit(w, None, domain=domain, options=FAST)
    assert len(report.tokens) == 10 and not report.undecided
    _recheck(report, w, None, domain.resolve(4))


def test_single_row_is_a_clear_error_and_two_rows_are_decided():
    with pytest.raises(InputError, match="1 row"):
        audit(np.ones((1, 4)))
    rng = np.random.default_rng(4)
    for bias in (None, np.array([0.0, 1.0])):
        w = rng.normal(size=(2, 4))
        report = audit(w, bias, options=FAST)
        assert report.all_argmaxable
        _recheck(report, w, bias, Unbounded())


def test_identical_rows_with_different_bias():
    """One weight vector for every row: the best bias wins everywhere by its lead; the rest never."""
    w = np.ones((3, 4))
    report = audit(w, np.array([0.0, 2.0, 1.5]), options=FAST)
    assert [t.verdict for t in report.tokens] == ["unargmaxable", "argmaxable", "unargmaxable"]
    assert report.tokens[1].margin == pytest.approx(0.5)


def test_all_zero_layer_and_unscalable_range_are_refused():
    with pytest.raises(InputError, match="zero"):
        audit(np.zeros((3, 2)))
    w = np.array([[1e300, 0.0], [5e-324, 1.0], [0.0, -1.0]])
    with pytest.raises(InputError, match="orders of magnitude"):
        audit(w)


def test_wide_layer_needs_no_d_by_d_matrix():
    """d much larger than n: the screen's whitening works in the span of the rows."""
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 40000))
    report = audit(w, options=FAST)
    assert report.all_argmaxable
    _recheck(report, w, None, Unbounded())


def test_modules_with_a_weight_are_audited():
    torch = pytest.importorskip("torch")
    from argmaxcheck import assert_all_argmaxable  # noqa: PLC0415

    torch.manual_seed(0)
    head = torch.nn.Linear(4, 10)
    report = audit(head, options=FAST)
    assert report.num_classes == 10 and report.summary()["bias"]
    _recheck(report, head.weight.detach().double().numpy(), head.bias.detach().double().numpy(), Unbounded())
    assert assert_all_argmaxable(torch.nn.Linear(4, 6), options=FAST).all_argmaxable


@pytest.mark.parametrize("scale", [1.0, 2.0**-40, 2.0**40])
@pytest.mark.parametrize("domain,with_bias", [(Ball(4.0), False), (Ball(4.0), True), (Unbounded(), False)])
def test_float32_average_gets_one_category_on_every_bounded_view(domain, with_bias, scale):
    """A row overwritten with the float32 average of two others sits a hair off their segment.
    It was 'undecided' bias-free (radius ~1e-9, below the solvers' tolerances) but 'practically
    unreachable' with a bias: now a tighter pass finds its float64 witness in both cases."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(200, 16)).astype(np.float32)
    w[7] = ((w[3].astype(np.float64) + w[5]) / 2).astype(np.float32)
    bias = (w.astype(np.float64) @ rng.normal(size=16)) * 0.1 if with_bias else None
    # The same layer in other units (exact powers of two): the label must not depend on them.
    w = w * np.float32(scale)
    bias = None if bias is None else bias * scale
    report = audit(w, bias, domain=domain, options=FAST)
    assert report.tokens[7].verdict == "practically_unreachable"
    assert report.tokens[7].best_margin < report.tokens[7].threshold
    _recheck(report, w, bias, domain.resolve(16))


def test_explain_never_proposes_a_negative_bias_increase():
    from pathlib import Path  # noqa: PLC0415

    from argmaxcheck import explain_token  # noqa: PLC0415
    from argmaxcheck.sources import load_source  # noqa: PLC0415

    loaded = load_source(Path(__file__).resolve().parents[2] / "data" / "tiny-gpt2")
    _, why = explain_token(loaded.layer, loaded.domain, 203)
    assert why.result.verdict == "practically_unreachable"
    assert 0.0 <= why.bias_increase_lower <= why.bias_increase


def test_identical_rows_are_grouped_exactly_even_when_fingerprints_collide():
    from argmaxcheck.engine._fingerprint import row_groups  # noqa: PLC0415

    w = np.array([[1.0, 2.0], [2.0, 1.0], [1.0, 2.0], [3.0, 0.5], [2.0, 1.0]])
    # Multipliers of 1 make the fingerprint the sum of the bit patterns: (a, b) and (b, a) collide.
    group = row_groups(w, mult=np.ones(2, dtype=np.uint64))
    assert group[0] == group[2] and group[1] == group[4] and len({group[0], group[1], group[3]}) == 3
    assert len(set(row_groups(w).tolist())) == 3


def test_biases_at_the_bottom_of_float32_never_give_a_false_witness():
    """Biases near 2**-149 next to weights near 1 make the screen's scale tiny: its product and the
    bias cast then underflow absolutely, which the bound must cover (once 3 in 3000 draws slipped)."""
    w = np.array([[-0.5], [0.25], [0.5]])
    bias = np.array([1.375, -3.375, -4.625]) * 2.0**-149  # b0 + 3 b2 < 4 b1 fails: token 1 never wins
    report = audit(w, bias, options=AuditOptions(device="cpu", probability_seconds=0.0))
    assert report.tokens[1].verdict == "unargmaxable"
    rng = np.random.default_rng(7)
    for _ in range(150):
        b = rng.integers(-40, 40, size=3).astype(np.float64) * 2.0**-149
        report = audit(w, b, options=FAST)
        _recheck(report, w, b, Unbounded())


def test_identical_rows_without_bias_or_with_a_constant_one_are_ties():
    w = np.array([[1.0, 2.0], [1.0, 2.0]])
    for bias in (None, np.array([3.0, 3.0])):
        assert [t.stage for t in audit(w, bias, options=FAST).tokens] == ["tie", "tie"]


def test_unscalable_bias_is_named_in_the_refusal():
    with pytest.raises(InputError, match="weights and bias span"):
        audit(np.zeros((3, 2)), np.array([1e300, 1e-320, 0.0]))


@pytest.mark.parametrize("exponent", [-1030, -5, 3, 1010])
def test_scaling_by_a_power_of_two_matches_ldexp_bit_for_bit(exponent):
    """The audit's normalisation multiplies by 2**-e in blocks; it must equal np.ldexp wherever that is exact."""
    from argmaxcheck.engine.scaling import _scaled_exactly  # noqa: PLC0415

    rng = np.random.default_rng(0)
    values = np.ldexp(rng.normal(size=(9000, 3)), exponent - 1)  # largest magnitudes near 2**exponent
    values[0, 0] = 0.0
    got = _scaled_exactly(values, exponent)
    assert got is not None
    np.testing.assert_array_equal(got, np.ldexp(values, -exponent))
    # A value that scaling down would round (below float64's normal range after the scaling).
    if exponent > 0:
        values[8999, 2] = np.ldexp(1.0 + 2.0**-52, -1022)
        assert _scaled_exactly(values, exponent) is None


def test_margins_are_scaled_back_as_ldexp_rounds_them():
    """Results return to the layer's units with Python's ldexp: the same numbers as numpy's, signed
    zeros, NaN and overflow to infinity included."""
    from argmaxcheck.engine.scaling import _ldexp  # noqa: PLC0415

    values = np.array([0.5, -3.0, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, 0.0, -0.0])
    for exponent in (-1100, -3, 0, 5, 1100):
        with np.errstate(over="ignore"):
            expected = np.ldexp(values, exponent)
        got = np.array([_ldexp(float(v), exponent) for v in values])
        np.testing.assert_array_equal(got, expected)
        assert np.array_equal(np.signbit(got), np.signbit(expected))


def test_float32_copy_check_is_exact_in_blocks():
    from argmaxcheck.engine.screen import _same_values  # noqa: PLC0415

    weight = np.random.default_rng(1).normal(size=(9000, 4)).astype(np.float32).astype(np.float64)
    assert _same_values(weight.astype(np.float32), weight)
    weight[8999, 3] += 2.0**-40  # not a float32 number any more, in the last block
    assert not _same_values(weight.astype(np.float32), weight)
