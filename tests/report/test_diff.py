"""argmaxcheck diff: a float32 checkpoint against GGUF conversions of it, with rows quantisation pushes across.

The head's rows share one coordinate at the block maximum, so Q8_0's scale is the
same for every row and every other stored value sits on its grid. Four tokens are
put just outside the midpoint of a hull edge, by less than half a grid step:
float32 keeps them reachable, Q8_0 rounds them back onto the edge, where they can
at best tie. Every other change (F16, Q5_1, Q4_0) is checked against an
independent LP on the dequantised rows.
"""

from __future__ import annotations

import json
import subprocess
import sys

import gguf
import numpy as np
import pytest
from conftest import full_lp_radius
from gguf_helpers import write_gguf, write_llama_folder

from argmaxcheck import AuditOptions, InputError, audit
from argmaxcheck.report.diff import diff_reports
from argmaxcheck.sources import load_source

PLANTED = [68, 69, 70, 71]


def head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """72 rows x 32: 64 vertices, 4 neighbours of the first four, and 4 tokens just outside those edges."""
    rng = np.random.default_rng(seed)
    units = rng.normal(size=(64, 31))
    base = np.rint(100 * units / np.linalg.norm(units, axis=1, keepdims=True))  # grid units of 0.01
    neighbours = []
    for k in range(4):
        step = np.zeros(31)
        step[rng.choice(31, 4, replace=False)] = rng.choice([-2.0, 2.0], 4)  # even: the midpoint is on the grid
        neighbours.append(base[k] + step)
    outside = []
    for k in range(4):
        mid = (base[k] + neighbours[k]) / 2
        outside.append(mid + 0.4 * mid / np.abs(mid).max())  # radially out, < half a step per coordinate
    rows = np.vstack([base, neighbours, outside]) * 0.01
    weight = np.hstack([np.full((72, 1), 1.27), rows])  # the block maximum: one Q8_0 scale for all rows
    return weight, rng.uniform(0.8, 1.2, 32)


def reachable(weight: np.ndarray) -> set[int]:
    """Rows some input makes the strict argmax, by scipy's LP (rows with a duplicate never are)."""
    n, d = weight.shape
    out = set()
    for i in range(n):
        if (np.abs(weight - weight[i]).max(axis=1) == 0).sum() > 1:
            continue
        if full_lp_radius(weight, None, i, -np.ones(d), np.ones(d)) > 1e-7:
            out.add(i)
    return out


def dequantised(weight: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "F16":
        return weight.astype(np.float16).astype(np.float64)
    kind = gguf.GGMLQuantizationType[qtype]
    return gguf.quants.dequantize(gguf.quants.quantize(weight.astype(np.float32), kind), kind).astype(np.float64)


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """The checkpoint folder and its GGUF conversions, with their audits."""
    folder = tmp_path_factory.mktemp("diff")
    weight, gamma = head()
    paths = {"ckpt": write_llama_folder(folder / "ckpt", weight, gamma)}
    for qtype in ("F32", "F16", "Q8_0", "Q5_1", "Q4_0"):
        paths[qtype] = write_gguf(folder / f"m.{qtype}.gguf", weight, gamma, qtype=qtype)
    reports = {}
    for name, path in paths.items():
        loaded = load_source(path)
        reports[name] = audit(loaded.layer, domain=loaded.domain, options=AuditOptions(probability_seconds=0.0))
        reports[name].source = str(path)
    return weight, gamma, paths, reports


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q5_1", "Q4_0"])
def test_diff_matches_an_independent_lp(versions, qtype):
    weight, gamma, _, reports = versions
    g = gamma.astype(np.float32).astype(np.float64)
    before = reachable(weight.astype(np.float32).astype(np.float64) * g)
    after = before if qtype == "F32" else reachable(dequantised(weight, qtype) * g)
    result = diff_reports(reports["ckpt"], reports[qtype])
    assert {c.id for c in result.lost} == before - after
    assert {c.id for c in result.gained} == after - before
    assert {c.id for c in result.changed} >= (before ^ after)
    back = diff_reports(reports[qtype], reports["ckpt"])  # the other way round, lost becomes gained
    assert {c.id for c in back.gained} == before - after
    if qtype == "F32":
        assert not result.changed  # the same numbers in another container
    if qtype == "Q8_0":
        assert before - after == set(PLANTED)
        assert all(c.before == "argmaxable" and c.after in ("unargmaxable", "practically_unreachable")
                   for c in result.lost)
    if qtype == "Q4_0":
        assert len(before - after) > len(PLANTED)  # the coarse grid merges rows into ties as well


def test_margin_shifts_and_transitions(versions):
    *_, reports = versions
    result = diff_reports(reports["ckpt"], reports["Q8_0"], top=6)
    shifts = [abs(c.shift) for c in result.shifts]
    assert len(shifts) == 6 and shifts == sorted(shifts, reverse=True)
    assert result.transitions()["argmaxable -> " + result.lost[0].after] >= 1
    record = result.to_dict()
    assert [r["id"] for r in record["lost"]] == PLANTED
    assert all(r["margin_before"] > 0 >= r["margin_after"] - 1e-9 for r in record["lost"])
    assert "checkpoint" not in record["a"]  # set by the CLI, not by audit()
    assert record["b"]["num_classes"] == 72


def test_renamed_rows_and_size_mismatch(rng):
    weight = rng.normal(size=(10, 4))
    a = audit(weight, names=[f"t{i}" for i in range(10)])
    b = audit(weight, names=[f"t{i}" for i in range(9)] + ["other"])
    assert diff_reports(a, b).renamed == [9]
    with pytest.raises(InputError, match=r"has 10 rows but .* has 9: diff compares two versions"):
        diff_reports(a, audit(weight[:9]))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "argmaxcheck", "diff", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


def test_cli_diff_text_json_and_exit_codes(versions, tmp_path):
    *_, paths, _ = versions
    out = tmp_path / "d.json"
    proc = _cli(paths["ckpt"], paths["Q8_0"], "--json", out, "--quiet")
    assert proc.returncode == 1, proc.stderr
    assert "lost reachability (argmaxable in A, not in B): 4" in proc.stdout
    assert "gained reachability (unreachable in A, argmaxable in B): 0" in proc.stdout
    assert "largest margin shifts" in proc.stdout
    report = json.loads(out.read_text())
    assert [t["id"] for t in report["lost"]] == PLANTED
    assert report["b"]["checkpoint"]["head_type"] == "Q8_0" and report["a"]["checkpoint"]["model_type"] == "llama"
    proc = _cli(paths["ckpt"], paths["F32"], "--format", "json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["changed"] == []


def test_cli_diff_refuses_different_vocabularies(versions, tmp_path):
    weight, gamma, paths, _ = versions
    small = write_gguf(tmp_path / "small.gguf", weight[:70], gamma)
    proc = _cli(paths["ckpt"], small)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "has 72 rows but" in proc.stderr and "has 70" in proc.stderr
