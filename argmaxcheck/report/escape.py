"""Escaping for strings that come from model files (token names, tensor names, paths).

Every such string is untrusted data: each format escapes it for its own syntax
with these helpers, so a token cannot add markup, links, annotations or
terminal control sequences to a report.
"""

from __future__ import annotations


def escape_token(token: str | None) -> str:
    """The token as a Python literal, so invisible and control characters show."""
    return "" if token is None else repr(token)


def markdown_cell(text: str, code: bool = False) -> str:
    text = text.replace("|", "\\|").replace("\n", " ")
    if code and text:
        return "<code>" + text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") + "</code>"
    return text.replace("<", "&lt;").replace(">", "&gt;")


def github_data(text: str) -> str:  # escaping rules of GitHub's workflow commands
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_property(text: str) -> str:
    return github_data(text).replace(":", "%3A").replace(",", "%2C")
