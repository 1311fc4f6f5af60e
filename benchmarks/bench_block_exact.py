"""The exact step one token at a time (``block_exact=False``) against blocks of tokens, on synthetic heads.

Heads (seeded, as in issue 22):
  a  18k x 120 with bias, R^d, 3,000 rows with a near-duplicate within 1e-5 relative;
  b  8k x 256 anisotropic, log-normal row norms (sigma 0.15), no bias, R^d, 100 planted shallow rows
     (0.9 x a convex combination of 6 rows + 0.1 x the mean: just inside a facet);
  c  8k x 128 with bias on the ball of radius sqrt(d), 100 planted shallow rows (bias likewise, +-1e-3);
  d  8k x 256 with bias on the box (-1, 1)^d, 100 planted shallow rows.

Both runs go one after the other in the same process; each prints the exact step's ms per token
(the block step's share included), how many tokens the blocks settled and how many fell back.
On a shared machine, set OPENBLAS_NUM_THREADS=1: with busy cores, a multi-threaded BLAS makes the
small per-token factorisations of either path up to 100x slower.

Usage: ``OPENBLAS_NUM_THREADS=1 python benchmarks/bench_block_exact.py a [--scale 1]``
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from argmaxcheck import AuditOptions, Ball, Box, Unbounded, audit


def plant_shallow(rng, w, b, count):
    """Shallow interior rows (in place): 0.9 x a convex combination of 6 rows + 0.1 x the mean (bias likewise,
    +-1e-3); returns their ids. tests/engine/test_block_exact.py plants its heads with it too."""
    ids = rng.choice(w.shape[0], size=count, replace=False)
    pool = np.setdiff1d(np.arange(w.shape[0]), ids)
    mw = w[pool].mean(axis=0)
    mb = None if b is None else b[pool].mean()
    for k, i in enumerate(ids):
        rows = rng.choice(pool, size=6, replace=False)
        lam = rng.dirichlet(np.ones(6))
        w[i] = 0.9 * lam @ w[rows] + 0.1 * mw
        if b is not None:
            b[i] = 0.9 * lam @ b[rows] + 0.1 * mb + (1e-3 if k % 2 else -1e-3)
    return ids


def head(name: str, scale: int = 1):
    rng = np.random.default_rng({"a": 1, "b": 2, "c": 3, "d": 4}[name])
    if name == "a":
        n, d = 18000 // scale, 120
        w = rng.normal(size=(n, d))
        dup = rng.choice(n // 2, size=3000 // scale, replace=False)
        w[n - dup.size:] = w[dup] * (1 + 1e-5 * rng.normal(size=(dup.size, d)))
        return w, 0.1 * rng.normal(size=n), Unbounded()
    if name == "b":
        n, d = 8000 // scale, 256
        w = rng.normal(size=(n, d)) * np.exp(-np.arange(d) / (d / 3))[None, :]
        w *= np.exp(0.15 * rng.normal(size=(n, 1))) / np.linalg.norm(w, axis=1, keepdims=True)
        plant_shallow(rng, w, None, max(4, 100 // scale))
        return w, None, Unbounded()
    n, d = 8000 // scale, (128 if name == "c" else 256)
    w = rng.normal(size=(n, d))
    b = rng.normal(size=n) * (1.0 if name == "c" else 3.0)
    plant_shallow(rng, w, b, max(4, 100 // scale))
    return w, b, (Ball(np.sqrt(d)) if name == "c" else Box.symmetric(1.0))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("head", choices="abcd")
    parser.add_argument("--scale", type=int, default=1, help="divide the row counts by this")
    args = parser.parse_args()
    w, b, domain = head(args.head, args.scale)
    verdicts = {}
    for block in (False, True):
        started = time.perf_counter()
        report = audit(w, b, domain, options=AuditOptions(probability_seconds=0, practical=False, block_exact=block))
        blocks, single = report.stats.stage("block_exact"), report.stats.stage("exact")
        tokens = blocks.tokens_in if blocks else (single.tokens_in if single else 0)
        seconds = sum(s.seconds for s in (blocks, single) if s is not None)
        verdicts[block] = [t.verdict for t in report.tokens]
        print(f"head {args.head} {w.shape[0]}x{w.shape[1]} {'blocks  ' if block else 'per-token'}: exact step"
              f" {1000 * seconds / max(tokens, 1):7.2f} ms/token over {tokens} tokens;"
              f" settled in blocks {blocks.settled if blocks else 0},"
              f" fell back {single.tokens_in if single and blocks else 0}; audit {time.perf_counter() - started:.1f} s")
    print("same verdicts:", verdicts[False] == verdicts[True])


if __name__ == "__main__":
    main()
