"""The layer scaled by an exact power of two before any stage, and results scaled back.

Every stage works on the layer divided by ``2**e`` so that its largest |weight| or |bias| lies in
[0.5, 1): products stay clear of overflow and underflow, and the solvers' absolute tolerances mean
the same for every layer. Scaling every logit by one positive factor changes no argmax, so
verdicts, witnesses and certificates carry over; margins are multiplied back by ``2**e``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import TokenResult


def normalised(layer: OutputLayer) -> tuple[OutputLayer, int]:
    """The layer divided by ``2**e`` so that its largest |weight| or |bias| lies in [0.5, 1), and ``e``.

    Scaling every logit by the same positive factor changes no argmax, so verdicts, witnesses
    and certificates carry over unchanged; margins scale by the factor. The solvers' tolerances
    and caps are absolute numbers, so one scale for every layer also makes their answers (the
    practically-unreachable label above all) independent of the units the weights came in. Multiplying by a power
    of two is exact unless values fall below float64's normal range, which is checked.
    """
    top = _largest_magnitude(layer.weight)  # finite: validated at the boundary
    if layer.bias is not None:
        top = max(top, _largest_magnitude(layer.bias))
    if top == 0.0:
        raise InputError("every weight (and bias) of the layer is zero: every token ties with every other")
    exponent = int(np.frexp(top)[1])
    if exponent == 0:
        return layer, 0
    weight = _scaled_exactly(layer.weight, exponent)
    bias = None if layer.bias is None else _scaled_exactly(layer.bias, exponent)
    if weight is None or (layer.bias is not None and bias is None):
        values = np.abs(layer.weight.ravel())
        if layer.bias is not None:
            values = np.concatenate([values, np.abs(layer.bias)])
        smallest = float(values[values != 0].min())
        raise InputError(f"the weights and bias span too many orders of magnitude for float64 (largest |value|"
                         f" {top:.3g}, smallest nonzero {smallest:.3g}): scaling them to a common range would"
                         " round the smallest; rescale or clean the layer")
    return replace(layer, weight=weight, bias=bias), exponent


def _largest_magnitude(values: np.ndarray) -> float:
    """max |value| without a temporary the size of ``values`` (4 GB at 128k x 4096)."""
    return max(float(values.max()), -float(values.min())) if values.size else 0.0


def _scaled_exactly(values: np.ndarray, exponent: int, rows: int = 4096) -> np.ndarray | None:
    """``values * 2**-exponent``, or None if that rounds any value.

    Multiplying by a power of two is exact unless a result overflows or falls below float64's
    normal range. Here every result has magnitude below 1, so scaling up (``exponent < 0``)
    is always exact; scaling down is checked, a block of rows at a time (no second copy of
    the weights). The product by ``2.0**-exponent`` rounds as ``np.ldexp`` does, and is several
    times faster.
    """
    if abs(exponent) > 1000:  # 2**-exponent itself would not be a float64
        out = np.ldexp(values, -exponent)
        return out if np.array_equal(np.ldexp(out, exponent), values) else None
    out = values * (2.0 ** -exponent)
    if exponent > 0:
        back = 2.0 ** exponent
        flat_out, flat_in = out.reshape(out.shape[0], -1), values.reshape(values.shape[0], -1)
        for lo in range(0, flat_out.shape[0], rows):
            if not np.array_equal(flat_out[lo:lo + rows] * back, flat_in[lo:lo + rows]):
                return None
    return out


def unscaled(result: TokenResult, exponent: int) -> TokenResult:
    """A result of the scaled layer in the units of the layer as given (margins times ``2**exponent``)."""
    return replace(result, margin=_ldexp(result.margin, exponent), best_margin=_ldexp(result.best_margin, exponent),
                   threshold=_ldexp(result.threshold, exponent),
                   bracket_lower=_ldexp(result.bracket_lower, exponent),
                   bracket_upper=_ldexp(result.bracket_upper, exponent))


def _ldexp(value: float, exponent: int) -> float:
    """``value * 2**exponent`` as ``np.ldexp`` rounds it (inf past float64's range), on a Python float:
    numpy's scalar call cost whisper-base's 51,865 results a quarter of a second."""
    try:
        return math.ldexp(value, exponent)
    except OverflowError:
        return math.copysign(math.inf, value)
