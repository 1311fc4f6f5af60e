"""Seeded synthetic output layers shaped like real heads, in several families and sizes.

Every family is a pure function ``family(size, seed) -> Head`` (same size and seed, same arrays, bit for
bit on one machine). The rows share one construction (:func:`lm_rows`), which imitates a trained LM head:

* an anisotropic covariance: a random rotation of a spectrum falling as ``(k + 1) ** -0.7``, scaled so
  the centred rows have norm about 1;
* a shared mean direction (norm ``MEAN_NORM``, as every trained head has one);
* log-normal row norms: each row multiplied by ``exp(N(0, 0.15))``.

Sizes (:data:`SIZES`): ``tiny`` 2000 x 64 (for checking scripts), ``small`` 8192 x 256, ``medium``
32768 x 512, ``large`` 50257 x 768, ``xl`` 131072 x 1024; or any ``(n, d)``.

Usage: ``python benchmarks/heads.py --size tiny`` lists every family's description and shape.
"""

from __future__ import annotations

import argparse
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from argmaxcheck import Ball, Box, Unbounded

SIZES: dict[str, tuple[int, int]] = {
    "tiny": (2000, 64),
    "small": (8192, 256),
    "medium": (32768, 512),
    "large": (50257, 768),
    "xl": (131072, 1024),
}
NORM_SIGMA = 0.15  # log-normal spread of the row norms
MEAN_NORM = 0.6  # the shared mean direction, against centred rows of norm about 1
SPECTRUM_DECAY = 0.7  # covariance eigenvalues fall as (k + 1) ** -SPECTRUM_DECAY
SWISH_LOWER = -0.2784645427610738  # min over t of t * sigmoid(t)


@dataclass
class Head:
    """One generated output layer and the domain it is audited on.

    ``cli_args`` are the ``argmaxcheck audit`` flags for ``domain`` (and ``--precision`` where the
    family models a lower-precision head); ``planted`` are rows built to be unargmaxable (for tests).
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray | None
    domain: object
    description: str
    cli_args: tuple[str, ...] = ()
    planted: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self.description = " ".join(self.description.split())  # a docstring on one line

    @property
    def shape(self) -> tuple[int, int]:
        return self.weight.shape


def resolve_size(size: str | tuple[int, int]) -> tuple[int, int]:
    """``(n, d)`` for a size name of :data:`SIZES`, an ``"NxD"`` string or an ``(n, d)`` pair."""
    if isinstance(size, str):
        if size in SIZES:
            return SIZES[size]
        n, _, d = size.lower().partition("x")
        return int(n), int(d)
    n, d = size
    return int(n), int(d)


def _rng(name: str, seed: int) -> np.random.Generator:
    """The family's own stream: families with the same seed share no random numbers."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def lm_rows(n: int, d: int, rng: np.random.Generator, block: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """``(weight float32 (n, d), mean float64 (d,))``: rows like a trained LM head (module docstring)."""
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    spectrum = (np.arange(1, d + 1, dtype=np.float64)) ** -SPECTRUM_DECAY
    spectrum /= spectrum.sum()  # E ||centred row||^2 = 1
    factor = np.sqrt(spectrum)[:, None] * basis.T  # z @ factor has covariance basis diag(spectrum) basis^T
    mean = rng.standard_normal(d)
    mean *= MEAN_NORM / np.linalg.norm(mean)
    weight = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, block):  # float64 products, rounded once: no float32 accumulation order effects
        hi = min(lo + block, n)
        weight[lo:hi] = rng.standard_normal((hi - lo, d)) @ factor + mean
    weight *= np.exp(NORM_SIGMA * rng.standard_normal(n)).astype(np.float32)[:, None]
    return weight, mean


def _undertrained(weight: np.ndarray, rng: np.random.Generator, share: float, spread: float) -> np.ndarray:
    """Replace a random ``share`` of rows by mean + ``spread`` x (row - mean), in place; their ids, sorted."""
    n = weight.shape[0]
    ids = np.sort(rng.choice(n, max(1, round(share * n)), replace=False))
    mean = weight.mean(axis=0, dtype=np.float64)
    weight[ids] = (mean + spread * (weight[ids] - mean)).astype(np.float32)
    return ids


def _bias(n: int, rng: np.random.Generator, scale: float) -> np.ndarray:
    return (scale * rng.standard_normal(n)).astype(np.float32)


def shallow_planted(size, seed: int = 0) -> Head:
    """LM-like rows (anisotropic, log-normal norms σ=0.15), no bias, R^d; max(8, n/1000) rows replaced by
    0.9 x a Dirichlet(1) convex combination of 6 other rows + 0.1 x the mean row: unargmaxable but shallow."""
    n, d = resolve_size(size)
    rng = _rng("shallow", seed)
    weight, _ = lm_rows(n, d, rng)
    k = min(max(8, n // 1000), n // 8)
    planted = np.sort(rng.choice(n, k, replace=False))
    others = np.setdiff1d(np.arange(n), planted)
    mean = weight[others].mean(axis=0, dtype=np.float64)
    for i in planted:
        parts = rng.choice(others, 6, replace=False)
        lam = rng.dirichlet(np.ones(6))
        weight[i] = (0.9 * (lam @ weight[parts].astype(np.float64)) + 0.1 * mean).astype(np.float32)
    return Head("shallow", weight, None, Unbounded(), shallow_planted.__doc__, ("--domain", "unbounded"),
                planted)


def near_duplicates(size, seed: int = 0) -> Head:
    """LM-like rows with a bias (N(0, 1)), R^d; 18 % of rows (as an OCR head's 3,299 of 18k) in clusters of 2-4
    rows equal to within 1e-5 relative, in weight and bias (none identical)."""
    n, d = resolve_size(size)
    rng = _rng("near_dup", seed)
    weight, _ = lm_rows(n, d, rng)
    bias = _bias(n, rng, 1.0)
    order = rng.permutation(n)
    target, at = round(0.18 * n), 0
    while at < target:
        m = min(int(rng.integers(2, 5)), n - at)
        ids = order[at:at + m]
        src = weight[ids[0]].astype(np.float64)
        noise = rng.standard_normal((m - 1, d)) * (1e-5 * np.linalg.norm(src) / math.sqrt(d))
        weight[ids[1:]] = (src + noise).astype(np.float32)
        bias[ids[1:]] = (bias[ids[0]] * (1 + 1e-5 * rng.standard_normal(m - 1))
                         + 1e-6 * rng.standard_normal(m - 1)).astype(np.float32)
        at += m
    return Head("near_dup", weight, bias, Unbounded(), near_duplicates.__doc__, ("--domain", "unbounded"))


def _undertrained_head(name: str, size, seed: int, ball: bool) -> Head:
    n, d = resolve_size(size)
    rng = _rng(name, seed)
    weight, _ = lm_rows(n, d, rng)
    ids = _undertrained(weight, rng, 0.03, 0.05)
    if ball:
        radius = math.sqrt(d)
        return Head(name, weight, None, Ball(radius), undertrained_ball.__doc__,
                    ("--domain", "ball", "--radius", repr(radius)), ids)
    return Head(name, weight, None, Unbounded(), undertrained.__doc__, ("--domain", "unbounded"), ids)


def undertrained(size, seed: int = 0) -> Head:
    """LM-like rows, no bias, R^d; 3 % of rows under-trained: mean row + 0.05 x their own deviation."""
    return _undertrained_head("undertrained", size, seed, ball=False)


def undertrained_ball(size, seed: int = 0) -> Head:
    """As undertrained (3 % of rows = mean + 0.05 x deviation, no bias) on the ball of radius sqrt(d) around 0."""
    return _undertrained_head("undertrained_ball", size, seed, ball=True)


def fp16_rounded(size, seed: int = 0) -> Head:
    """LM-like rows, no bias, R^d, 3 % under-trained (mean + 0.002 x deviation: near ties) and 0.3 % equal
    to the mean row (exact ties), every entry rounded to float16; audited with --precision float16."""
    n, d = resolve_size(size)
    rng = _rng("fp16", seed)
    weight, _ = lm_rows(n, d, rng)
    near = _undertrained(weight, rng, 0.03, 0.002)
    rest = np.setdiff1d(np.arange(n), near)
    weight[rng.choice(rest, max(2, round(0.003 * n)), replace=False)] = weight.mean(axis=0, dtype=np.float64)
    weight = weight.astype(np.float16).astype(np.float32)
    return Head("fp16", weight, None, Unbounded(), fp16_rounded.__doc__,
                ("--domain", "unbounded", "--precision", "float16"))


def layernorm_ball(size, seed: int = 0) -> Head:
    """A LayerNorm-folded head: W diag(γ) (γ = 1 + 0.1 N(0,1)), 2 % under-trained rows (mean + 0.05 x dev.),
    effective bias W β + b (β ~ 0.05 N, b ~ 0.02 N), on the ball of radius sqrt(d) around 0."""
    n, d = resolve_size(size)
    rng = _rng("layernorm_ball", seed)
    weight, _ = lm_rows(n, d, rng)
    _undertrained(weight, rng, 0.02, 0.05)
    gamma = 1 + 0.1 * rng.standard_normal(d)
    beta = 0.05 * rng.standard_normal(d)
    bias = (weight.astype(np.float64) @ beta + 0.02 * rng.standard_normal(n)).astype(np.float32)
    weight = (weight * gamma).astype(np.float32)
    radius = math.sqrt(d)
    return Head("layernorm_ball", weight, bias, Ball(radius), layernorm_ball.__doc__,
                ("--domain", "ball", "--radius", repr(radius)))


def box_bias(size, seed: int = 0) -> Head:
    """A classifier fed by tanh features (BiLSTM): LM-like rows, 3 % under-trained (mean + 0.05 x dev.),
    bias 0.1 sqrt(d) N(0,1) (against logits of spread about sqrt(d)), on the box [-1, 1]^d."""
    n, d = resolve_size(size)
    rng = _rng("box_bias", seed)
    weight, _ = lm_rows(n, d, rng)
    _undertrained(weight, rng, 0.03, 0.05)
    bias = _bias(n, rng, 0.1 * math.sqrt(d))
    return Head("box_bias", weight, bias, Box(-1.0, 1.0), box_bias.__doc__, ("--domain", "box", "--bound", "1"))


def swish_box(size, seed: int = 0) -> Head:
    """A head fed by swish features: LM-like rows, 3 % under-trained (mean + 0.05 x dev.), bias
    0.1 sqrt(d) N(0,1), on [-0.27846, inf)^d (the swish's range, as PP-OCRv4's head)."""
    n, d = resolve_size(size)
    rng = _rng("swish_box", seed)
    weight, _ = lm_rows(n, d, rng)
    _undertrained(weight, rng, 0.03, 0.05)
    bias = _bias(n, rng, 0.1 * math.sqrt(d))
    return Head("swish_box", weight, bias, Box(SWISH_LOWER, math.inf), swish_box.__doc__,
                ("--domain", "box", "--lower", repr(SWISH_LOWER)))


FAMILIES: dict[str, Callable[..., Head]] = {
    "shallow": shallow_planted,
    "near_dup": near_duplicates,
    "undertrained": undertrained,
    "undertrained_ball": undertrained_ball,
    "fp16": fp16_rounded,
    "layernorm_ball": layernorm_ball,
    "box_bias": box_bias,
    "swish_box": swish_box,
}


def describe(func: Callable[..., Head]) -> str:
    """The family's construction, its docstring on one line."""
    return " ".join((func.__doc__ or "").split())


def make(name: str, size, seed: int = 0) -> Head:
    """The head of family ``name`` at ``size`` for ``seed``."""
    return FAMILIES[name](size, seed)


def save_npz(head: Head, path) -> None:
    """Write ``weight`` (and ``bias``) where ``argmaxcheck audit PATH`` reads them."""
    arrays = {"weight": head.weight} if head.bias is None else {"weight": head.weight, "bias": head.bias}
    np.savez(path, **arrays)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help=f"one of {', '.join(SIZES)} or NxD")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, func in FAMILIES.items():
        head = func(args.size, args.seed)
        print(f"{name:18} {head.shape[0]} x {head.shape[1]} {head.weight.dtype}"
              f" bias={'yes' if head.bias is not None else 'no'} {' '.join(head.cli_args)}")
        print(f"    {describe(func)}")


if __name__ == "__main__":
    main()
