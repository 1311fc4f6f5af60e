"""What every source returns, and the small interface a source implements.

A *source* turns a path (a file, a folder, later a hub id) into a
:class:`LoadedLayer`: the output layer as it should be audited, the domain of
features the model can really produce (and why), the head as stored, and where
it all came from. The CLI picks a source from the registry in
:mod:`argmaxcheck.sources`; adding a format is one module plus one line there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ..domains import Domain
from ..layer import OutputLayer


@dataclass(frozen=True)
class SourceRequest:
    """What the user asked of a source (the CLI's array and norm flags).

    ``weight`` names the head tensor (``None``: the source's default); the
    other fields apply to plain array files.
    """

    weight: str | None = None
    bias: str | None = None
    names: str | None = None
    transpose: bool = False
    no_bias: bool = False
    norm: str | None = None
    norm_weight: str | None = None
    norm_bias: str | None = None


@dataclass(frozen=True, eq=False)
class LoadedLayer:
    """An output layer, read from a source, with the feature set it really sees.

    Attributes
    ----------
    layer : OutputLayer
        What to audit on ``domain``: the head with its final norm folded in,
        where the source has one (the token table is ``layer.tokens`` and
        ``layer.special``).
    domain : Domain
        The features the model can really produce.
    info : dict
        Provenance for the JSON report's ``checkpoint`` section: format,
        files, tensors, and ``domain``, the reason this domain was chosen.
        Empty for a plain array file audited as stored.
    raw : OutputLayer
        The head as stored, for audits on another domain.
    norm, basis, eps
        The folded norm (``none``, ``layernorm``, ``rmsnorm``, ``rmsnorm1p``),
        the LayerNorm's mean-zero basis (a :class:`~argmaxcheck.sources.norms.MeanZeroBasis`,
        applied as ``z @ basis`` without forming a d x d matrix) and its epsilon
        (see :meth:`fold_features`).
    tokenizer : callable or None
        Builds the model's ``tokenizers.Tokenizer`` when called (None: the source has none);
        :attr:`round_trip` uses it.
    """

    layer: OutputLayer
    domain: Domain
    info: dict = field(default_factory=dict)
    raw: OutputLayer | None = None
    norm: str = "none"
    basis: object | None = None  # norms.MeanZeroBasis (norms imports this module)
    eps: float = 0.0
    tokenizer: Callable[[], object] | None = None

    @functools.cached_property
    def round_trip(self):
        """The tokenizer's round trip of every row (a :class:`~argmaxcheck.report.model.RoundTrip`), computed
        on first use; None when the source has no tokenizer (plain arrays, ``vocab.json`` folders)."""
        tokenizer = self.tokenizer() if self.tokenizer is not None else None
        if tokenizer is None:
            return None
        from .roundtrip import round_trips  # noqa: PLC0415 - the tokenizers library only when asked

        return round_trips(tokenizer, self.layer.num_classes, self.layer.special)

    @property
    def domain_reason(self) -> str:
        """Why ``domain`` is the right one, in words."""
        return str(self.info.get("domain", "R^d: no final norm or activation is known"))

    def fold_features(self, hidden: np.ndarray) -> np.ndarray:
        """Map residual-stream vectors (..., d) to the audited coordinates (for tests and witnesses)."""
        h = np.asarray(hidden, dtype=np.float64)
        if self.norm == "layernorm":
            centred = h - h.mean(axis=-1, keepdims=True)
            z = centred / np.sqrt((centred**2).mean(axis=-1, keepdims=True) + self.eps)
            return z @ self.basis
        if self.norm in ("rmsnorm", "rmsnorm1p"):
            return h / np.sqrt((h**2).mean(axis=-1, keepdims=True) + self.eps)
        return h


@dataclass(frozen=True)
class HeadSource:
    """A :class:`Source` for a kind of model that ``matches`` recognises and ``read(path, head=...)`` loads,
    the head tensor being the user's ``--weight`` (None: the kind's own default)."""

    name: str
    recognise: Callable[[Path], bool]
    read: Callable[..., LoadedLayer]

    def matches(self, path: Path) -> bool:
        return self.recognise(path)

    def load(self, path: Path, request: SourceRequest) -> LoadedLayer:
        return self.read(path, head=request.weight)


class Source(Protocol):
    """One kind of model file. ``matches`` must be cheap: it decides which source reads a path."""

    name: str

    def matches(self, path: Path) -> bool: ...

    def load(self, path: Path, request: SourceRequest) -> LoadedLayer: ...
