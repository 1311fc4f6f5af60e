"""How to run an audit: frozen options, each checked once, when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InputError
from .precision import UNIT_ROUNDOFF

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")


@dataclass(frozen=True)
class ExactOptions:
    """Tuning of the constraint-generation loop (defaults suit 1e3-3e5 rows)."""

    initial_rows: int = 0  # 0: chosen from the dimension
    rows_per_round: int = 0  # 0: chosen from the dimension
    max_rounds: int = 60
    time_limit: float = 120.0  # seconds per token
    seed_steps: int = 8  # ball domains: smoothed max-min steps over every row to pick the first working set
    full: bool = False  # solve over every row at once (reference mode)
    interior_point: bool = True  # try the dense interior-point method first (LP domains)

    def __post_init__(self):
        for name in ("initial_rows", "rows_per_round", "max_rounds", "seed_steps"):
            _check_count(f"ExactOptions.{name}", getattr(self, name))
        _check_seconds("ExactOptions.time_limit", self.time_limit, positive=True)


@dataclass(frozen=True)
class AuditOptions:
    """How to run an audit.

    Attributes
    ----------
    exact_all : bool
        Skip the screen and run the exact step for every token (reference mode).
    block_bytes : int
        Memory for one block of screening scores (float32, competitors x tokens).
    exact : ExactOptions
        Tuning of the constraint-generation loop.
    practical : bool
        Label argmaxable tokens whose best margin is below the logits'
        precision "practically_unreachable" (bounded domains; see
        :mod:`argmaxcheck.precision`).
    precision : str or None
        The dtype the logits are computed in (``float32``, ``float16``,
        ``bfloat16``, ``float64``); default: the dtype the weights came in.
    probability_seconds : float
        Time budget for bounding the highest probability each unreachable
        token can reach (bounded domains; :mod:`argmaxcheck.probability`).
        The audit spends at most this, and at most a tenth of the time the
        verdicts took (but 1 s at least): the brackets are a report's extra,
        not its verdicts. 0 skips it; tokens left when the budget runs out get
        no bounds.
    device : str
        Where the screen's float32 products and guesses, and the batched phase's search for
        weights, run (:mod:`argmaxcheck.engine.backend`); certificates are always checked on
        the CPU in float64:
        ``auto`` (CUDA through torch when present, else numpy), ``cpu`` (numpy),
        ``cuda``, or ``torch-cpu`` (torch on the CPU, for tests).
    batched : bool
        On R^d, try the batched phase (:mod:`argmaxcheck.engine.batched`) on the tokens the
        screen left, before the per-token solver: shared-basis certificates for rows deep
        inside their competitors' hull. False sends them all to the exact step.
    block_exact : bool
        Run the exact step for blocks of tokens together first (:mod:`argmaxcheck.engine.block_exact`);
        only the tokens a block cannot settle go to the per-token solver. Off with ``exact_all``.
    """

    exact_all: bool = False
    block_bytes: int = 128 << 20
    exact: ExactOptions = field(default_factory=ExactOptions)
    practical: bool = True
    precision: str | None = None
    probability_seconds: float = 30.0
    device: str = "auto"
    batched: bool = True
    block_exact: bool = True

    def __post_init__(self):
        if not isinstance(self.exact, ExactOptions):
            raise InputError(f"AuditOptions.exact must be an ExactOptions, got {type(self.exact).__name__}")
        if self.device not in DEVICES:
            raise InputError(f"AuditOptions.device: unknown device {self.device!r} (choose from {', '.join(DEVICES)})")
        if self.precision is not None and (not isinstance(self.precision, str)
                                           or self.precision.removeprefix("torch.") not in UNIT_ROUNDOFF):
            raise InputError(f"AuditOptions.precision: unknown precision {self.precision!r}"
                             f" (choose from {', '.join(UNIT_ROUNDOFF)})")
        _check_count("AuditOptions.block_bytes", self.block_bytes, least=1)
        _check_seconds("AuditOptions.probability_seconds", self.probability_seconds)


def _check_count(name: str, value, least: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InputError(f"{name} must be a whole number >= {least}, got {value!r}")


def _check_seconds(name: str, value, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise InputError(f"{name} must be a finite number of seconds {'> 0' if positive else '>= 0'}, got {value!r}")
