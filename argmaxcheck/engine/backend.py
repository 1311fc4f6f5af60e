"""Where the heavy products run: numpy on the CPU, or torch (CUDA when present).

Three kinds of work go through a backend:

* the screen's float32 products ``W @ X^T`` and their reduction to each column's own score and
  best rival (:meth:`rival_scores`: on a GPU only two numbers a column come back, not m);
* per-row quadratic forms for ranking rows (:meth:`transformed_norms`);
* the float64 array work of the batched phase and of the screen's guesses (:attr:`ops`).

The screen's acceptance bounds (:mod:`.certify`) assume IEEE float32 products with round-to-nearest
and any summation order, so the torch backend turns off every faster-but-looser mode: TF32 matrix
products and reduced-precision reductions. Verdicts and certificates are then as rigorous as on
numpy (the products may differ in their last bits, which the bounds cover). The float64 work only
finds candidate weights and guesses; every certificate is still checked on the CPU in float64.

The weights go to the device once; when they do not fit, the backend falls back to smaller row
blocks, then to numpy on the CPU, and says so in :attr:`Backend.note`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

import numpy as np
from scipy import linalg
from scipy.linalg import blas

from ..errors import InputError
from ._blas import rows_times

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")


def rivals_of(scores: np.ndarray, own: np.ndarray, scale32: np.ndarray | None = None,
              offset32: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each column's own score and its best rival's, from float32 products (modified in place).

    ``scores`` (m, B) are scaled by ``scale32`` per column and shifted by ``offset32`` per row,
    each in float32; column b's own row is ``own[b]``. The max of float32 numbers is exact.
    """
    if scale32 is not None:
        scores *= scale32[None, :]
    if offset32 is not None:
        scores += offset32[:, None]
    cols = np.arange(scores.shape[1])
    mine = scores[own, cols].copy()
    scores[own, cols] = -np.inf
    best = scores.max(axis=0) if scores.shape[0] > 1 else np.full(cols.size, -np.inf, dtype=scores.dtype)
    scores[own, cols] = mine
    return mine, best


def row_parts(own: np.ndarray, m: int, rows: int):
    """The rows ``0..m`` in parts of ``rows``: ``(lo, hi, cols, at)`` for each, where ``cols`` are the
    columns whose own row (``own[c]``) falls in the part, at local row ``at`` (for masking it)."""
    order = np.argsort(own, kind="stable")
    sorted_own = own[order]
    for lo in range(0, m, rows):
        hi = min(m, lo + rows)
        a, b = np.searchsorted(sorted_own, [lo, hi])
        cols = order[a:b]
        yield lo, hi, cols, own[cols] - lo


class NumpyOps:
    """The float64 array operations of the batched phase, on numpy and scipy's BLAS."""

    name = "numpy"

    @staticmethod
    def asarray(array: np.ndarray):
        return np.asarray(array, dtype=np.float64)

    @staticmethod
    def numpy(array) -> np.ndarray:
        return np.asarray(array)

    exp = staticmethod(np.exp)
    isfinite = staticmethod(np.isfinite)
    where = staticmethod(np.where)

    @staticmethod
    def full(shape, value: float):
        return np.full(shape, value, order="F")  # BLAS takes Fortran-ordered operands without a copy

    @staticmethod
    def amax(array, axis: int):
        return array.max(axis=axis)

    @staticmethod
    def rows_times(matrix, columns):
        """``matrix @ columns`` for a tall matrix and a few columns."""
        return rows_times(matrix, columns)

    @staticmethod
    def t_times(matrix, columns):
        """``matrix.T @ columns``."""
        return blas.dgemm(1.0, matrix.T, columns)  # matrix.T is a Fortran view: no copy

    @staticmethod
    def covariance(centred, weights):
        """``sum_j weights_j c_j c_j^T - m m^T`` with ``m = sum_j weights_j c_j`` (lower triangle), in
        float64; from float32 rows (:meth:`single`) in float32 arithmetic, then widened."""
        if centred.dtype == np.float32:
            weights = weights.astype(np.float32)
            first = blas.sgemv(1.0, centred.T, weights)
            gram = blas.ssyrk(1.0, (centred * np.sqrt(weights)[:, None]).T, lower=1)
            return gram.astype(np.float64) - np.outer(first, first).astype(np.float64)
        first = blas.dgemv(1.0, centred.T, weights)
        return blas.dsyrk(1.0, (centred * np.sqrt(weights)[:, None]).T, lower=1) - np.outer(first, first)

    @staticmethod
    def single(array):
        """``array`` in float32, for products whose rounding only slows a search (a preconditioner)."""
        return np.asarray(array, dtype=np.float32)

    @staticmethod
    def centred_gram(weight: np.ndarray, mean: np.ndarray, block: int = 4096):
        """``(W - mean)^T (W - mean)`` over every row of ``weight``.

        Centred a block of rows at a time into one buffer, each block added by a dsyrk (half a
        GEMM's flops): the whole centred copy (212 MB at whisper-base) cost more in first-touch
        page faults than the product itself (0.74 s against 0.15 s).
        """
        n, d = weight.shape
        gram = np.zeros((d, d), order="F")
        buf = np.empty((min(block, max(n, 1)), d))
        for lo in range(0, n, block):
            part = np.subtract(weight[lo:lo + block], mean, out=buf[:min(block, n - lo)])
            gram = blas.dsyrk(1.0, part.T, beta=1.0, c=gram, lower=1, overwrite_c=1)
        lower = np.tril(gram)
        return lower + np.tril(lower, -1).T

    eigh = staticmethod(np.linalg.eigh)

    @staticmethod
    def cholesky(matrix):
        """A Cholesky factor of the lower triangle, or None when it is not positive definite."""
        try:
            return linalg.cho_factor(matrix, lower=True, check_finite=False)
        except linalg.LinAlgError:
            return None

    @staticmethod
    def cho_solve(factor, rhs):
        return linalg.cho_solve(factor, rhs, check_finite=False)

    @staticmethod
    def softmax_moments(z, moves, step):
        """Per column b, the mean and second moment of ``moves[:, b]`` under ``softmax(z[:, b] - step[b] moves[:, b])``.

        In one scratch array, the sums taken by einsum without temporaries: written out in numpy
        expressions it made ten passes over K x B arrays, and on undertrained 32768 x 512 (K = 4096,
        B = 256) the batched phase spent 10 of its 25 s in them.
        """
        y = np.multiply(moves, step, order="K")
        np.subtract(z, y, out=y)
        y -= y.max(axis=0)
        np.exp(y, out=y)
        total = y.sum(axis=0)
        mean = np.einsum("kb,kb->b", y, moves) / total
        second = np.einsum("kb,kb,kb->b", y, moves, moves) / total
        return mean, second


class TorchOps:
    """The same operations with torch float64 on ``device``."""

    def __init__(self, torch, device):
        self.torch = torch
        self.device = device
        self.name = f"torch ({device.type})"

    def asarray(self, array):
        return self.torch.as_tensor(np.asarray(array, dtype=np.float64), device=self.device)

    def numpy(self, array) -> np.ndarray:
        return array.cpu().numpy() if isinstance(array, self.torch.Tensor) else np.asarray(array)

    def exp(self, array):
        return self.torch.exp(array)

    def isfinite(self, array):
        return self.torch.isfinite(array)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def full(self, shape, value: float):
        return self.torch.full(shape if isinstance(shape, tuple) else (shape,), value,
                               dtype=self.torch.float64, device=self.device)

    def amax(self, array, axis: int):
        return self.torch.amax(array, dim=axis)

    def rows_times(self, matrix, columns):
        return matrix @ columns

    def t_times(self, matrix, columns):
        return matrix.T @ columns

    def single(self, array):
        return array  # float64 products cost a GPU little, and keep a searched step exact

    def covariance(self, centred, weights):
        first = centred.T @ weights
        return (centred * weights[:, None]).T @ centred - self.torch.outer(first, first)

    def centred_gram(self, weight: np.ndarray, mean: np.ndarray, block: int = 16384):
        mean_on = self.asarray(mean)
        gram = self.torch.zeros((weight.shape[1],) * 2, dtype=self.torch.float64, device=self.device)
        for lo in range(0, weight.shape[0], block):  # bounded device memory
            part = self.asarray(weight[lo:lo + block]) - mean_on
            gram += part.T @ part
        return gram

    def eigh(self, matrix):
        try:
            return self.torch.linalg.eigh(matrix)
        except RuntimeError as exc:  # torch.linalg.LinAlgError is a RuntimeError
            if _out_of_memory(exc):
                raise  # for on_device's fallback, not a failed decomposition
            raise np.linalg.LinAlgError(str(exc)) from None

    def cholesky(self, matrix):
        factor, info = self.torch.linalg.cholesky_ex(matrix)
        return None if int(info) != 0 else factor

    def cho_solve(self, factor, rhs):
        return self.torch.cholesky_solve(rhs, factor)

    def softmax_moments(self, z, moves, step):
        w = self.torch.softmax(z - step * moves, dim=0)
        mean = (w * moves).sum(dim=0)
        return mean, (w * moves * moves).sum(dim=0)


NUMPY_OPS = NumpyOps()


_SCORE_COLUMNS = 4096  # points a NumpyBackend scores at once (see NumpyBackend.score_columns)


class NumpyBackend:
    """Every product with numpy on the CPU."""

    name = "numpy (cpu)"
    note = ""
    ops = NUMPY_OPS

    def __init__(self, weight32: np.ndarray):
        self.weight32 = weight32

    def product(self, points32: np.ndarray) -> np.ndarray:
        """(m, B) float32 scores of every row at B float32 points (rows of ``points32``)."""
        return self.weight32 @ points32.T

    @staticmethod
    def score_columns(block: int) -> int:
        """How many points :meth:`rival_scores` takes at once, where ``block`` would fit a whole
        product in memory: it never holds one, and a wide right-hand side keeps the GEMM efficient
        (its time over 8192 points of a random 262,144 x 640 head: 470 s scaled up at 128 points a
        call, 305 s at 4,096; whisper-base's rows: 11.3 s at 647, 10.2 s at 4,096)."""
        return max(block, _SCORE_COLUMNS)

    def rival_scores(self, points32: np.ndarray, own: np.ndarray, scale32: np.ndarray | None = None,
                     offset32: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per point, the float32 score of its own row and the best of every other row's (:func:`rivals_of`).

        The product is made a few hundred rows at a time (8 MB of scores) and each part reduced
        while it is in the cache: the whole (m, B) product, written out and read back, cost a
        reduction pass about a fifth of the product's time (whisper-base: 2.3 s of a 15 s screen).
        """
        m, cols = self.weight32.shape[0], points32.shape[0]
        rows = max(256, (8 << 20) // (4 * max(cols, 1)))
        if rows >= m:
            return rivals_of(self.product(points32), own, scale32, offset32)
        points_t = np.ascontiguousarray(points32.T)
        mine = np.empty(cols, dtype=np.float32)
        best = np.full(cols, -np.inf, dtype=np.float32)
        for lo, hi, here, at in row_parts(own, m, rows):
            part = self.weight32[lo:hi] @ points_t
            if scale32 is not None:
                part *= scale32[None, :]
            if offset32 is not None:
                part += offset32[lo:hi, None]
            mine[here] = part[at, here]
            part[at, here] = -np.inf
            np.maximum(best, part.max(axis=0), out=best)
        return mine, best

    def on_device(self, work: Callable, what: str):
        """``work(ops)`` with this backend's float64 operations (numpy's)."""
        return work(self.ops)

    def transformed_norms(self, shift32: np.ndarray, transform32: np.ndarray, block: int = 65536) -> np.ndarray:
        """``|(w_j - shift) T|^2`` for every row j, in float32 (a ranking, not a bound)."""
        m = self.weight32.shape[0]
        out = np.empty(m)
        for lo in range(0, m, block):  # bounded memory at 262k rows
            part = (self.weight32[lo:lo + block] - shift32) @ transform32
            out[lo:lo + part.shape[0]] = np.einsum("ij,ij->i", part, part)
        return out


class TorchBackend:
    """The same work with torch on ``device`` (``cuda`` or ``cpu``), exact IEEE float32 products."""

    def __init__(self, weight32: np.ndarray, device: str):
        import torch  # noqa: PLC0415 - optional: only for --device cuda / torch-cpu

        self.torch = torch
        _exact_float32(torch)
        self.device = torch.device(device)
        self.name = f"torch ({self.device.type})"
        self.note = ""
        self.weight32 = weight32  # kept for the CPU fallback
        self.rows = weight32.shape[0]
        self.blocks: list = []
        self.starts: list[int] = []
        self.fallback: NumpyBackend | None = None
        self.ops = TorchOps(torch, self.device)
        self._offset = (None, None)  # (the host offset last used, its device copy)
        self._upload(weight32, self.rows)

    def _upload(self, weight32: np.ndarray, block_rows: int) -> None:
        torch = self.torch
        while True:
            try:
                self.starts = list(range(0, weight32.shape[0], block_rows))
                self.blocks = [torch.from_numpy(np.ascontiguousarray(weight32[lo:lo + block_rows])).to(self.device)
                               for lo in self.starts]
                return
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                self.blocks = []
                if not _out_of_memory(exc) or block_rows <= 4096:
                    raise
                block_rows //= 2
                torch.cuda.empty_cache()
                self.note = f"weights held on {self.device.type} in blocks of {block_rows} rows (device memory)"

    def on_device(self, work: Callable, what: str):
        """``work(ops)`` on the device; if it runs out of memory there, everything moves to numpy (said
        in :attr:`note`) and ``work`` runs again on numpy's operations. ``work`` must start afresh from
        host data: nothing it put on the device is kept."""
        if self.fallback is None:
            try:
                return work(self.ops)
            except RuntimeError as exc:
                if not _out_of_memory(exc):
                    raise
                self._to_numpy(what)
        return work(NUMPY_OPS)

    def _to_numpy(self, reason: str) -> NumpyBackend:
        """Out of device memory even in blocks: finish on the CPU rather than fail the audit."""
        self.blocks, self.note = [], f"{self.device.type} ran out of memory {reason}: moved to numpy on the CPU"
        self.name = "numpy (cpu, after a device out-of-memory)"
        self.fallback = NumpyBackend(self.weight32)
        self.ops = NUMPY_OPS
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()
        return self.fallback

    def product(self, points32: np.ndarray) -> np.ndarray:
        if self.fallback is not None:  # the device ran out of memory earlier: numpy from then on
            return self.fallback.product(points32)
        torch = self.torch
        try:
            x = torch.from_numpy(np.ascontiguousarray(points32)).to(self.device)
            parts = [(block @ x.T).cpu() for block in self.blocks]
            return torch.cat(parts).numpy() if len(parts) > 1 else parts[0].numpy()
        except RuntimeError as exc:
            if not _out_of_memory(exc):
                raise
            return self._to_numpy("in a product").product(points32)

    def score_columns(self, block: int) -> int:
        """Points per :meth:`rival_scores` call: ``block`` (on the device it holds each block's scores)."""
        return block if self.fallback is None else self.fallback.score_columns(block)

    def rival_scores(self, points32: np.ndarray, own: np.ndarray, scale32: np.ndarray | None = None,
                     offset32: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        if self.fallback is not None:
            return self.fallback.rival_scores(points32, own, scale32, offset32)
        try:
            return self._rival_scores(points32, own, scale32, offset32)
        except RuntimeError as exc:
            if not _out_of_memory(exc):
                raise
            return self._to_numpy("in a product").rival_scores(points32, own, scale32, offset32)

    def _rival_scores(self, points32, own, scale32, offset32):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(points32)).to(self.device)
        own_t = torch.from_numpy(np.asarray(own, dtype=np.int64)).to(self.device)
        scale = None if scale32 is None else torch.from_numpy(np.ascontiguousarray(scale32)).to(self.device)
        offset = None
        if offset32 is not None:
            if self._offset[0] is not offset32:  # the screen passes the same array every block
                self._offset = (offset32, torch.from_numpy(np.ascontiguousarray(offset32).ravel()).to(self.device))
            offset = self._offset[1]
        cols = torch.arange(x.shape[0], device=self.device)
        mine = torch.empty(x.shape[0], dtype=torch.float32, device=self.device)
        best = torch.full((x.shape[0],), -torch.inf, dtype=torch.float32, device=self.device)
        for lo, block in zip(self.starts, self.blocks, strict=True):
            s = block @ x.T  # the same float32 operations, in the same order, as rivals_of
            if scale is not None:
                s *= scale[None, :]
            if offset is not None:
                s += offset[lo:lo + s.shape[0], None]
            here = (own_t >= lo) & (own_t < lo + s.shape[0])
            if bool(here.any()):
                at = own_t[here] - lo
                mine[here] = s[at, cols[here]]
                s[at, cols[here]] = -torch.inf
            # NaN propagates through amax as through numpy's max: such a column proves nothing.
            best = torch.maximum(best, torch.amax(s, dim=0)) if s.shape[0] else best
        return mine.cpu().numpy(), best.cpu().numpy()

    def transformed_norms(self, shift32: np.ndarray, transform32: np.ndarray) -> np.ndarray:
        if self.fallback is not None:
            return self.fallback.transformed_norms(shift32, transform32)
        torch = self.torch
        try:
            shift = torch.from_numpy(np.ascontiguousarray(shift32)).to(self.device)
            transform = torch.from_numpy(np.ascontiguousarray(transform32)).to(self.device)
            parts = []
            for block in self.blocks:
                for lo in range(0, block.shape[0], 32768):  # bounded device memory
                    part = (block[lo:lo + 32768] - shift) @ transform
                    parts.append((part * part).sum(dim=1).double().cpu())
            return torch.cat(parts).numpy()
        except RuntimeError as exc:
            if not _out_of_memory(exc):
                raise
            return self._to_numpy("ranking rows").transformed_norms(shift32, transform32)


def _out_of_memory(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _exact_float32(torch) -> None:
    """No TF32 and no reduced-precision reductions: products stay IEEE float32 (the bounds need it)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.set_float32_matmul_precision("highest")
def _nvidia_driver() -> bool:
    """Whether an NVIDIA driver is loaded (cheap: no torch import)."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def make_backend(weight32: np.ndarray, device: str = "auto"):
    """The backend for ``device``: ``cpu`` numpy, ``cuda`` torch on the GPU, ``torch-cpu`` torch on the
    CPU (for tests), ``auto`` CUDA when torch sees a GPU, else numpy."""
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cpu" or (device == "auto" and not _nvidia_driver()):
        return NumpyBackend(weight32)  # no driver, no GPU: torch (seconds to import) is not even loaded
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        if device == "auto":
            return NumpyBackend(weight32)
        raise InputError(f"--device {device} needs torch: pip install 'argmaxcheck[torch]'") from None
    if device == "auto":
        return TorchBackend(weight32, "cuda") if torch.cuda.is_available() else NumpyBackend(weight32)
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA device here (use --device auto or cpu)")
    return TorchBackend(weight32, "cuda" if device == "cuda" else "cpu")
