"""Audit a GPT-2-sized output layer (50257 x 768) with planted unargmaxable rows.

Prints, measured in the same run on the same machine:

* the whole audit's time against one n x n x d float32 matrix product
  (``W @ W.T`` in blocks; the floor of any method that looks at every pair);
* for the tokens that reach the exact step, the median time per token against
  one full LP over all rows: the same Chebyshev LP (bias-free, so normalised by
  the box [-1, 1]^d) with every row at once, solved by scipy's HiGHS dual
  simplex (the figures: docs/benchmarks.md).

Usage: ``python benchmarks/bench_gpt2_scale.py [--rows 50257] [--dim 768] [--full-lp 1]``
Targets (2-core machine): audit <= 2x the product; exact step >= 50x faster than the full LP.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from scipy.optimize import linprog

from argmaxcheck import audit


def build_layer(n: int, d: int, planted: int, duplicates: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    weight = rng.normal(size=(n, d)).astype(np.float32)
    ids = rng.choice(n, size=planted + duplicates, replace=False)
    pool = np.setdiff1d(np.arange(n), ids)
    for i in ids[:planted]:
        # Deep inside the hull: a spread convex combination of many rows.
        rows = rng.choice(pool, size=4 * d, replace=False)
        weight[i] = (rng.dirichlet(np.ones(rows.size)) @ weight[rows].astype(np.float64)).astype(np.float32)
    for i in ids[planted:]:
        weight[i] = weight[rng.choice(pool)]
    return weight, set(ids[:planted].tolist()), set(ids[planted:].tolist())


def time_product(weight32: np.ndarray, block: int = 4096) -> float:
    start = time.perf_counter()
    for lo in range(0, weight32.shape[0], block):
        weight32 @ weight32[lo:lo + block].T
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50257)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--planted", type=int, default=40)
    parser.add_argument("--duplicates", type=int, default=10)
    parser.add_argument("--full-lp", type=int, default=1, help="tokens to solve with a full LP (about 50 s each)")
    args = parser.parse_args()

    weight, planted, dups = build_layer(args.rows, args.dim, args.planted, args.duplicates)
    print(f"layer {weight.shape} float32, {len(planted)} planted interior rows, {len(dups)} duplicated rows")

    products = [time_product(weight)]
    t0 = time.perf_counter()
    report = audit(weight)
    audit_seconds = time.perf_counter() - t0
    products.append(time_product(weight))
    product = statistics.median(products)

    s = report.summary()
    print(f"audit: {s['argmaxable']} argmaxable, {s['unargmaxable']} unargmaxable, {s['undecided']} undecided"
          f" in {audit_seconds:.1f} s ({report.timings})")
    found = set(report.unargmaxable)
    print(f"planted rows found: {len(planted & found)}/{len(planted)};"
          f" duplicated rows flagged: {len(dups & found)}/{len(dups)} (and their partners)")
    print(f"n x n x d float32 product: {', '.join(f'{p:.1f}' for p in products)} s (median {product:.1f} s)")
    print(f"RATIO audit / product = {audit_seconds / product:.2f} (target <= 2)")

    exact_median = report.timings.get("exact_median_seconds")
    if args.full_lp and exact_median:
        full_times = []
        for i in sorted(planted)[: args.full_lp]:
            seconds, radius = full_lp(weight.astype(np.float64), i)
            full_times.append(seconds)
            print(f"full LP over all {args.rows - 1} rows, token {i}: {seconds:.1f} s (radius {radius:.3g})")
        full = statistics.median(full_times)
        print(f"exact step: median {exact_median:.3f} s/token over {report.timings['exact_tokens']} tokens;"
              f" full LP {full:.1f} s/token")
        print(f"RATIO full LP / exact step = {full / exact_median:.0f}x (target >= 50)")


def full_lp(weight: np.ndarray, i: int) -> tuple[float, float]:
    """max t s.t. (w_j - w_i).x / |w_j - w_i| + t <= 0 for all j != i, x in [-1, 1]^d, t <= 1."""
    d = weight.shape[1]
    a = np.delete(weight, i, axis=0) - weight[i]
    norms = np.linalg.norm(a, axis=1)
    keep = norms > 0
    a = a[keep] / norms[keep, None]
    a_ub = np.hstack([a, np.ones((a.shape[0], 1))])
    start = time.perf_counter()
    res = linprog(np.r_[np.zeros(d), -1.0], A_ub=a_ub, b_ub=np.zeros(a.shape[0]),
                  bounds=[(-1, 1)] * d + [(None, 1)], method="highs-ds")
    return time.perf_counter() - start, -res.fun


if __name__ == "__main__":
    main()
