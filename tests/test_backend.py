"""The torch backend (run on the CPU here) gives the numpy path's verdicts, with checked witnesses."""

import numpy as np
import pytest

from argmaxcheck import AuditOptions, Ball, Box, InputError, Unbounded, audit
from argmaxcheck.engine.backend import NumpyBackend, TorchBackend, make_backend

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("domain", [Unbounded(), Ball(2.0), Box(-1.0, np.inf)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_torch_backend_matches_numpy(domain, with_bias):
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(400, 12))
    weight[:8] = weight[8:16].mean(axis=0) + 0.01 * rng.normal(size=(8, 12))  # near the hull: exact step
    bias = rng.normal(size=400) * 0.3 if with_bias else None
    ref = audit(weight, bias, domain=domain, options=AuditOptions(device="cpu", probability_seconds=0.0))
    got = audit(weight, bias, domain=domain, options=AuditOptions(device="torch-cpu", probability_seconds=0.0))
    assert got.timings["device"] == "torch (cpu)" and ref.timings["device"] == "numpy (cpu)"
    assert [t.verdict for t in got.tokens] == [t.verdict for t in ref.tokens]
    b = np.zeros(400) if bias is None else bias
    for t in got.tokens:
        if t.verdict == "argmaxable":
            s = weight @ t.witness + b
            assert s[t.id] > np.delete(s, t.id).max()


def test_products_are_ieee_float32():
    rng = np.random.default_rng(1)
    w32 = rng.normal(size=(300, 64)).astype(np.float32)
    x32 = rng.normal(size=(7, 64)).astype(np.float32)
    got = TorchBackend(w32, "cpu").product(x32)
    exact = w32.astype(np.float64) @ x32.astype(np.float64).T
    # Within the float32 dot-product bound the screen certifies with (gamma_(d+2) |w||x|).
    bound = 2 * 66 * 2.0**-24 * np.linalg.norm(w32, axis=1)[:, None] * np.linalg.norm(x32, axis=1)[None, :]
    assert got.dtype == np.float32 and np.all(np.abs(got - exact) <= bound)
    assert not torch.backends.cuda.matmul.allow_tf32


def test_device_choice():
    w32 = np.eye(3, dtype=np.float32)
    assert isinstance(make_backend(w32, "cpu"), NumpyBackend)
    with pytest.raises(InputError, match="device must be one of"):
        make_backend(w32, "tpu")
    if not torch.cuda.is_available():
        assert isinstance(make_backend(w32, "auto"), NumpyBackend)
        with pytest.raises(InputError, match="no CUDA device"):
            make_backend(w32, "cuda")


def test_out_of_device_memory_moves_the_products_to_numpy(monkeypatch):
    rng = np.random.default_rng(2)
    w32 = rng.normal(size=(50, 8)).astype(np.float32)
    x32 = rng.normal(size=(3, 8)).astype(np.float32)
    backend = TorchBackend(w32, "cpu")

    class _Full:
        def __matmul__(self, other):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    backend.blocks = [_Full()]
    first = backend.product(x32)  # the failing device product falls back ...
    second = backend.product(x32)  # ... and every later one goes straight to numpy
    np.testing.assert_array_equal(first, w32 @ x32.T)
    np.testing.assert_array_equal(second, w32 @ x32.T)
    assert "out of memory" in backend.note and backend.name.startswith("numpy")
