"""Fingerprints of rows by their exact bits, for finding identical rows without sorting them."""

from __future__ import annotations

import numpy as np


def row_fingerprints(bits: np.ndarray, mult: np.ndarray | None = None, block: int = 8192) -> np.ndarray:
    """A 64-bit fingerprint per row of ``bits`` (uint64 bit patterns, e.g. ``floats.view(np.uint64)``).

    A random linear hash in wrapping integer arithmetic, which is exact in any order: rows with
    identical bits always get the same fingerprint; different rows collide only by chance, so a
    caller that must be exact compares colliding rows itself. ``mult`` (odd multipliers, one per
    column) replaces the fixed random ones (tests use it to force collisions). Rows go ``block``
    at a time, so the temporaries stay small however many rows there are.
    """
    n, d = bits.shape
    if mult is None:
        mult = np.random.default_rng(0).integers(1, 2**63, size=d, dtype=np.uint64) | np.uint64(1)
    prints = np.empty(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, n, block):
            prints[lo:lo + block] = (bits[lo:lo + block] * mult).sum(axis=1, dtype=np.uint64)
    return prints
