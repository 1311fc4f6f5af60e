"""Fold a final normalisation layer into the output layer (see docs/method.md).

Most transformers normalise the residual stream right before the output
layer, so the features that reach it are not all of R^d:

* **LayerNorm** ``x = gamma * z + beta`` with ``z = (h - mean h) / sqrt(var h + eps)``:
  ``z`` has mean 0 and ``|z|^2 = d var / (var + eps) < d``. In an orthonormal
  basis ``Q`` of the mean-zero subspace the logits are ``W' y + b'`` with
  ``W' = W diag(gamma) Q``, ``b' = W beta + b`` and ``|y| < sqrt(d)``: a ball.
  ``Q`` is a Householder reflection applied implicitly (:class:`MeanZeroBasis`),
  so a head with d much larger than its number of rows never needs a d x d matrix.
* **RMSNorm** ``x = g * z`` (Gemma: ``(1 + g) * z``), ``|z| < sqrt(d)`` in all of
  R^d: the ball ``|z| < sqrt(d)`` on ``W diag(g)``.

The open ball and its closure give the same verdicts (a strict win is an open
condition), so the audit runs on the closed ball.
"""

from __future__ import annotations

import numpy as np

from ..domains import Ball
from ..engine._fingerprint import row_groups
from ..errors import InputError
from ..layer import OutputLayer
from .base import LoadedLayer

NORMS = ("layernorm", "rmsnorm", "rmsnorm1p")


def fold_norm(raw: OutputLayer, norm: str, gamma: np.ndarray, beta: np.ndarray | None = None,
              head_bias: np.ndarray | None = None, eps: float = 1e-5) -> LoadedLayer:
    """Fold a final norm (``layernorm``, ``rmsnorm`` or ``rmsnorm1p``) into an output layer.

    ``raw`` is the head as stored (its bias, if any, is ignored in favour of
    ``head_bias``); returns the folded layer with the ball it must be audited on.
    """
    weight = raw.weight
    d = weight.shape[1]
    if norm not in ("layernorm", "rmsnorm", "rmsnorm1p"):
        raise InputError(f"unknown norm '{norm}' (expected layernorm, rmsnorm or rmsnorm1p)")
    for what, vec in (("norm weight", gamma), ("norm bias", beta), ("head bias", head_bias)):
        if vec is None:
            continue
        expected = d if what != "head bias" else weight.shape[0]
        if vec.shape != (expected,):
            raise InputError(f"{what} has shape {vec.shape}, expected ({expected},)")
        if not np.isfinite(vec).all():
            raise InputError(f"{what} has non-finite values")
    if norm == "layernorm" and d < 2:
        raise InputError("a LayerNorm over 1 feature always outputs its bias: every logit is constant")
    basis = None
    if norm == "layernorm":
        # Fold each distinct row once and copy it: BLAS need not round identical rows identically,
        # and duplicates (untrained reserved tokens) must stay exact ties after the fold.
        # (The RMSNorm fold scales elementwise, which keeps identical rows identical by itself.)
        # Rows are grouped by their bits (a fingerprint, not a sort: np.unique over whole rows took
        # 2.5 s of whisper-base's 4.2 s load), and only a head with duplicates pays for a gather.
        _, first, inverse = np.unique(row_groups(weight), return_index=True, return_inverse=True)
        beta = np.zeros(d) if beta is None else beta
        basis = MeanZeroBasis(d)
        distinct = weight if first.size == weight.shape[0] else weight[first]
        folded, bias = basis.apply(distinct, gamma), distinct @ beta
        if distinct is not weight:
            folded, bias = folded[inverse], bias[inverse]
        bias = bias + (0.0 if head_bias is None else head_bias)
        layer = OutputLayer.from_arrays(folded, bias, raw.tokens, source_dtype=raw.source_dtype, copy=False)
        domain_text = f"LayerNorm output: |z| <= sqrt({d}) in the {d - 1}-dim mean-zero subspace"
    else:
        scale = 1.0 + gamma if norm == "rmsnorm1p" else gamma
        layer = OutputLayer.from_arrays(weight * scale, head_bias, raw.tokens, source_dtype=raw.source_dtype,
                                        copy=False)
        domain_text = f"RMSNorm output: |z| <= sqrt({d})"
    # The head as stored: ``raw`` itself when its bias is the head's (a second validated copy of the
    # weights cost whisper-base 0.3 s and 200 MB).
    stored = raw if head_bias is raw.bias else OutputLayer.from_arrays(weight, head_bias, raw.tokens,
                                                                       source_dtype=raw.source_dtype)
    return LoadedLayer(layer, Ball(float(np.sqrt(d))), {"norm": norm, "domain": domain_text}, stored, norm,
                      basis, eps)


class MeanZeroBasis:
    """An orthonormal basis ``Q`` (d x d-1) of the mean-zero subspace ``1^perp``, never formed densely.

    ``Q`` is columns 2..d of the Householder reflection ``H = I - 2 v v^T / |v|^2`` with
    ``v = 1/sqrt(d) - e_1``, which swaps ``e_1`` and the unit mean vector; so
    ``A Q = (A - (2 / |v|^2) (A v) v^T)[:, 1:]``: O(n d) time and memory instead of O(d^2).
    ``z @ basis`` works on numpy arrays as it would for the dense matrix.
    """

    __array_ufunc__ = None  # makes numpy's `z @ basis` defer to __rmatmul__ instead of densifying

    def __init__(self, dim: int):
        self.dim = dim
        self._v = np.full(dim, 1.0 / np.sqrt(dim))
        self._v[0] -= 1.0
        self._scale = 2.0 / float(self._v @ self._v)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim - 1)

    def apply(self, a: np.ndarray, scale: np.ndarray | None = None, block: int = 4096) -> np.ndarray:
        """``(a * scale) @ Q`` for ``a`` of shape (..., d): coordinates of each row (times ``scale``,
        elementwise, when given) in the mean-zero basis.

        Rows go ``block`` at a time into one output array: the temporaries of whole-matrix
        arithmetic, each a fresh 200 MB at whisper-base's size, cost more than the arithmetic.
        """
        a = np.asarray(a, dtype=np.float64)
        if a.shape[-1] != self.dim:
            raise ValueError(f"expected vectors of length {self.dim}, got shape {a.shape}")
        rows = a.reshape(-1, self.dim)
        out = np.empty((rows.shape[0], self.dim - 1))
        for lo in range(0, rows.shape[0], block):
            part = rows[lo:lo + block] if scale is None else rows[lo:lo + block] * scale
            coef = (part @ self._v) * self._scale
            np.subtract(part[:, 1:], coef[:, None] * self._v[1:], out=out[lo:lo + block])
        return out.reshape((*a.shape[:-1], self.dim - 1))

    def __rmatmul__(self, a: np.ndarray) -> np.ndarray:
        return self.apply(a)

    def to_dense(self) -> np.ndarray:
        """``Q`` as a d x (d-1) array (O(d^2) memory: for small d and tests only)."""
        return self.apply(np.eye(self.dim))
