"""Where the screen's float32 products run: numpy on the CPU, or torch (CUDA when present).

The screen's acceptance bounds (:mod:`.certify`) assume IEEE float32 products with round-to-nearest
and any summation order, so the torch backend turns off every faster-but-looser mode: TF32 matrix
products and reduced-precision reductions. Verdicts and certificates are then as rigorous as on
numpy (the products may differ in their last bits, which the bounds cover).

The weights go to the device once; when they do not fit, the backend falls back to smaller row
blocks, then to numpy on the CPU, and says so in :attr:`Backend.note`.
"""

from __future__ import annotations

import glob
import os

import numpy as np

from ..errors import InputError

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")


class NumpyBackend:
    """``weight32 @ points.T`` with numpy's BLAS."""

    name = "numpy (cpu)"
    note = ""

    def __init__(self, weight32: np.ndarray):
        self.weight32 = weight32

    def product(self, points32: np.ndarray) -> np.ndarray:
        """(m, B) float32 scores of every row at B float32 points (rows of ``points32``)."""
        return self.weight32 @ points32.T


class TorchBackend:
    """The same product with torch on ``device`` (``cuda`` or ``cpu``), exact IEEE float32."""

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
        self.fallback: NumpyBackend | None = None
        self._upload(weight32, self.rows)

    def _upload(self, weight32: np.ndarray, block_rows: int) -> None:
        torch = self.torch
        while True:
            try:
                self.blocks = [torch.from_numpy(np.ascontiguousarray(weight32[lo:lo + block_rows])).to(self.device)
                               for lo in range(0, weight32.shape[0], block_rows)]
                return
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                self.blocks = []
                if "out of memory" not in str(exc).lower() or block_rows <= 4096:
                    raise
                block_rows //= 2
                torch.cuda.empty_cache()
                self.note = f"weights held on {self.device.type} in blocks of {block_rows} rows (device memory)"

    def product(self, points32: np.ndarray) -> np.ndarray:
        if self.fallback is not None:  # the device ran out of memory earlier: numpy from then on
            return self.fallback.product(points32)
        torch = self.torch
        try:
            x = torch.from_numpy(np.ascontiguousarray(points32)).to(self.device)
            parts = [(block @ x.T).cpu() for block in self.blocks]
            return torch.cat(parts).numpy() if len(parts) > 1 else parts[0].numpy()
        except RuntimeError as exc:
            if "out of memory" not in str(exc).lower():
                raise
            # Out of device memory even in blocks: finish on the CPU rather than fail the audit.
            self.blocks, self.note = [], f"{self.device.type} ran out of memory: products moved to numpy on the CPU"
            self.name = "numpy (cpu, after a device out-of-memory)"
            self.fallback = NumpyBackend(self.weight32)
            return self.fallback.product(points32)


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
