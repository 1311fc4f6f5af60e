"""The torch backend (run on the CPU here) gives the numpy path's verdicts, with checked witnesses."""

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, InputError, Unbounded, audit
from argmaxcheck.engine.backend import NumpyBackend, TorchBackend, make_backend, rivals_of

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("domain", [Unbounded(), Ball(2.0), Box(-1.0, np.inf)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_torch_backend_matches_numpy(domain, with_bias):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(400, 12))
    weight[:8] = weight[8:16].mean(axis=0) + 0.01 * rng.normal(size=(8, 12))  # near the hull: exact step
    bias = rng.normal(size=400) * 0.3 if with_bias else None
    ref = audit(weight, bias, domain=domain, options=AuditOptions(device="cpu", probability_seconds=0.0))
    got = audit(weight, bias, domain=domain, options=AuditOptions(device="torch-cpu", probability_seconds=0.0))
    assert got.timings["device"] == "torch (cpu)" and ref.timings["device"] == "numpy (cpu)"
    assert [t.verdict for t in got.tokens] == [t.verdict for t in ref.tokens]
    b = np.zeros(400) if bias is None else bias
    for t in got.tokens:
        if t.verdict == "argmaxable":
            s = weight @ t.witness + b
            assert s[t.id] > np.delete(s, t.id).max()


def test_products_are_ieee_float32():
    rng = np.random.default_rng(1)
    w32 = rng.normal(size=(300, 64)).astype(np.float32)
    x32 = rng.normal(size=(7, 64)).astype(np.float32)
    got = TorchBackend(w32, "cpu").product(x32)
    exact = w32.astype(np.float64) @ x32.astype(np.float64).T
    # Within the float32 dot-product bound the screen certifies with (gamma_(d+2) |w||x|).
    bound = 2 * 66 * 2.0**-24 * np.linalg.norm(w32, axis=1)[:, None] * np.linalg.norm(x32, axis=1)[None, :]
    assert got.dtype == np.float32 and np.all(np.abs(got - exact) <= bound)
    assert not torch.backends.cuda.matmul.allow_tf32


def test_device_choice():
    w32 = np.eye(3, dtype=np.float32)
    assert isinstance(make_backend(w32, "cpu"), NumpyBackend)
    with pytest.raises(InputError, match="device must be one of"):
        make_backend(w32, "tpu")
    if not torch.cuda.is_available():
        assert isinstance(make_backend(w32, "auto"), NumpyBackend)
        with pytest.raises(InputError, match="no CUDA device"):
            make_backend(w32, "cuda")


def test_out_of_device_memory_moves_the_products_to_numpy(monkeypatch):
    rng = np.random.default_rng(2)
    w32 = rng.normal(size=(50, 8)).astype(np.float32)
    x32 = rng.normal(size=(3, 8)).astype(np.float32)
    backend = TorchBackend(w32, "cpu")

    class _Full:
        def __matmul__(self, other):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    backend.blocks = [_Full()]
    first = backend.product(x32)  # the failing device product falls back ...
    second = backend.product(x32)  # ... and every later one goes straight to numpy
    np.testing.assert_array_equal(first, w32 @ x32.T)
    np.testing.assert_array_equal(second, w32 @ x32.T)
    assert "out of memory" in backend.note and backend.name.startswith("numpy")


def _small_blocks(backend: TorchBackend, rows: int) -> TorchBackend:
    """The same backend with its weights held in blocks of ``rows`` (as after a device out-of-memory)."""
    backend._upload(backend.weight32, rows)
    return backend


@pytest.mark.parametrize("with_scale", [False, True])
@pytest.mark.parametrize("with_offset", [False, True])
def test_rival_scores_reduce_on_the_device_as_numpy_does(with_scale, with_offset):
    rng = np.random.default_rng(3)
    w32 = rng.normal(size=(1000, 16)).astype(np.float32)
    x32 = rng.normal(size=(9, 16)).astype(np.float32)
    own = rng.choice(1000, size=9, replace=False)
    own[0] = 0  # first row of the first block, and last row of the last
    own[1] = 999
    scale32 = rng.uniform(0.5, 2, size=9).astype(np.float32) if with_scale else None
    offset32 = rng.normal(size=1000).astype(np.float32) if with_offset else None
    ref_mine, ref_best = NumpyBackend(w32).rival_scores(x32, own, scale32, offset32)
    for backend in (TorchBackend(w32, "cpu"), _small_blocks(TorchBackend(w32, "cpu"), 300)):
        mine, best = backend.rival_scores(x32, own, scale32, offset32)
        assert mine.dtype == best.dtype == np.float32
        # The products may differ in their last bits from numpy's (the screen's bound covers that).
        np.testing.assert_allclose(mine, ref_mine, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(best, ref_best, rtol=1e-5, atol=1e-5)
    exact = w32.astype(np.float64) @ x32.astype(np.float64).T
    if with_scale:
        exact *= scale32
    if with_offset:
        exact += offset32[:, None]
    cols = np.arange(9)
    np.testing.assert_allclose(mine, exact[own, cols], rtol=1e-5, atol=1e-5)
    exact[own, cols] = -np.inf
    np.testing.assert_allclose(best, exact.max(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_offset", [False, True])
def test_numpy_rival_scores_in_row_parts_equal_the_whole_product_reduced(with_offset):
    rng = np.random.default_rng(5)
    w32 = rng.normal(size=(3000, 16)).astype(np.float32)
    x32 = rng.normal(size=(8200, 16)).astype(np.float32)  # wide enough that the rows go 256 at a time
    own = rng.integers(0, 3000, size=8200)
    own[:3] = [0, 255, 2999]  # part boundaries
    w32[own[:3]] *= 10  # far longer than any other row: each of these wins at its own row,
    x32[:3] = w32[own[:3]]  # so the rival must be another row
    scale32 = rng.uniform(0.5, 2, size=8200).astype(np.float32)
    offset32 = rng.normal(size=3000).astype(np.float32) if with_offset else None
    backend = NumpyBackend(w32)
    mine, best = backend.rival_scores(x32, own, scale32, offset32)
    ref_mine, ref_best = rivals_of(backend.product(x32), own, scale32, offset32)
    assert mine.dtype == best.dtype == np.float32
    np.testing.assert_allclose(mine, ref_mine, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(best, ref_best, rtol=1e-5, atol=1e-5)
    assert np.all(mine[:3] > best[:3])


def test_transformed_norms_rank_rows_as_numpy_does():
    rng = np.random.default_rng(4)
    w32 = rng.normal(size=(700, 10)).astype(np.float32)
    shift, transform = rng.normal(size=10).astype(np.float32), rng.normal(size=(10, 6)).astype(np.float32)
    ref = NumpyBackend(w32).transformed_norms(shift, transform)
    for backend in (TorchBackend(w32, "cpu"), _small_blocks(TorchBackend(w32, "cpu"), 256)):
        np.testing.assert_allclose(backend.transformed_norms(shift, transform), ref, rtol=1e-5)


def _deep_rows(rng, n: int, d: int, planted: int) -> tuple[np.ndarray, np.ndarray]:
    """A Gaussian layer with ``planted`` rows replaced by spread convex combinations of 4d others:
    deep inside the hull, so the batched phase settles them."""
    weight = rng.normal(size=(n, d))
    ids = np.sort(rng.choice(n, size=planted, replace=False))
    pool = np.setdiff1d(np.arange(n), ids)
    for i in ids:
        weight[i] = rng.dirichlet(np.ones(4 * d)) @ weight[rng.choice(pool, size=4 * d, replace=False)]
    return weight, ids


@pytest.mark.parametrize("with_bias", [False, True])
def test_batched_phase_on_torch_settles_what_numpy_settles(with_bias):
    """Planted deep rows: the weights searched on torch give the same tokens, each certificate checked."""
    from argmaxcheck.engine import certify  # noqa: PLC0415

    rng = np.random.default_rng(5)
    weight, ids = _deep_rows(rng, 1500, 24, 30)
    n = weight.shape[0]
    bias = None
    if with_bias:
        bias = rng.normal(scale=0.01, size=n)
        bias[ids] = -1.0
    options = {"probability_seconds": 0.0}
    ref = audit(weight, bias, options=AuditOptions(device="cpu", **options))
    got = audit(weight, bias, options=AuditOptions(device="torch-cpu", **options))
    assert [t.verdict for t in got.tokens] == [t.verdict for t in ref.tokens]
    assert [t.stage for t in got.tokens] == [t.stage for t in ref.tokens]
    assert {t.id for t in got.tokens if t.stage == "batched" and t.verdict == "unargmaxable"} == set(ids.tolist())
    norms = np.linalg.norm(weight, axis=1)
    for t in got.tokens:
        if t.verdict == "unargmaxable":
            assert certify.check_certificate(weight, bias, t.id, t.support, t.weights, Unbounded()).ok
        elif t.stage == "batched":  # a witness along the search's separating direction
            assert certify.check_witness(weight, bias, t.id, t.witness, Unbounded(), norms) > 0


def test_guess_directions_on_torch_agree_with_numpy():
    from argmaxcheck.engine.screen import _guess_directions  # noqa: PLC0415

    rng = np.random.default_rng(6)
    weight = rng.normal(size=(300, 8)) * np.linspace(0.1, 3, 8)
    pos = np.array([0, 5, 299])
    ref = _guess_directions(weight)
    got = _guess_directions(weight, TorchBackend(weight.astype(np.float32), "cpu").ops)
    assert len(got) == len(ref)
    for mine, theirs in zip(got, ref, strict=True):
        np.testing.assert_allclose(mine(pos), theirs(pos), rtol=1e-9, atol=1e-12)


def test_out_of_device_memory_in_the_reduction_moves_it_to_numpy():
    rng = np.random.default_rng(7)
    w32 = rng.normal(size=(50, 8)).astype(np.float32)
    x32 = rng.normal(size=(3, 8)).astype(np.float32)
    own = np.array([0, 7, 49])
    backend = TorchBackend(w32, "cpu")

    class _Full:
        shape = (50, 8)

        def __matmul__(self, other):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    backend.blocks = [_Full()]
    mine, best = backend.rival_scores(x32, own)
    ref = NumpyBackend(w32).rival_scores(x32, own)
    np.testing.assert_array_equal(mine, ref[0])
    np.testing.assert_array_equal(best, ref[1])
    assert "out of memory" in backend.note and backend.ops.name == "numpy"


@pytest.mark.parametrize("failing", ["covariance", "centred_gram", "eigh"])
def test_out_of_device_memory_in_the_float64_work_finishes_on_numpy(monkeypatch, failing):
    """The whitening, the support's choice and the batched phase's search move to numpy, and say so."""
    from argmaxcheck.engine.backend import TorchOps  # noqa: PLC0415

    def full(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 1.00 GiB")

    weight, ids = _deep_rows(np.random.default_rng(8), 1500, 16, 12)
    ref = audit(weight, options=AuditOptions(device="cpu", probability_seconds=0.0))
    monkeypatch.setattr(TorchOps, failing, full)
    got = audit(weight, options=AuditOptions(device="torch-cpu", probability_seconds=0.0))
    assert [t.verdict for t in got.tokens] == [t.verdict for t in ref.tokens]
    batched = {t.id for t in got.tokens if t.stage == "batched"}
    assert batched == {t.id for t in ref.tokens if t.stage == "batched"} and set(ids.tolist()) <= batched
    assert "out of memory" in got.timings["device_note"]


def test_the_bucketed_rival_gaps_are_lower_bounds_within_a_bucket_of_offsets(rng):
    """The screen picks a scale from per-bucket bounds (one pass for every scale): each is at most the
    gap over every row, by at most the spread of offsets inside one bucket, and the products are untouched."""
    from argmaxcheck.engine.screen import _BUCKET_ROWS, _all_rival_gaps, _rival_gaps  # noqa: PLC0415

    n, cols = 16 * _BUCKET_ROWS, 40
    g32 = rng.normal(size=(n, cols)).astype(np.float32)
    offset32 = (0.3 * rng.normal(size=n)).astype(np.float32)
    own = rng.integers(0, n, size=cols)
    g32[own[0], 0] = 50.0  # a column whose own row wins at every scale
    scales32 = (2.0 ** np.arange(-3, 8)[:, None] * rng.uniform(0.5, 2.0, size=cols)).astype(np.float32)
    before = g32.copy()
    bound = _rival_gaps(g32, own, scales32, offset32)
    exact = _all_rival_gaps(g32, own, scales32, offset32)
    assert np.array_equal(g32, before)
    spread = np.diff(np.sort(offset32)[:: _BUCKET_ROWS]).max() + np.ptp(np.sort(offset32)[-_BUCKET_ROWS:])
    assert (bound <= exact).all() and (exact - bound <= spread + 1e-5).all()
    assert (bound[:, 0] > 0).all()


def test_tokens_no_guess_proves_keep_the_point_of_an_exact_scale_search(rng, monkeypatch):
    """The bucket bounds pick each scale; the tokens the screen cannot prove start the exact step
    from their best point, whose scale is chosen again over every row: never worse, often better."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 12 * screen._BUCKET_ROWS, 12
    weight = rng.normal(size=(n, d))
    weight[:300] *= 0.6  # rows that lose almost everywhere
    bias = rng.normal(scale=0.5, size=n)
    domain = Unbounded().resolve(d)
    refined = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    # The same screen with the exact search switched off: the refinement pass then repeats the bounds' choice.
    monkeypatch.setattr(screen._Context, "exact_scales", property(lambda self: False, lambda self, value: None),
                        raising=False)
    bounded = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    lost = bounded.gap <= 0
    assert lost.sum() > 20
    assert (refined.gap[lost] >= bounded.gap[lost]).all() and (refined.gap[lost] > bounded.gap[lost]).any()
    assert np.array_equal(refined.gap[~lost], bounded.gap[~lost])


def _count_scored_columns(monkeypatch) -> list[int]:
    """The number of columns of each screen product from now on (a list that fills as the screen runs)."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    scored: list[int] = []
    gaps = screen._Context._gaps

    def counted(self, points32, own, *args, **kwargs):
        scored.append(len(own))
        return gaps(self, points32, own, *args, **kwargs)

    monkeypatch.setattr(screen._Context, "_gaps", counted)
    return scored


def _heads():
    """benchmarks/heads.py, the seeded head families."""
    import sys  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import heads  # noqa: PLC0415

    return heads


def test_on_a_box_the_shorter_reach_is_tried_only_for_the_columns_the_longer_one_left(rng, monkeypatch):
    """Each guess is scored at two reaches into a box; columns the first proves cost no second product.
    What the screen proves is the same as scoring every column at both reaches."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 3000, 16
    weight = rng.normal(size=(n, d))
    weight[:200] *= 0.5  # rows that lose almost everywhere: the first reach leaves them
    bias = rng.normal(scale=0.3, size=n)
    domain = Box(-np.ones(d), np.ones(d)).resolve(d)
    scored = _count_scored_columns(monkeypatch)
    found = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    assert scored[0] == n and 0 < scored[1] < n / 2  # the first guess: every column, then the unproven
    assert (found.gap > 0).sum() > n / 2
    for row in np.flatnonzero(found.gap > 0)[:50]:  # each claimed point lies in the box and wins there
        point = found.witness[row]
        assert np.all(np.abs(point) <= 1) and np.argmax(weight @ point + bias) == row


def test_on_a_box_whose_bounds_are_not_float32_numbers_clipped_points_still_count(rng):
    """Swish's minimum -0.2784645... is no float32 number, and the nearest one lies below it: points
    clipped to it failed the float32 round trip and were all thrown away (615 proven here, none on
    the bound). Clipped to the nearest float32 inside, they prove tokens (1337, 1321 on the bound)."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 2000, 16
    weight = rng.normal(size=(n, d))
    bias = rng.normal(scale=0.3, size=n)
    lower = -0.27846454276107385
    domain = Box(np.full(d, lower), np.full(d, np.inf)).resolve(d)
    found = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    proven = np.flatnonzero(found.gap > 0)
    at_bound = [row for row in proven if (found.witness[row] < lower + 1e-6).any()]
    assert len(at_bound) > 100  # points on the lower bound prove tokens
    for row in at_bound[:50]:
        point = found.witness[row]
        assert np.all(point >= lower) and np.all(point.astype(np.float32) == point)
        assert np.argmax(weight @ point + bias) == row


def test_on_a_half_open_box_around_0_free_directions_are_proven_by_the_scale_search_s_own_product(rng, monkeypatch):
    """Swish's box holds 0, and a free direction moves only up the open sides: its points need no
    clipping, so the float32 product that picked their scale also proves them (no second product).
    Every point claimed lies in the box and wins there in float64."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 2000, 16
    weight = rng.normal(size=(n, d))
    bias = rng.normal(scale=2.0, size=n)  # a bias that sets the scale: the reaches leave many columns
    lower = -0.27846454276107385
    domain = Box(np.full(d, lower), np.full(d, np.inf)).resolve(d)
    reused = []
    gaps = screen._Context._gaps

    def counted(self, points32, own, scale=None, product=None):
        if product is not None:
            reused.append(len(own))
        return gaps(self, points32, own, scale, product)

    monkeypatch.setattr(screen._Context, "_gaps", counted)
    found = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    proven = np.flatnonzero(found.gap > 0)
    assert sum(reused) > 100 and proven.size > n / 4
    for row in proven[:: max(1, proven.size // 80)]:
        point = found.witness[row]
        assert np.all(point >= lower) and np.argmax(weight @ point + bias) == row


def test_on_a_box_the_shorter_reach_stops_where_it_proves_nothing(rng, monkeypatch):
    """heads.py's box_bias: the shorter reach proved nothing the longer one left, and is then tried only
    on every 8th block, with the same tokens proven. On random rows with a bias it proves some, and is
    tried on every block."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    heads = _heads()
    contexts = []
    init = screen._Context.__init__
    monkeypatch.setattr(screen._Context, "__init__", lambda self, *a: contexts.append(self) or init(self, *a))

    def run(weight, bias, domain, always=False):
        if always:
            monkeypatch.setattr(screen._Context, "_short_reach_pays", lambda self: True)
        n = weight.shape[0]
        found = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain.resolve(weight.shape[1]),
                              block_bytes=n * 4 * 128)  # blocks of 128 tokens
        monkeypatch.undo()
        monkeypatch.setattr(screen._Context, "__init__", lambda self, *a: contexts.append(self) or init(self, *a))
        return found, contexts[-1].short_reach

    head = heads.make("box_bias", (4096, 128), 0)
    weight, bias = head.weight.astype(np.float64), head.bias.astype(np.float64)
    found, (_, tried, proved) = run(weight, bias, head.domain)
    every, (_, tried_always, proved_always) = run(weight, bias, head.domain, always=True)
    assert proved == proved_always == 0 and tried < tried_always / 3  # 512 columns of trial, then every 8th block
    assert np.array_equal(found.gap > 0, every.gap > 0)

    n, d = 3000, 16
    weight, bias = rng.normal(size=(n, d)), rng.normal(scale=0.3, size=n)
    found, (_, tried, proved) = run(weight, bias, Box(-np.ones(d), np.ones(d)))
    every, (_, tried_always, proved_always) = run(weight, bias, Box(-np.ones(d), np.ones(d)), always=True)
    assert proved > tried / 100 and tried == tried_always and np.array_equal(found.gap, every.gap)


def test_twins_are_found_by_their_neighbours_in_one_projection(rng):
    """Pairs within the given share of the largest row norm (and bias) are found; rows farther apart,
    or whose biases differ, are not."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    m, d = 600, 16
    weight = rng.normal(size=(m, d))
    bias = rng.normal(size=m)
    twins = rng.choice(m, size=(30, 2), replace=False)
    weight[twins[:, 1]] = weight[twins[:, 0]] * (1 + 1e-7 * rng.normal(size=(30, d)))
    bias[twins[:, 1]] = bias[twins[:, 0]]
    bias[twins[-5:, 1]] += 0.1  # five pairs whose biases differ: not twins
    rows = np.arange(m)
    top_norm, top_bias = np.linalg.norm(weight, axis=1).max(), np.abs(bias).max()
    found = screen._twins_within(weight, bias, rows, 1e-5 * top_norm, 1e-5 * top_bias)
    expected = np.zeros(m, dtype=bool)
    expected[twins[:-5].ravel()] = True
    assert np.array_equal(found, expected)
    assert not screen._twins_within(weight, bias, rows, 1e-9 * top_norm, 1e-9 * top_bias).any()


def test_twins_get_no_more_guesses_and_nothing_more_is_proven_without_them(monkeypatch):
    """heads.py's near_dup: the rows left by the first guess that have a twin within the products'
    rounding get no second and third guesses; those proved none of them."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    heads = _heads()
    head = heads.make("near_dup", (4096, 64), 0)
    weight, bias = head.weight.astype(np.float64), head.bias.astype(np.float64)
    domain = head.domain.resolve(weight.shape[1])
    scored = _count_scored_columns(monkeypatch)
    skipping = screen.screen(weight.astype(np.float32), weight, bias, np.arange(4096), domain)
    columns = sum(scored)
    scored.clear()
    monkeypatch.setattr(screen, "_twins_within", lambda weight, bias, rows, *reaches: np.zeros(rows.size, bool))
    trying = screen.screen(weight.astype(np.float32), weight, bias, np.arange(4096), domain)
    assert columns < sum(scored) - 500
    assert np.array_equal(skipping.gap > 0, trying.gap > 0)


def test_a_twin_the_first_guess_missed_by_far_still_gets_the_other_guesses(rng, monkeypatch):
    """Only twins missed by about the products' rounding are left with their first point: with every
    row taken for a twin, rows the first guess missed by far are tried as before (and proven as before)."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 3000, 16
    weight = rng.normal(size=(n, d)) * np.exp(rng.normal(size=(n, 1)))
    bias = rng.normal(size=n)
    domain = Unbounded().resolve(d)
    plain = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    monkeypatch.setattr(screen, "_twins_within", lambda weight, bias, rows, *reaches: np.ones(rows.size, bool))
    every_row_a_twin = screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)
    assert (plain.gap <= 0).sum() > 50  # rows the guesses leave, missed by far
    assert np.array_equal(plain.gap, every_row_a_twin.gap)


@pytest.mark.parametrize("domain", [Unbounded(), Ball(2.0, np.full(8, 0.1)), Box(-np.ones(8), np.full(8, np.inf))])
def test_screen_scores_wide_blocks_and_holds_whole_products_a_memory_block_at_a_time(rng, domain, monkeypatch):
    """Guesses go 4,096 columns at a time where scores are reduced as they are made; the passes that
    hold a whole m x B product (scale searches: R^d or a ball with a bias, a box's open sides) split
    them into blocks within ``block_bytes``: the same gaps and points (to float32 rounding) whatever
    that block is."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    m, d = 1500, 8
    weight, bias = rng.normal(size=(m, d)), rng.normal(size=m)
    # A box's shorter reach is tried or not by the yield of the blocks so far: tried on every block here.
    monkeypatch.setattr(screen._Context, "_short_reach_pays", lambda self: True)
    held = []
    for name in ("_scaled", "_open_sides"):  # the passes that hold a whole product of their columns
        method = getattr(screen._Context, name)
        monkeypatch.setattr(screen._Context, name, lambda self, unit, own, method=method:
                            held.append(unit.shape[0]) or method(self, unit, own))

    def run(block):
        held.clear()
        found = screen.screen(weight.astype(np.float32), weight, bias, np.arange(m), domain.resolve(d),
                              block_bytes=m * 4 * block)
        return found, max(held, default=0)

    wide, held_wide = run(4096)
    narrow, held_narrow = run(7)
    assert held_wide > 7 and 0 < held_narrow <= 7  # each scale search held at most 7 columns' product
    # float32 GEMMs of other widths may round otherwise in the last bit; every gap is a proof either way.
    np.testing.assert_allclose(wide.gap, narrow.gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wide.witness, narrow.witness, rtol=1e-5, atol=1e-6)
    assert np.array_equal(wide.gap > 0, narrow.gap > 0)
    assert np.count_nonzero(wide.gap > 0) > m / 10


def test_screen_keeps_its_wide_blocks_within_the_memory_budget(rng, monkeypatch):
    """Points are scored 4,096 at a time only while about six float64 copies of them fit in
    ``block_bytes``; below that, in blocks of what a whole product would allow, if more."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    d = 64
    widths = []
    scores = NumpyBackend.rival_scores
    monkeypatch.setattr(NumpyBackend, "rival_scores",
                        lambda self, p, *a: widths.append(p.shape[0]) or scores(self, p, *a))
    for m, block_bytes, widest in ((300, 1 << 30, 300), (3000, 48 * d * 40, 40), (300, 4 * 300 * 10, 10)):
        weight = rng.normal(size=(m, d))
        widths.clear()
        screen.screen(weight.astype(np.float32), weight, None, np.arange(m), Unbounded().resolve(d),
                      block_bytes=block_bytes)
        assert max(widths) == widest


def test_a_box_s_shorter_reach_keeps_only_the_points_that_prove(rng, monkeypatch):
    """The shorter reach only adds proofs: a token it does not prove keeps the point (and gap) it had
    without it, the start the polish and the exact step get (its near misses started the polish
    worse: PP-OCRv5 on swish, 383 instead of 568 moved into their cells)."""
    from argmaxcheck.engine import screen  # noqa: PLC0415

    n, d = 3000, 16
    weight, bias = rng.normal(size=(n, d)), rng.normal(scale=0.3, size=n)
    domain = Box(np.full(d, -0.3), np.full(d, np.inf)).resolve(d)

    def run(pays):
        monkeypatch.setattr(screen._Context, "_short_reach_pays", lambda self: pays)
        return screen.screen(weight.astype(np.float32), weight, bias, np.arange(n), domain)

    never, always = run(False), run(True)
    assert np.all(always.gap[never.gap > 0] > 0) and np.count_nonzero(always.gap > 0) > np.count_nonzero(never.gap > 0)
    left = always.gap <= 0
    np.testing.assert_array_equal(always.gap[left], never.gap[left])
    np.testing.assert_array_equal(always.witness[left], never.witness[left])
