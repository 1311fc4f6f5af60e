"""CI gating: turn an audit report into pass/fail, with thresholds, a baseline and ignores.

A token is *flagged* when its verdict is ``unargmaxable``,
``practically_unreachable`` or ``undecided``. The gate counts flagged tokens
per category, leaving out

* tokens matched by an ignore pattern (the selection grammar of
  :mod:`argmaxcheck.selection`: ids, ``a-b`` ranges, ``name:TEXT``, ``re:REGEX``,
  ``kind:KIND``), and
* with a baseline (a previous JSON report), tokens that were already in the
  same category there: only what became worse fails the build.

and fails when a category's count exceeds its threshold (``fail_on``; by
default 0 for every category, so any flagged token fails). Tokens flagged in
the baseline and argmaxable now are listed as recovered.

``not_round_trip`` is a category of the input side: audited tokens the
tokenizer does not give back from their own text, whatever their verdict
(:mod:`argmaxcheck.sources.roundtrip`). It is counted only when asked for
(``--fail-on not_round_trip=N``), with the same ignores and baseline; a
report without a tokenizer counts none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from .._text import printable
from ..errors import InputError
from ..selection import Selection, Vocabulary
from .model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport

FLAGGED = (UNARGMAXABLE, PRACTICAL, UNDECIDED)
NOT_ROUND_TRIP = "not_round_trip"  # the input side: gated only when --fail-on names it
CATEGORIES = (*FLAGGED, NOT_ROUND_TRIP)
DEFAULT_FAIL_ON = {UNARGMAXABLE: 0, PRACTICAL: 0, UNDECIDED: 0}


@dataclass(frozen=True)
class GatePolicy:
    """When a report fails the gate.

    Attributes
    ----------
    fail_on : mapping of verdict to int or float
        Largest count of counted tokens allowed per flagged category
        (``math.inf``: never fail on it).
    ignore : sequence of str
        Patterns of tokens the gate never counts (see module docstring).
    """

    fail_on: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_FAIL_ON))
    ignore: Sequence[str] = ()

    def __post_init__(self):
        if not isinstance(self.fail_on, Mapping):
            raise InputError(f"--fail-on: expected a mapping of category to count, got {type(self.fail_on).__name__}")
        for key, value in self.fail_on.items():
            if key not in CATEGORIES:
                raise InputError(f"--fail-on: unknown category {key!r} (choose from {', '.join(CATEGORIES)})")
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
                raise InputError(f"--fail-on {key}: the threshold must be a count >= 0 or 'never', got {value!r}")
        if isinstance(self.ignore, str):  # one pattern, not a sequence of one-character patterns
            object.__setattr__(self, "ignore", (self.ignore,))
        self.ignored_selection()  # syntax, kinds and regular expressions, before any audit

    def ignored_selection(self) -> Selection | None:
        """The ``ignore`` patterns as one :class:`~argmaxcheck.selection.Selection` (None when there are none)."""
        if not self.ignore:
            return None
        bad = [p for p in self.ignore if not isinstance(p, str)]
        if bad:
            raise InputError(f"--ignore: patterns must be strings, got {_short(bad[0])}")
        return Selection.parse(self.ignore, what="--ignore")

    def check_rows(self, layer) -> None:
        """Raise :class:`InputError` if an ``ignore`` id or range is not a row of ``layer``, or a kind matches
        none of its rows (an ``OutputLayer``, a report or a :class:`~argmaxcheck.selection.Vocabulary`)."""
        _ignored_ids(self, layer)


@dataclass(frozen=True)
class Baseline:
    """The flagged tokens of a previous report: id -> (verdict, token string)."""

    path: str
    flagged: Mapping[int, tuple[str, str | None]]
    num_classes: int
    not_round_trip: frozenset[int] = frozenset()  # ids whose record says round_trip: false

    @classmethod
    def load(cls, path: str | Path) -> Baseline:
        """Read a JSON report written by ``argmaxcheck audit --format json``.

        Raises
        ------
        InputError
            One line naming ``--baseline`` and the file: missing, unreadable,
            not JSON (or nested too deeply), not our schema, or a token record
            of the wrong type.
        """
        def bad(why: str) -> InputError:
            return InputError(f"--baseline {path}: {why}")

        try:
            data = json.loads(Path(path).read_bytes())
        except FileNotFoundError:
            raise bad("no such file") from None
        except IsADirectoryError:
            raise bad("is a folder, not a JSON report") from None
        except OSError as exc:
            raise bad(f"cannot be read ({exc.strerror or exc})") from None
        except RecursionError:
            raise bad("not a JSON report (nested too deeply)") from None
        except MemoryError:
            raise bad("not a JSON report (too large to read)") from None
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
            raise bad(f"not a JSON report ({_first_line(exc)})") from None
        if not isinstance(data, dict) or not isinstance(data.get("summary"), dict) \
                or not isinstance(data.get("tokens"), list):
            raise bad("not an argmaxcheck JSON report (it needs a 'summary' object and a 'tokens' list)")
        version = data.get("schema_version", "1")
        if not isinstance(version, (str, int, float)) or isinstance(version, bool) \
                or str(version).split(".")[0] != "1":
            raise bad(f"schema_version {_short(version)} is not supported (this argmaxcheck reads 1.x)")
        num_classes = data["summary"].get("num_classes", -1)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < -1:
            raise bad(f"summary.num_classes must be a row count, got {_short(num_classes)}")
        flagged, not_round_trip = {}, set()
        for k, tok in enumerate(data["tokens"]):
            if not isinstance(tok, dict):
                raise bad(f"token record {k} is not an object")
            i, verdict, token = tok.get("id"), tok.get("verdict"), tok.get("token")
            if isinstance(i, bool) or not isinstance(i, int) or i < 0 or not isinstance(verdict, str):
                raise bad(f"token record {k} has no valid 'id'/'verdict'")
            if token is not None and not isinstance(token, str):
                raise bad(f"token record {k}: 'token' must be a string or null")
            if verdict in FLAGGED:
                flagged[i] = (verdict, token)
            if tok.get("round_trip") is False:
                not_round_trip.add(i)
        return cls(str(path), flagged, num_classes, frozenset(not_round_trip))

    def check_rows(self, num_classes: int) -> None:
        """Raise :class:`InputError` unless the baseline audited a layer of ``num_classes`` rows (checked
        by the CLI right after loading the layer, before the audit, and again by :func:`evaluate`)."""
        if self.num_classes not in (-1, num_classes):
            raise InputError(f"--baseline {self.path}: it audited {self.num_classes} rows, this layer has"
                             f" {num_classes}: not the same output layer")


@dataclass(frozen=True)
class GateResult:
    """What the gate decided, as data (the CLI's exit code and annotations come from here)."""

    passed: bool
    counts: dict[str, int]  # counted tokens per flagged category
    fail_on: dict[str, float]
    failing: dict[str, list[int]]  # counted token ids per category
    ignored: list[int]
    already_in_baseline: list[int]
    recovered: list[int]
    baseline: str | None

    def to_dict(self) -> dict:
        return {"passed": self.passed, "counts": self.counts,
                "fail_on": {k: (None if math.isinf(v) else int(v)) for k, v in self.fail_on.items()},
                "counted": self.failing, "failed": sorted(self.failures()), "ignored": self.ignored,
                "already_in_baseline": self.already_in_baseline, "recovered": self.recovered,
                "baseline": self.baseline}

    def counted(self) -> set[int]:
        """Ids of every counted token (flagged, not ignored, not already in the baseline)."""
        return {i for ids in self.failing.values() for i in ids}

    def exceeded(self, verdict: str) -> bool:
        """Whether ``verdict``'s count is over its threshold (so the gate fails on it)."""
        return self.counts.get(verdict, 0) > self.fail_on.get(verdict, 0)

    def failures(self) -> set[int]:
        """Ids of the tokens that fail the gate: every counted token of a category over its threshold.

        A category within its threshold (``--fail-on practically_unreachable=never``,
        or 3 tokens where 5 are allowed) fails nothing, so none of its tokens is
        a failure; one over it fails with all its counted tokens. Empty exactly
        when the gate passed: every format marks these tokens, and only these,
        as errors.
        """
        return {i for v, ids in self.failing.items() if self.exceeded(v) for i in ids}

    def status(self, token: int) -> str:
        """What the gate made of one flagged token: ``fails``, ``allowed``, ``ignored``, ``in baseline``."""
        return self._statuses.get(token, "")

    @cached_property
    def _statuses(self) -> dict[int, str]:
        out = {i: "ignored" for i in self.ignored} | {i: "in baseline" for i in self.already_in_baseline}
        for v, ids in self.failing.items():
            if v != NOT_ROUND_TRIP:
                out |= dict.fromkeys(ids, "fails" if self.exceeded(v) else "allowed")
        for i in self.failing.get(NOT_ROUND_TRIP, ()):  # a verdict's status comes first, unless this one fails
            if self.exceeded(NOT_ROUND_TRIP) or i not in out:
                out[i] = "fails" if self.exceeded(NOT_ROUND_TRIP) else "allowed"
        return out


def evaluate(report: AuditReport, policy: GatePolicy | None = None, baseline: Baseline | None = None) -> GateResult:
    """Apply ``policy`` (and ``baseline``) to ``report``."""
    policy = policy or GatePolicy()
    fail_on = {**DEFAULT_FAIL_ON, **policy.fail_on}
    if baseline is not None:
        baseline.check_rows(report.num_classes)
    ignore = _ignored_ids(policy, report)
    failing: dict[str, list[int]] = {v: [] for v in FLAGGED}
    ignored, known, recovered = [], [], []
    for t in report.tokens:
        before = baseline.flagged.get(t.id) if baseline else None
        if t.verdict == ARGMAXABLE:
            if before is not None:
                recovered.append(t.id)
            continue
        if t.id in ignore:
            ignored.append(t.id)
        elif before is not None and before[0] == t.verdict:
            known.append(t.id)
        else:
            failing[t.verdict].append(t.id)
    if NOT_ROUND_TRIP in fail_on:
        failing[NOT_ROUND_TRIP] = []
        known_rt = baseline.not_round_trip if baseline else frozenset()
        for i in report.not_round_trip or ():
            if i in ignore:
                if i not in ignored:
                    ignored.append(i)
            elif i not in known_rt:
                failing[NOT_ROUND_TRIP].append(i)
            elif i not in known:
                known.append(i)
        ignored.sort()
        known.sort()
    counts = {v: len(ids) for v, ids in failing.items()}
    passed = all(counts[v] <= fail_on[v] for v in counts)
    return GateResult(passed, counts, fail_on, failing, ignored, known, recovered,
                      baseline.path if baseline else None)


def parse_fail_on(specs: Sequence[str]) -> dict[str, float]:
    """``["unargmaxable=0", "undecided=never,practically_unreachable=3"]`` -> thresholds."""
    out: dict[str, float] = {}
    for spec in specs:
        for item in filter(None, (s.strip() for s in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_").replace(" ", "_")
            if not sep:
                raise InputError(f"--fail-on: '{item}' should be CATEGORY=COUNT, e.g. unargmaxable=0")
            value = value.strip().lower()
            if value in ("never", "inf", "none"):
                out[key] = math.inf
            else:
                try:
                    out[key] = int(value)
                except ValueError:
                    raise InputError(f"--fail-on {key}: '{value}' is not a count or 'never'") from None
    GatePolicy(out)  # validates categories and counts
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _short(text)


def _short(value: object, limit: int = 80) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, float) or value is None or (isinstance(value, int) and value.bit_length() < 256):
        text = repr(value)
    else:  # a container or a huge int from an untrusted file: its type says enough
        text = type(value).__name__
    return printable(text, limit + 3)


def _ignored_ids(policy: GatePolicy, layer) -> frozenset[int]:
    """The rows ``policy`` never counts. A name or pattern that matches no row is no error (one ignore
    list serves every model of a sweep); an id past the last row, or a kind no row has, is."""
    selection = policy.ignored_selection()
    if selection is None:
        return frozenset()
    vocab = layer if isinstance(layer, Vocabulary) else Vocabulary.of(layer)
    return frozenset(selection.resolve(vocab, require_match=False).tolist())
