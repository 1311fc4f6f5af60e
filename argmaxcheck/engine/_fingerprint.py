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


def row_groups(weight: np.ndarray, block: int = 8192, mult: np.ndarray | None = None) -> np.ndarray:
    """A group id per row, equal exactly for rows with identical bits, in O(n) extra memory.

    Rows are fingerprinted by their bits (:func:`row_fingerprints`: identical rows always
    collide); rows that share a fingerprint are then compared bit for bit, so a chance collision
    of different rows never merges them.
    """
    bits = np.ascontiguousarray(weight).view(np.uint64)
    _, group = np.unique(row_fingerprints(bits, mult, block), return_inverse=True)
    group = group.ravel().astype(np.int64)
    order = np.argsort(group, kind="stable")
    starts = np.flatnonzero(np.diff(group[order], prepend=-1))
    sizes = np.diff(starts, append=order.size)
    next_id = int(group.max()) + 1
    # Shared fingerprints: split by exact comparison, each group's slice of ``order`` on its own (a
    # scan of every row per group cost O(n) each, with thousands of duplicate pairs O(n^2)).
    for lo, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
        members = order[lo:lo + size]
        same = np.all(bits[members] == bits[members[0]], axis=1)
        members = members[~same]  # the rows equal to the first keep their id
        while members.size:
            same = np.all(bits[members] == bits[members[0]], axis=1)
            group[members[same]] = next_id
            next_id += 1
            members = members[~same]
    return group
