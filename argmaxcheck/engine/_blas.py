"""Matrix-vector products of the exact step, on the same BLAS as the interior-point method.

numpy and scipy each ship an OpenBLAS with its own thread pool, and an
OpenBLAS pool keeps its threads spinning for a while after each call. The
interior-point method runs on scipy's BLAS (:mod:`argmaxcheck.ipm`); the
products over every row that come between its solves (scores, witness and
certificate checks) went through numpy's, whose spinning threads then competed
with scipy's for the cores (the measurements: docs/benchmarks.md).

Any summation order keeps the rounding bounds of :mod:`argmaxcheck.certify`
valid, so these are drop-in replacements for ``@``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas


def matvec(matrix: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """``matrix @ vector`` for a float64 matrix."""
    if matrix.dtype == np.float64 and matrix.ndim == 2 and matrix.size:
        if matrix.flags.c_contiguous:  # matrix.T is a Fortran-ordered view: nothing is copied.
            return blas.dgemv(1.0, matrix.T, np.asarray(vector, dtype=np.float64), trans=1)
        if matrix.flags.f_contiguous:  # e.g. the columns outside a basis (certify.BasisInverse)
            return blas.dgemv(1.0, matrix, np.asarray(vector, dtype=np.float64))
    return matrix @ vector


def matmat(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` for float64 matrices (a small dense product, e.g. of a certificate's basis)."""
    return blas.dgemm(1.0, np.asarray(left, dtype=np.float64), np.asarray(right, dtype=np.float64))


def rows_times(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """``matrix @ columns`` for a large float64 ``matrix`` (n x d) and a few columns (d x B).

    One pass over the rows for all B columns, several times faster than B matrix-vector
    products (docs/benchmarks.md). ``matrix.T`` is a Fortran-ordered view, so the rows are not
    copied; the result is Fortran-ordered, so each of its columns is contiguous. Each column
    comes out bit for bit the same whatever the other columns are (OpenBLAS does not split
    the inner dimension), so batching never changes an answer.
    """
    if not (matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.ndim == 2 and matrix.size):
        return np.asfortranarray(matrix @ columns)
    return blas.dgemm(1.0, matrix.T, np.asfortranarray(columns, dtype=np.float64), trans_a=1)


def rows_times32(matrix: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """:func:`rows_times` for a float32 ``matrix`` and float32 columns, in float32 (a hint or a
    product whose rounding the caller bounds)."""
    return blas.sgemm(1.0, matrix.T, np.asfortranarray(columns, dtype=np.float32), trans_a=1)


def vecmat(vector: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``vector @ matrix`` for a float64 matrix."""
    if matrix.dtype == np.float64 and matrix.flags.c_contiguous and matrix.ndim == 2 and matrix.size:
        return blas.dgemv(1.0, matrix.T, np.asarray(vector, dtype=np.float64))
    return vector @ matrix
