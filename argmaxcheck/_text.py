"""One rule for showing untrusted text (names and messages from model files) on a line."""

from __future__ import annotations

import re

# A line break with the spaces around it: what separates the paragraphs of a library's message.
_BREAK = re.compile(r"[^\S\n\r\v\f\x1c-\x1e\x85\u2028\u2029]*[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]\s*")


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


def one_line(text: object, limit: int | None = None) -> str:
    """A library's message (torch's, a warning's) as one printable line: each line break, with the
    blanks around it, becomes one space; anything else non-printable is escaped as by :func:`printable`.

    For prose from a library, where a line break separates sentences; a name from a model file keeps its
    newline visible as ``\\n`` (:func:`printable`), so two different names never look alike.
    """
    return printable(_BREAK.sub(" ", str(text).strip()), limit)
