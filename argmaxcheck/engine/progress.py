"""Progress of an audit, stage by stage, for whoever watches it (a terminal bar, a log, a test).

The audit announces each stage (screen, seeding, exact step, best margins, probability bounds)
with the number of tokens it will look at, then advances through them; no stage goes more than
one block of work (a matrix product, one token's solve) without a report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    """What the audit calls. ``stage`` starts a named stage over ``total`` items; ``advance`` counts items done."""

    def stage(self, name: str, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass


class _Counter:
    """A plain callable given each ``advance(n)`` of every stage (the older ``progress=`` interface).

    A token that passes several stages (screen passes, the batched phase, seeding, the exact
    step) is counted in each, so the sum can exceed the number of tokens; use an object with
    ``stage`` and ``advance`` for totals per stage.
    """

    def __init__(self, callback: Callable[[int], None]):
        self.callback = callback

    def stage(self, name: str, total: int) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.callback(n)


def as_progress(progress) -> Progress:
    """``progress`` as a :class:`Progress`: an object with ``stage``/``advance``, a callable, or None."""
    if progress is None:
        return _Silent()
    if hasattr(progress, "stage") and hasattr(progress, "advance"):
        return progress
    return _Counter(progress)
