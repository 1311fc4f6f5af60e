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
import time

import numpy as np
from bench_real_heads import real_like_layer

from argmaxcheck import AuditOptions, Unbounded, audit
from argmaxcheck.engine.backend import make_backend


def product_seconds(weight32: np.ndarray, device: str, rows: int, block: int = 8192) -> float:
    """Seconds for W @ W.T on ``device`` (rows blocks of it, scaled up to all n rows)."""
    backend = make_backend(weight32, device)
    take = min(rows, weight32.shape[0])
    backend.product(weight32[:64])  # warm-up (CUDA context, first kernel)
    start = time.perf_counter()
    for lo in range(0, take, block):
        backend.product(weight32[lo:min(lo + block, take)])
    if device != "cpu":
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    return (time.perf_counter() - start) * weight32.shape[0] / take


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "torch-cpu"])
    parser.add_argument("--rows", type=int, default=128256)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--sample", type=int, default=0, help="audit only this many random tokens (0: all)")
    parser.add_argument("--product-rows", type=int, default=16384)
    args = parser.parse_args()
    layer = real_like_layer(args.rows, args.dim)
    weight32 = layer.weight.astype(np.float32)
    product = product_seconds(weight32, args.device, args.product_rows)
    del weight32
    tokens = None
    if args.sample:
        tokens = np.sort(np.random.default_rng(1).choice(args.rows, args.sample, replace=False)).tolist()
    t0 = time.perf_counter()
    report = audit(layer, domain=Unbounded(), tokens=tokens,
                   options=AuditOptions(device=args.device, probability_seconds=0.0))
    seconds = time.perf_counter() - t0
    scale = args.rows / len(report.tokens)
    s, t = report.summary(), report.timings
    print(f"{args.rows} x {args.dim} on {t.get('device')}: {len(report.tokens)} tokens audited,"
          f" {s['unargmaxable']} unargmaxable, {s['undecided']} undecided")
    print(f"stage seconds: screen {t.get('screen_seconds')}, exact {t.get('exact_seconds')}"
          f" ({t.get('exact_tokens', 0)} tokens, median {t.get('exact_median_seconds')})")
    print(f"audit {seconds:.1f} s" + (f" (x{scale:.1f} for the whole vocabulary: {seconds * scale:.1f} s)"
                                      if scale > 1 else ""))
    print(f"n x n x d float32 product on the same device: {product:.1f} s (from {args.product_rows} rows)")
    print(f"RATIO audit / product = {seconds * scale / product:.2f} (target <= 3)")


if __name__ == "__main__":
    main()
