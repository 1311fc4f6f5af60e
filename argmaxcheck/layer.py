"""The validated output layer: the one place raw arrays are checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError


@dataclass(frozen=True, eq=False)
class OutputLayer:
    """A softmax output layer ``s(x) = weight @ x + bias``, validated.

    Attributes
    ----------
    weight : ndarray of shape (num_classes, dim), float64
    bias : ndarray of shape (num_classes,), float64, or None
    tokens : list of str or None
        One display name per row.
    special : frozenset of int
        Rows the tokenizer marks as special tokens.
    source_dtype : str
        The dtype the weights had before they were widened to float64.
    display : list of str or None
        What each row decodes to as text (``' the'`` for the piece ``'Ġthe'``),
        when the source has a tokenizer; see :mod:`argmaxcheck.sources.tokens`.
    token_kinds : dict of int to str
        Rows that are not ordinary text, by kind (``control``, ``byte``, ``unused``...).
    """

    weight: np.ndarray
    bias: np.ndarray | None
    tokens: list[str] | None
    source_dtype: str
    special: frozenset[int] = frozenset()  # ids the tokenizer marks as special tokens
    display: list[str] | None = None
    token_kinds: dict[int, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    @classmethod
    def from_arrays(cls, weight, bias=None, tokens: Sequence[str] | None = None,
                    *, name: str = "weight", bias_name: str = "bias",
                    source_dtype: str | None = None, copy: bool = True) -> OutputLayer:
        """Validate raw arrays (numpy, torch, lists) and widen them to float64.

        ``source_dtype`` names the precision the weights were stored in when the arrays given
        are already converted (e.g. folded from a float16 checkpoint); default: their own dtype.
        ``copy=False`` lets the layer keep a float64, C-ordered numpy ``weight`` as it is given (its
        -0.0 entries become 0.0 in place): for an array nobody else holds, such as a folded head
        (a second 200 MB copy cost whisper-base's load 0.3 s in first-touch page faults).
        """
        if not copy and isinstance(weight, np.ndarray) and weight.dtype == np.float64 and weight.flags.c_contiguous \
                and weight.flags.writeable:
            w, own_dtype = weight, "float64"
        else:
            w, own_dtype = _to_float64(weight, name)
        source_dtype = source_dtype or own_dtype
        if w.ndim != 2:
            raise InputError(f"{name} must be 2-D [num_classes, dim], got shape {w.shape}")
        n, d = w.shape
        if n == 0 or d == 0:
            raise InputError(f"{name} is empty (shape {w.shape})")
        _check_finite(w, name)
        b = None
        if bias is not None:
            b, _ = _to_float64(bias, bias_name)
            if b.ndim != 1 or b.shape[0] != n:
                raise InputError(f"{bias_name} has shape {b.shape}, expected ({n},) to match {name} {w.shape}")
            _check_finite(b, bias_name)
            if np.all(b == b[0]):
                b = None  # a constant bias shifts every logit alike; dropping it keeps the cone case exact
        names = None
        if tokens is not None:
            try:
                if isinstance(tokens, (str, bytes)):
                    raise TypeError
                names = [str(t) for t in tokens]
            except TypeError:
                raise InputError(f"token names must be a list of strings, got {type(tokens).__name__}") from None
            if len(names) != n:
                raise InputError(f"got {len(names)} token names for {n} rows of {name}")
        # +0.0 turns -0.0 into 0.0 so that byte-level duplicate detection sees equal rows as equal.
        # +0.0 also copies: the layer never aliases the caller's array (unless told it may, with
        # copy=False). A copy made by the widening above is reused in place rather than copied again
        # (a 262k x 640 head is 1.3 GB in float64).
        # Only a numpy input is known not to share memory with a fresh widening; a torch tensor's
        # numpy view does share it (float64 on the CPU), so anything else is copied.
        if w is not weight and (not isinstance(weight, np.ndarray) or np.may_share_memory(w, weight)
                                or not w.flags.c_contiguous):
            w = np.ascontiguousarray(w + 0.0)
        else:
            w += 0.0
        return cls(w, None if b is None else b + 0.0, names, source_dtype)


def as_float64(value, name: str = "array") -> np.ndarray:
    """A float64 numpy copy of an array or a dense torch tensor of real numbers (exact for every float dtype).

    Raises :class:`InputError` naming ``name`` for anything else: ragged lists, strings, objects,
    booleans, complex numbers, and torch tensors without plain values (meta, sparse, quantized).
    """
    return _to_float64(value, name)[0]


def _to_float64(array, name: str) -> tuple[np.ndarray, str]:
    if type(array).__module__.startswith("torch"):  # torch is optional: never import it for numpy input
        return _torch_to_float64(array, name)
    # Loaders widen dtypes numpy lacks (bfloat16) and say so in `source_dtype`.
    tagged = getattr(array, "source_dtype", None)
    try:
        arr = np.asarray(array)
    except (ValueError, TypeError):  # numpy refuses ragged nested lists
        raise InputError(f"{name} is not a rectangular array of numbers (ragged nested lists?)") from None
    source_dtype = tagged or str(arr.dtype)
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{name} is complex ({arr.dtype}); expected real numbers")
    # Void covers dtypes that numpy only knows through extensions (ml_dtypes' bfloat16); bool is not a number.
    if arr.dtype.kind not in "iufV":
        raise InputError(f"{name} has dtype {arr.dtype}, expected real numbers")
    try:
        with np.errstate(over="ignore"):  # a wider float that overflows is caught as non-finite by the caller
            return arr.astype(np.float64), source_dtype
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} has dtype {arr.dtype}, which cannot be read as float64: {exc}") from None


def _torch_to_float64(tensor, name: str) -> tuple[np.ndarray, str]:
    """A dense tensor of real numbers as float64; anything without plain values is an InputError."""
    import torch  # noqa: PLC0415 - already imported by whoever made the tensor

    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"{name} is a {type(tensor).__name__}, not an array or tensor")
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_meta:
        raise InputError(f"{name} is a meta tensor (a shape without values); load the real weights")
    if tensor.layout != torch.strided:
        raise InputError(f"{name} is a {str(tensor.layout).removeprefix('torch.')} tensor; convert it"
                         " with .to_dense() first")
    if tensor.is_quantized:
        raise InputError(f"{name} is a quantized tensor ({dtype}); call .dequantize() first")
    if tensor.dtype.is_complex:
        raise InputError(f"{name} is complex ({dtype}); expected real numbers")
    if tensor.dtype == torch.bool:
        raise InputError(f"{name} has dtype {dtype}, expected real numbers")
    try:
        return tensor.detach().to("cpu").double().numpy(), dtype
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # tensor subclasses torch cannot copy out
        raise InputError(f"{name} ({dtype}) cannot be read as float64: {str(exc).splitlines()[0][:200]}") from None


def _check_finite(arr: np.ndarray, name: str) -> None:
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = np.argwhere(~finite)
    first = tuple(int(v) for v in bad[0])
    where = f"row {first[0]}" if arr.ndim == 2 else f"entry {first[0]}"
    raise InputError(f"{name} has {len(bad)} non-finite value(s); first at {where}"
                     f" (value {arr[first]})")
