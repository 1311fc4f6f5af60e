"""Names and text from an ONNX file, which are data: decoded so that every string leaving the source is valid,
printable text, and messages name the file the same way everywhere."""

from __future__ import annotations

from pathlib import Path

from ..._text import printable


def first_line(exc: BaseException) -> str:
    """An exception's first line, shown safely (its type name when it has no text)."""
    text = str(exc).strip()
    return show(text.splitlines()[0]) if text else type(exc).__name__


def shown_path(path: Path) -> str:
    """The model file as messages name it."""
    return show(str(path))


def name_key(value: str | bytes) -> str:
    """A name as a dictionary key. Protobuf hands back bytes for a string field that is not UTF-8;
    surrogateescape keeps such names distinct from every valid one."""
    return value if isinstance(value, str) else bytes(value).decode("utf-8", "surrogateescape")


def show(name: str) -> str:
    """A name for messages and reports: invalid bytes and control characters as backslash escapes."""
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # lone surrogates that surrogateescape did not make
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    return printable(text)


def free_text(value: str | bytes) -> str:
    """Free text (metadata, token names) as valid Unicode; tabs and the like are kept."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value.encode("utf-8", "backslashreplace").decode("utf-8")
