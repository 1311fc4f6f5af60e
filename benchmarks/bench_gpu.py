"""A Llama-3-sized head (128,256 x 4,096) on a GPU: the audit against one n x n x d float32 product on the
same device, and their ratio.

Usage: ``python benchmarks/bench_gpu.py [--device cuda] [--rows 128256] [--dim 4096] [--sample K] [--check]
[--profile PATH]``

* The product is ``W @ W.T`` in float32 with TF32 off (as the audit computes it), timed on the device
  itself: with torch, blocks of rows multiplied on the device and synchronised, no copy back to the
  host (that copy is not part of one product); with ``--device cpu``, numpy, on ``--product-rows``
  rows scaled up (its cost is linear in the rows). Timed before and after the audit; the median is used.
* The audit is the library's, ``AuditOptions(device=...)``, on the real-like layer of
  bench_real_heads.py (bias-free, R^d, 2 % under-trained rows). Each stage is printed as it starts,
  so a run cut short still shows where the time went. ``--sample K`` audits K random tokens and
  scales the time up to the whole vocabulary.
* ``--check`` then audits the GPT-2-sized planted layer (50257 x 768, 40 planted rows) on the device
  and with numpy, and compares verdicts and stages token by token.

Target on an H100: audit <= 3x the product, the whole 128k x 4k audit <= 5 minutes.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real_heads import print_report, product_seconds, real_like_layer

from argmaxcheck import AuditOptions, OutputLayer, Unbounded, audit


class StagePrinter:
    """Prints each stage of the audit as it starts, and its progress every 15 s, with the seconds
    since the audit began."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.done = 0

    def stage(self, name: str, total: int) -> None:
        self.last, self.done = time.perf_counter(), 0
        print(f"   [{self.last - self.start:7.1f} s] {name}: {total}", flush=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.perf_counter() - self.last > 15:
            self.last = time.perf_counter()
            print(f"   [{self.last - self.start:7.1f} s]   ... {self.done} done", flush=True)


def device_product_seconds(weight32: np.ndarray, device: str, block: int = 8192) -> float:
    """Seconds for ``W @ W.T`` in float32 on a torch device, results left on the device."""
    import torch  # noqa: PLC0415

    from argmaxcheck.engine.backend import _exact_float32  # noqa: PLC0415

    _exact_float32(torch)
    dev = torch.device("cuda" if device in ("cuda", "auto") else "cpu")
    w = torch.from_numpy(weight32).to(dev)
    (w[:block] @ w[:block].T).sum().item()  # warm-up: context, kernels
    torch.cuda.synchronize() if dev.type == "cuda" else None
    start = time.perf_counter()
    for lo in range(0, w.shape[0], block):
        out = w @ w[lo:lo + block].T
        del out
    torch.cuda.synchronize() if dev.type == "cuda" else None
    seconds = time.perf_counter() - start
    del w
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return seconds


def timed_product(layer: OutputLayer, device: str, product_rows: int) -> float:
    weight32 = layer.weight.astype(np.float32)
    if device == "cpu":
        return product_seconds(weight32, product_rows, "cpu")
    return device_product_seconds(weight32, device)


def describe_device(device: str) -> str:
    if device == "cpu":
        return "numpy on the CPU"
    import torch  # noqa: PLC0415

    if device in ("cuda", "auto") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    return f"torch {torch.__version__} on the CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "torch-cpu"])
    parser.add_argument("--rows", type=int, default=128256)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--spread", type=float, default=0.05,
                        help="under-trained rows' distance from the mean, relative (see real_like_layer)")
    parser.add_argument("--sample", type=int, default=0, help="audit only this many random tokens (0: all)")
    parser.add_argument("--product-rows", type=int, default=16384, help="--device cpu: rows of the product timed")
    parser.add_argument("--check", action="store_true", help="then compare device and numpy verdicts (GPT-2 size)")
    parser.add_argument("--profile", metavar="PATH", help="write the audit's cProfile (by own time) to PATH")
    args = parser.parse_args()
    print(f"device: {describe_device(args.device)}", flush=True)
    t0 = time.perf_counter()
    layer = real_like_layer(args.rows, args.dim, spread=args.spread)
    print(f"layer {args.rows} x {args.dim}, under-trained spread {args.spread},"
          f" built in {time.perf_counter() - t0:.1f} s", flush=True)
    products = [timed_product(layer, args.device, args.product_rows)]
    print(f"n x n x d float32 product: {products[0]:.2f} s", flush=True)
    tokens = None
    if args.sample:
        tokens = np.sort(np.random.default_rng(1).choice(args.rows, args.sample, replace=False)).tolist()
    profiler = cProfile.Profile() if args.profile else None
    # A run cut short by `timeout` (SIGTERM) still writes its profile: that is when it is most needed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    try:
        report = audit(layer, domain=Unbounded(), tokens=tokens, options=AuditOptions(device=args.device),
                       progress=StagePrinter())
    finally:
        if profiler:
            profiler.disable()
            with open(args.profile, "w") as out:
                pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
    seconds = time.perf_counter() - t0
    products.append(timed_product(layer, args.device, args.product_rows))
    print_report("llama128k", layer, report, seconds, products,
                 args.product_rows if args.device == "cpu" else None, args.device)
    if args.device != "cpu":
        import torch  # noqa: PLC0415

        if torch.cuda.is_available():
            print(f"   peak device memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB", flush=True)
    if args.check:
        compare(args.device)


def compare(device: str) -> None:
    """Device and numpy audits of the GPT-2-sized planted layer, token by token."""
    from bench_gpt2_scale import build_layer  # noqa: PLC0415

    weight, _, _ = build_layer(50257, 768, 40, 10)
    runs = {}
    for where in (device, "cpu"):
        t0 = time.perf_counter()
        runs[where] = audit(weight, options=AuditOptions(device=where, probability_seconds=0))
        print(f"== gpt2 planted on {runs[where].timings['device']}: {time.perf_counter() - t0:.1f} s,"
              f" {runs[where].summary()['unargmaxable']} unargmaxable", flush=True)
    a, b = runs[device].tokens, runs["cpu"].tokens
    verdicts = sum(x.verdict != y.verdict for x, y in zip(a, b, strict=True))
    stages = sum(x.stage != y.stage for x, y in zip(a, b, strict=True))
    print(f"   {len(a)} tokens: {verdicts} verdicts differ, {stages} stages differ", flush=True)


if __name__ == "__main__":
    main()
