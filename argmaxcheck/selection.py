"""Which rows a command means: one grammar for ``--tokens``, ``--ignore``, ``explain`` and the library.

A selection never guesses between two readings of the same text. Every
vocabulary has digit tokens ("5" is a token of most BPE vocabularies), so plain
digits could name a row id or a token's text; here they always name a row id,
and text is only ever matched when it is asked for by a prefix:

==================  =========================================================
``5``               row 5
``10-20``           rows 10 to 20, both included
``name:TEXT``       rows whose stored piece is exactly ``TEXT``
``re:REGEX``        rows whose stored piece contains a match of ``REGEX``
``kind:KIND``       rows of a kind: ``control``, ``user-defined``, ``unused``,
                    ``byte``, ``added``, ``special``, ``padding``, ``unknown``
==================  =========================================================

Items are separated by commas (``0,5,10-20,kind:byte``). Token text may itself
contain commas, so ``name:`` and ``re:`` take the rest of their argument,
commas included (``5,name:a,b`` is row 5 and the token ``a,b``). Anything
else, a bare word included, is refused with a one-line error that says which
prefix to use.

``kind:added`` is every row the tokenizer lists as an added token: the
``added_tokens`` of ``tokenizer.json`` (special or not) and GGUF's
user-defined and control tokens. ``kind:special`` is every row the tokenizer
marks special (GGUF: its control tokens).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ._text import printable
from .errors import InputError

# The kinds a user may name, and the stored kinds (sources/tokens.py) each one matches.
KINDS: dict[str, frozenset[str]] = {
    "control": frozenset({"control"}),
    "user-defined": frozenset({"user_defined"}),
    "unused": frozenset({"unused"}),
    "byte": frozenset({"byte"}),
    "added": frozenset({"added", "special", "user_defined", "control"}),
    "special": frozenset({"special"}),  # plus the rows in the layer's special set
    "padding": frozenset({"padding"}),
    "unknown": frozenset({"unknown"}),
}
_TEXT_PREFIXES = ("name:", "re:")


@dataclass(frozen=True)
class Vocabulary:
    """What a selection is resolved against: the number of rows and what is known of each.

    Attributes
    ----------
    num_classes : int
    names : sequence of str or None
        The stored pieces (``name:`` and ``re:`` match these).
    kinds : dict of int to str
        Rows that are not ordinary text (:mod:`argmaxcheck.sources.tokens`).
    special : frozenset of int
        Rows the tokenizer marks as special.
    """

    num_classes: int
    names: Sequence[str] | None = None
    kinds: dict[int, str] | None = None
    special: frozenset[int] = frozenset()

    @classmethod
    def of(cls, layer) -> Vocabulary:
        """The vocabulary of an :class:`~argmaxcheck.layer.OutputLayer` or an ``AuditReport``."""
        # An OutputLayer keeps its pieces as ``tokens``; an AuditReport as ``names`` (its ``tokens`` are results).
        names = layer.names if hasattr(layer, "names") else layer.tokens
        return cls(int(layer.num_classes), names, dict(getattr(layer, "token_kinds", None) or {}),
                   frozenset(getattr(layer, "special", frozenset())))


@dataclass(frozen=True)
class _Item:
    form: str  # "ids", "name", "re", "kind"
    text: str  # as the user wrote it, for messages
    lo: int = 0
    hi: int = 0
    pattern: re.Pattern | None = None


@dataclass(frozen=True)
class Selection:
    """A parsed selection: its syntax is checked once, then it is resolved against a vocabulary.

    ``what`` names the option in every message (``--tokens``, ``--ignore``, ``explain TOKEN``).
    """

    items: tuple[_Item, ...]
    what: str = "--tokens"

    @classmethod
    def parse(cls, spec: str | int | Iterable[str | int], what: str = "--tokens") -> Selection:
        """Check the syntax of one argument, or of several (each an argument of its own).

        Integers (the library's form) are row ids. Raises :class:`InputError` for a bare word,
        an unknown kind, a bad regular expression or an empty selection.
        """
        args = [spec] if isinstance(spec, (str, int, np.integer)) else list(spec)
        items: list[_Item] = []
        for arg in args:
            items.extend(_parse_argument(arg, what))
        if not items:
            raise InputError(f"{what}: no token given")
        return cls(tuple(items), what)

    def resolve(self, vocab: Vocabulary, *, require_match: bool = True) -> np.ndarray:
        """The sorted distinct row ids selected in ``vocab``.

        Ids and ranges are checked against the rows before they are expanded, so memory stays
        bounded by the vocabulary whatever the ranges say. With ``require_match``, an item
        that selects no row is an error; an unknown kind, or a kind no row has, always is.
        """
        n = vocab.num_classes
        chosen = np.zeros(n, dtype=bool)
        for item in self.items:
            hit = self._rows(item, vocab)
            if item.form == "ids":
                if item.hi >= n:
                    kind = "range" if item.lo != item.hi else "id"
                    raise InputError(f"{self.what}: {kind} {printable(item.text, 80)} is out of range"
                                     f" (the layer has {n} rows: 0..{n - 1})")
                chosen[item.lo:item.hi + 1] = True
                continue
            if not hit.any() and (require_match or item.form == "kind"):
                raise InputError(f"{self.what}: {printable(item.text, 80)} matches no token"
                                 + (_kinds_known(vocab) if item.form == "kind" else ""))
            chosen |= hit
        return np.flatnonzero(chosen)

    def _rows(self, item: _Item, vocab: Vocabulary) -> np.ndarray:
        """A boolean mask of the rows a text or kind item matches (ids are handled by the caller)."""
        n = vocab.num_classes
        hit = np.zeros(n, dtype=bool)
        if item.form == "ids":
            return hit
        if item.form == "kind":
            stored = KINDS[item.text[len("kind:"):]]
            for i, kind in (vocab.kinds or {}).items():
                if kind in stored and 0 <= i < n:
                    hit[i] = True
            if item.text == "kind:special":
                hit[[i for i in vocab.special if 0 <= i < n]] = True
            return hit
        if vocab.names is None:
            raise InputError(f"{self.what}: {printable(item.text, 80)} needs token names, and this layer has none")
        if item.form == "name":
            target = item.text[len("name:"):]
            hit[[i for i, piece in enumerate(vocab.names) if piece == target]] = True
        else:
            hit[[i for i, piece in enumerate(vocab.names) if piece is not None and item.pattern.search(piece)]] = True
        return hit


def select(spec, layer, what: str = "--tokens") -> list[int]:
    """The row ids ``spec`` selects in ``layer`` (an ``OutputLayer``, an ``AuditReport`` or a ``Vocabulary``).

    Examples
    --------
    >>> select("0,5,10-12", vocabulary)            # doctest: +SKIP
    [0, 5, 10, 11, 12]
    >>> select(["kind:byte", "name:<|endoftext|>"], layer)  # doctest: +SKIP
    """
    vocab = layer if isinstance(layer, Vocabulary) else Vocabulary.of(layer)
    return Selection.parse(spec, what).resolve(vocab).tolist()


def check_ids(tokens: Iterable, n: int, what: str = "tokens") -> list[int]:
    """Sorted distinct row ids from integers, each checked to be a row of an ``n``-row layer.

    The library's and the runner's check (the CLI's ids come through :class:`Selection`).
    """
    ids = []
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            raise InputError(f"{what}: token ids must be integers, got {printable(repr(t), 80)}")
        if not 0 <= int(t) < n:
            raise InputError(f"{what}: token id {int(t)} is out of range: the layer has {n} rows (0..{n - 1})")
        ids.append(int(t))
    if not ids:
        raise InputError(f"{what}: the list of tokens to audit is empty")
    return sorted(set(ids))


def compact_ranges(ids: Iterable[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``: the audited ids, short enough for a report line."""
    out: list[str] = []
    ids = sorted(set(int(i) for i in ids))
    k = 0
    while k < len(ids):
        j = k
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[k]) if j == k else f"{ids[k]}-{ids[j]}")
        k = j + 1
    return ",".join(out)


def _parse_argument(arg: str | int, what: str) -> list[_Item]:
    if isinstance(arg, (int, np.integer)) and not isinstance(arg, bool):
        if arg < 0:
            raise InputError(f"{what}: token id {int(arg)} is negative")
        return [_Item("ids", str(int(arg)), int(arg), int(arg))]
    if not isinstance(arg, str):
        raise InputError(f"{what}: a selection is text or integers, got {type(arg).__name__}")
    items: list[_Item] = []
    rest = arg
    while rest:
        if rest.startswith(_TEXT_PREFIXES):  # text may hold commas: it takes the rest of the argument
            items.append(_text_item(rest, what))
            break
        part, _, rest = rest.partition(",")
        item = part.strip()
        if item:
            items.append(_short_item(item, what))
    return items


def _text_item(text: str, what: str) -> _Item:
    if text.startswith("name:"):
        if text == "name:":
            raise InputError(f"{what}: 'name:' needs the token's text after it")
        return _Item("name", text)
    try:
        return _Item("re", text, pattern=re.compile(text[len("re:"):]))
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{what} {printable(text, 80)!r}: bad regular expression ({printable(reason, 80)})") from None


def _short_item(item: str, what: str) -> _Item:
    if item.startswith("kind:"):
        kind = item[len("kind:"):].replace("_", "-")
        if kind not in KINDS:
            raise InputError(f"{what}: unknown kind {printable(item, 80)!r} (known: {', '.join(KINDS)})")
        return _Item("kind", f"kind:{kind}")
    lo, sep, hi = item.partition("-")
    if _is_id(lo) and (not sep or _is_id(hi)):
        start, stop = _digits(lo), _digits(hi) if sep else _digits(lo)
        if stop < start:
            raise InputError(f"{what}: range '{printable(item, 80)}' is empty")
        if stop >= 2**63:  # refused before any file is read: no layer has that many rows
            kind = "range" if sep else "id"
            raise InputError(f"{what}: {kind} {printable(item, 80)} is out of range (larger than any layer)")
        return _Item("ids", item, start, stop)
    if re.fullmatch(r"-[0-9]+", item):
        raise InputError(f"{what}: id {printable(item, 80)} is negative: row ids start at 0")
    raise InputError(f"{what}: '{printable(item, 80)}' is not a row id or an id range; select a token by its"
                     f" text with name:TEXT, by pattern with re:REGEX, or by kind with kind:KIND")


def _is_id(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _digits(text: str) -> int:
    """ASCII digits as an int, capped so that a 10^5-digit id costs nothing (it is out of range anyway)."""
    return int(text) if len(text.lstrip("0")) <= 19 else 2**63


def _kinds_known(vocab: Vocabulary) -> str:
    present = sorted({kind.replace("_", "-") for kind in (vocab.kinds or {}).values()})
    return f" (this layer's kinds: {', '.join(present)})" if present else " (this layer has no token kinds)"
