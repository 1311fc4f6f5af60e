"""A Llama-3-sized head (128,256 x 4,096) on a GPU: the audit against one n x n x d float32 product on the
same device, and their ratio.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--rows 128256] [--dim 4096] [--sample K]``
With ``--sample K`` only K random tokens are audited and the audit time is scaled up to the whole
vocabulary; the product is timed on ``--product-rows`` rows of it and scaled up (its cost is linear in
the rows). Target on an H100: audit <= 3x the product, the whole audit <= 5 minutes.
On a machine without a GPU, ``--device cpu`` gives the CPU figures the projection starts from.
"""

from __future__ import annotations

import argparse

import numpy as np
from bench_real_heads import real_like_layer, run_case

from argmaxcheck import Unbounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "torch-cpu"])
    parser.add_argument("--rows", type=int, default=128256)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--sample", type=int, default=0, help="audit only this many random tokens (0: all)")
    parser.add_argument("--product-rows", type=int, default=16384)
    args = parser.parse_args()
    layer = real_like_layer(args.rows, args.dim)
    tokens = None
    if args.sample:
        tokens = np.sort(np.random.default_rng(1).choice(args.rows, args.sample, replace=False)).tolist()
    run_case("llama128k", layer, Unbounded(), tokens=tokens, product_rows=args.product_rows, device=args.device)


if __name__ == "__main__":
    main()
