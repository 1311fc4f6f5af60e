"""benchmarks/heads.py: seeded, shaped as declared, and its planted rows really unargmaxable (no timings)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import heads
from bench_families import _high_water, per_token_share, stage_rows

from argmaxcheck import AuditOptions, Ball, Box, Unbounded, audit

SIZE = (300, 12)


@pytest.mark.parametrize("name", list(heads.FAMILIES))
def test_family_is_seeded_and_shaped(name):
    a, b, c = heads.make(name, SIZE, 3), heads.make(name, SIZE, 3), heads.make(name, SIZE, 4)
    assert a.weight.shape == SIZE and a.weight.dtype == np.float32 and np.isfinite(a.weight).all()
    assert np.array_equal(a.weight, b.weight)
    assert not np.array_equal(a.weight, c.weight)
    if a.bias is None:
        assert b.bias is None
    else:
        assert a.bias.shape == (SIZE[0],) and a.bias.dtype == np.float32
        assert np.array_equal(a.bias, b.bias)
    assert isinstance(a.domain, (Unbounded, Box, Ball)) and a.cli_args[0] == "--domain"
    assert a.description and "\n" not in a.description


def test_families_differ_for_one_seed():
    weights = [heads.make(name, SIZE, 0).weight for name in ("shallow", "undertrained", "box_bias")]
    assert not np.array_equal(weights[0], weights[1]) and not np.array_equal(weights[1], weights[2])


def test_sizes():
    assert heads.resolve_size("tiny") == heads.SIZES["tiny"]
    assert heads.resolve_size("100x8") == (100, 8)
    assert heads.resolve_size((7, 3)) == (7, 3)


def test_fp16_family_is_float16_exact():
    w = heads.make("fp16", SIZE, 0).weight
    assert np.array_equal(w, w.astype(np.float16).astype(np.float32))
    assert len(np.unique(w, axis=0)) < SIZE[0]  # exact ties among its rows


def test_near_duplicates_are_near_not_equal():
    head = heads.make("near_dup", (400, 16), 0)
    w = head.weight.astype(np.float64)
    gaps = np.linalg.norm(w[:, None] - w[None], axis=2) / np.linalg.norm(w, axis=1)[:, None]
    np.fill_diagonal(gaps, np.inf)
    close = gaps.min(axis=1)
    assert 0.15 < np.mean(close < 1e-4) < 0.25  # about 18 % have a near-duplicate
    assert close.min() > 0  # none identical


def test_planted_rows_are_unargmaxable():
    head = heads.make("shallow", (400, 16), 1)
    assert head.planted.size == 8
    report = audit(head.weight, bias=head.bias, domain=head.domain, tokens=head.planted.tolist(),
                   options=AuditOptions(probability_seconds=0))
    assert {t.verdict for t in report.tokens} == {"unargmaxable"}


def test_stage_rows_count_the_tokens_sent_to_per_token_solvers():
    report = {"stages": [{"name": "screen", "tokens_in": 10, "settled": 7, "seconds": 0.5},
                         {"name": "block_exact", "tokens_in": 3, "settled": 2, "seconds": 0.2},
                         {"name": "exact", "tokens_in": 1, "settled": 1, "seconds": 0.1},
                         {"name": "practical", "tokens_in": 4, "settled": 1, "seconds": 0.1,
                          "counts": {"checked": 2, "stragglers": 1}}]}
    rows = stage_rows(report)
    assert [(r["name"], r["tokens_in"], r["settled"], r["per_token"]) for r in rows] == [
        ("screen", 10, 7, 0), ("block_exact", 3, 2, 0), ("exact", 1, 1, 1), ("practical", 4, 1, 1)]
    assert per_token_share(rows, 10) == 0.2


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_child_s_peak_is_its_own_high_water_mark():
    """The benchmark reads a running child's VmHWM: this process's is at least the array it holds, and
    a process that does not exist reads 0 (ru_maxrss is then the fallback)."""
    import os  # noqa: PLC0415

    held = np.ones(64 << 17)  # 64 MB, touched
    assert _high_water(os.getpid()) >= held.nbytes
    assert _high_water(2**31 - 1) == 0

