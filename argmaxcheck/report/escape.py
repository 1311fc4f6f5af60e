"""Escaping for strings that come from model files (token names, tensor names, paths).

Every such string is untrusted data. The one rule, applied by every output:

* The data is kept as given: ``AuditReport.names``, ``TokenResult.token`` and
  the checkpoint info are never altered.
* Human outputs (terminal, text, Markdown, HTML, GitHub workflow commands,
  JUnit) show each such string through :func:`printable`: a character that is
  not printable (controls such as ESC, CR, LF, TAB, BEL; lone surrogates;
  noncharacters such as U+FFFE; format characters such as bidi overrides)
  becomes its Python escape (``\\x1b``, ``\\n``, ``\\ud800``, ``\\ufffe``), so
  it is visible and cannot drive a terminal, start a workflow command or make
  a document ill-formed. Token names are shown as Python literals
  (:func:`escape_token`), which escape the same characters and add quotes.
  Each format then escapes the printable text for its own syntax
  (:func:`markdown_text`, :func:`markdown_code`, :func:`html_text`,
  :func:`github_data`, XML by ElementTree).
* JSON outputs keep the strings as given (:func:`json_text`): a lone
  surrogate, which UTF-8 cannot encode, is written as the JSON escape
  ``\\ud800``, so the file is valid UTF-8 and parses back to the same string.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from .._text import printable


def escape_token(token: str | None) -> str:
    """The token as a Python literal, so invisible and control characters show."""
    return "" if token is None else repr(token)


# -- JSON ---------------------------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(data, indent: int | None = 2) -> str:
    """``data`` as JSON text that is valid UTF-8: readable non-ASCII, lone surrogates as ``\\uXXXX`` escapes.

    ``json.dumps`` with ``ensure_ascii=False`` leaves a lone surrogate (valid in
    a JSON file such as tokenizer.json, and in a Python string) as a raw code
    point that no UTF-8 writer accepts. Surrogates only occur inside JSON
    strings, where the six-character escape is equivalent: ``json.loads``
    returns the same string. Bytes (a name protobuf could not decode as
    UTF-8) are written as text with ``\\xNN`` for each undecodable byte.
    """
    text = json.dumps(data, indent=indent, ensure_ascii=False, default=_json_default)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _json_default(value):
    # protobuf (ONNX, proto2) hands back a name that is not valid UTF-8 as bytes: show its bytes as \xNN.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# -- XML ----------------------------------------------------------------------------------------------------------

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids, each replaced by its ``\\uXXXX`` escape.

    For text that is otherwise shown as is (a JSON record inside a JUnit
    failure: there the escape is also a valid JSON escape of the same
    character).
    """
    return _NOT_XML.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


# -- HTML ---------------------------------------------------------------------------------------------------------


def html_text(text: str) -> str:
    """Printable text, HTML-escaped (quotes included): inert in element content and attribute values."""
    return html.escape(printable(text))


# -- Markdown (GitHub pull-request comments) ----------------------------------------------------------------------

# CommonMark lets any ASCII punctuation be backslash-escaped. These start markup anywhere in a line: links and
# images (a "(" is only a link's destination after a "]"), emphasis, code, HTML tags and entities, table cells,
# strikethrough, math, backslash escapes themselves.
_MD_ANYWHERE = re.compile(r"([\\`*_{}\[\]#!|~<>&$])")
# These only start markup at the start of a line: bullet lists, setext headings and thematic breaks, "1." or "1)".
_MD_LINE_START = re.compile(r"^(\s*)(?:([-+=])|(\d+)([.)]))")
# What GitHub links after rendering, in plain text: @mentions and e-mail addresses, #123 references,
# bare URLs (scheme:// and www.). A word joiner (U+2060, invisible) after the trigger breaks the pattern.
_GITHUB_LINKS = re.compile(r"(?<=[@#])|(?<=:)(?=//)|(?<=www)(?=\.)", re.IGNORECASE)
_WORD_JOINER = "\u2060"


def markdown_text(text: str) -> str:
    """Printable ``text`` as Markdown prose that renders as exactly these characters.

    Nothing in it can form a link, image, autolink, HTML tag, emphasis, code
    span, heading, quote, list, table cell or line break, and GitHub's
    mentions (``@user``), issue references (``#123``) and bare-URL links are
    broken by an invisible word joiner.
    """
    text = _GITHUB_LINKS.sub(_WORD_JOINER, printable(text))
    text = _MD_ANYWHERE.sub(r"\\\1", text)
    return _MD_LINE_START.sub(lambda m: m.group(1) + (f"\\{m.group(2)}" if m.group(2) else
                                                      f"{m.group(3)}\\{m.group(4)}"), text, count=1)


def markdown_code(text: str, table: bool = False) -> str:
    """Printable ``text`` as a Markdown code span: shown literally, never markup, links or mentions.

    The fence is one backtick longer than the longest run of backticks inside,
    with a space of padding where the text starts or ends with a backtick or a
    space (CommonMark strips exactly that padding). ``table``: the span sits in
    a table cell, where GitHub splits cells at every pipe not escaped by an
    odd number of backslashes, even inside code.
    """
    text = printable(text)
    if not text:
        return ""
    if table:
        text = re.sub(r"(\\*)\|", lambda m: m.group(1) + "\\" * (1 if len(m.group(1)) % 2 == 0 else 2) + "|", text)
    fence = "`" * (1 + max((len(run) for run in re.findall("`+", text)), default=0))
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


# -- GitHub workflow commands -------------------------------------------------------------------------------------


def github_data(text: str) -> str:
    """Printable ``text`` as the message of a workflow command: one line, so it cannot start another command."""
    return printable(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_property(text: str) -> str:
    """Printable ``text`` as a workflow command property value (``title=...``): ``:`` and ``,`` escaped too."""
    return github_data(text).replace(":", "%3A").replace(",", "%2C")


# -- Our prose around strings from model files --------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How one output shows sentences that mix our prose with strings from model files.

    ``text`` renders our own words (already safe, but they contain characters
    such as ``#`` or ``|`` that a syntax may read); ``literal`` renders a string
    from a model file (a token's Python literal, a tensor name).
    """

    text: Callable[[str], str]
    literal: Callable[[str], str]


PLAIN = Style(printable, printable)
MARKDOWN_CELL = Style(markdown_text, lambda s: markdown_code(s, table=True))
HTML = Style(html_text, lambda s: f"<code>{html_text(s)}</code>")
