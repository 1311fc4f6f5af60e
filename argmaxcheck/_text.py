"""One rule for showing untrusted text (names and messages from model files) on a line."""

from __future__ import annotations


def printable(text: object, limit: int | None = None) -> str:
    """``text`` with every non-printable character replaced by its Python escape (``\\x1b``, ``\\n``, ``\\ud800``).

    Ordinary text (letters of any script, spaces, punctuation, backslashes) is
    left as it is, so paths and messages stay readable; the result can neither
    clear a terminal, break into several lines nor forge a CI annotation. With
    ``limit``, text longer than that many characters is cut and ends in ``...``.
    """
    text = str(text)
    cut = limit is not None and len(text) > limit
    if cut:
        text = text[: max(limit - 3, 0)]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text + "..." if cut else text
