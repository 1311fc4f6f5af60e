"""The token table: each row's raw piece, the text it decodes to, and the rows that are not text.

Vocabularies store *pieces*, not text: byte-level BPE (GPT-2, Llama 3, Qwen,
SmolLM) spells a leading space ``Ġ`` and a newline ``Ċ``; SentencePiece
(Llama 2, Gemma) spells the space ``▁`` and keeps raw bytes as ``<0x0A>``.
Reports show the decoded form (``' the'``, ``'\\n'``, ``'’'``) next to the
piece. A byte that is not a whole UTF-8 character on its own (the first byte
of ``’``) is shown as ``<0xE2>``, never as ``�``.

``tokenizer.json`` is read and decoded with the ``tokenizers`` library (the
tokenizer's own decoder). GGUF files carry only pieces and token types; they
are decoded by their ``tokenizer.ggml.model``: ``gpt2`` is byte-level BPE,
``llama`` SentencePiece.

Rows that are not ordinary text get a *kind*, shown in every report: from
GGUF token types ``control``, ``user_defined``, ``unused``, ``byte`` and
``unknown``; from ``tokenizer.json`` ``special`` and ``added`` (added tokens
with and without the special flag) and ``byte`` (SentencePiece byte-fallback
pieces); ``padding`` for head rows past the end of the vocabulary.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError
from .arrays import read_json
from .base import LoadedLayer

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
# GGUF's tokenizer.ggml.token_type codes (llama.cpp's llama_token_type); 1 is a normal token.
GGUF_KINDS = {2: "unknown", 3: "control", 4: "user_defined", 5: "unused", 6: "byte"}
_TEXT_KINDS = ("control", "user_defined", "unused", "unknown")  # GGUF stores these as their text


def _hex_bytes(err: UnicodeError) -> tuple[str, int]:
    return "".join(f"<0x{b:02X}>" for b in err.object[err.start:err.end]), err.end


codecs.register_error("argmaxcheck-hexbytes", _hex_bytes)


def bytes_text(data: bytes) -> str:
    """UTF-8 text in which each byte that is not part of a whole character is written ``<0xAB>``."""
    return data.decode("utf-8", errors="argmaxcheck-hexbytes")


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's character for each byte (GPT-2's table, used by every byte-level vocabulary):
    printable Latin-1 bytes stand for themselves, the other 68 for code points 256, 257, ... in byte order."""
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in visible}
    others = [b for b in range(256) if chr(b) not in table]
    table.update({chr(256 + k): b for k, b in enumerate(others)})
    return table


def byte_level_bytes(piece: str) -> bytes | None:
    """The bytes a byte-level BPE piece stands for; None if the piece is not byte-level."""
    table = _byte_level_alphabet()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        return None


def _fallback_byte(piece: str) -> bytes | None:
    match = _BYTE_PIECE.fullmatch(piece)
    return None if match is None else bytes([int(match[1], 16)])


def _readable(piece: str, text: str) -> str:
    """``text`` (a decoder's output), with a replacement character put back as the bytes it replaced."""
    if "\ufffd" not in text or "\ufffd" in piece:
        return text
    raw = byte_level_bytes(piece)
    if raw is None:
        raw = _fallback_byte(piece)
    return piece if raw is None else bytes_text(raw)


@dataclass(frozen=True, eq=False)
class TokenTable:
    """What a source knows about its vocabulary, one entry per head row.

    Attributes
    ----------
    pieces : list of str
        The raw pieces as stored (what ``--tokens`` and ``--ignore`` match).
    display : list of str or None
        The text each row decodes to, when the source has a decoder.
    kinds : dict of int to str
        Rows that are not ordinary text (see the module docstring).
    special : frozenset of int
        Rows the tokenizer marks as special (GGUF: control tokens).
    tokenizer : callable or None
        Builds the ``tokenizers.Tokenizer`` these rows come from (for the round trip); None without one.
    """

    pieces: list[str]
    display: list[str] | None = None
    kinds: dict[int, str] = field(default_factory=dict)
    special: frozenset[int] = frozenset()
    tokenizer: Callable[[], object] | None = None

    @classmethod
    def unnamed(cls, rows: int) -> TokenTable:
        """No vocabulary: rows are named by their id."""
        return cls([f"<row {i}>" for i in range(rows)])

    def apply(self, loaded: LoadedLayer) -> LoadedLayer:
        """``loaded`` with this table on its audited and its stored layer."""
        def attach(layer):
            if layer is None:
                return None
            if len(self.pieces) != layer.num_classes:
                raise InputError(f"the token table has {len(self.pieces)} entries for {layer.num_classes} rows")
            return dataclasses.replace(layer, tokens=list(self.pieces), special=self.special,
                                       display=self.display, token_kinds=dict(self.kinds))

        return dataclasses.replace(loaded, layer=attach(loaded.layer), raw=attach(loaded.raw),
                                   tokenizer=self.tokenizer)


def from_tokenizer(tokenizer, rows: int, where: str) -> TokenTable:
    """The table of a ``tokenizers.Tokenizer`` for a head of ``rows`` rows.

    Rows past the vocabulary (heads padded to a round size) are ``<padding row N>``;
    a vocabulary with ids the head has no row for is an error: ``where`` names it.
    """
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    size = max(vocab.values(), default=-1) + 1
    if size > rows:
        raise InputError(f"{where}: the tokenizer has {size} tokens but the head has {rows} rows;"
                         " they must belong to the same model")
    pieces: list[str | None] = [None] * rows
    for piece, i in vocab.items():
        pieces[i] = piece
    kinds: dict[int, str] = {}
    for i, added in tokenizer.get_added_tokens_decoder().items():
        if i < rows:
            kinds[i] = "special" if added.special else "added"
    base = tokenizer.get_vocab_size(with_added_tokens=False)
    for i in range(base, min(size, rows)):  # past the model's own vocabulary: added, whatever the file says
        if pieces[i] is not None:
            kinds.setdefault(i, "added")
    special = frozenset(i for i, kind in kinds.items() if kind == "special")
    for i, piece in enumerate(pieces):
        if piece is None:
            kinds[i] = "padding"
        elif i not in kinds and _BYTE_PIECE.fullmatch(piece):
            kinds[i] = "byte"
    ids = [i for i, piece in enumerate(pieces) if piece is not None]
    display = [f"<padding row {i}>" if p is None else p for i, p in enumerate(pieces)]
    for i, text in zip(ids, _decode_each(tokenizer, ids, special), strict=True):
        display[i] = _readable(pieces[i], text)
    names = [f"<padding row {i}>" if p is None else p for i, p in enumerate(pieces)]
    return TokenTable(names, display, kinds, special, lambda: tokenizer)


def _decode_each(tokenizer, ids: list[int], special: frozenset[int]) -> list[str]:
    """Each token's text as it appears inside running text.

    Decoders drop a word's leading space when it opens the text (SentencePiece's
    ``▁the`` decodes to ``'the'`` alone), so each token is decoded after a plain
    reference token whose own text is then cut off; without such a token, alone.
    """
    ref = _reference_token(tokenizer, special)
    if ref is None:
        return tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    prefix = tokenizer.decode([ref], skip_special_tokens=False)
    texts = tokenizer.decode_batch([[ref, i] for i in ids], skip_special_tokens=False)
    return [t[len(prefix):] if t.startswith(prefix) else tokenizer.decode([i], skip_special_tokens=False)
            for i, t in zip(ids, texts, strict=True)]


def _reference_token(tokenizer, special: frozenset[int]) -> int | None:
    """A token that decodes to one ASCII letter and joins without a space; None if there is none."""
    for text in ("a", "e", "x", "0"):
        i = tokenizer.token_to_id(text)
        if i is not None and i not in special and tokenizer.decode([i, i], skip_special_tokens=False) == text * 2:
            return i
    return None


def tokenizer_json_table(path: Path, rows: int) -> TokenTable:
    """Read ``tokenizer.json`` with the ``tokenizers`` library."""
    try:
        stamp = path.stat().st_mtime_ns
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None
    return _tokenizer_json_cached(str(path), stamp, rows)


@functools.lru_cache(maxsize=4)
def _tokenizer_json_cached(path: str, _stamp: int, rows: int) -> TokenTable:
    # Cached because a folder's table is read for its names and again for its decoded forms.
    try:
        tokenizer = _load_tokenizer(path)
    except InputError as refused:
        # The library refuses some files that are valid JSON (a lone surrogate such as "\ud800" in a
        # piece): read their vocabulary as plain JSON, pieces as stored, without decoded forms.
        return _raw_tokenizer_table(Path(path), rows, refused)
    return from_tokenizer(tokenizer, rows, path)


def _raw_tokenizer_table(path: Path, rows: int, refused: InputError) -> TokenTable:
    """The pieces of a ``tokenizer.json`` the library cannot load: ``model.vocab`` ({piece: id}, or
    Unigram's [[piece, score], ...]) and ``added_tokens``; the library's refusal if there are none."""
    data = read_json(path, VOCAB_JSON_LIMIT)
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, list):
        vocab = {entry[0]: i for i, entry in enumerate(vocab) if isinstance(entry, list) and entry
                 and isinstance(entry[0], str)}
    if not isinstance(vocab, dict) or not vocab or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
        raise refused
    added = data.get("added_tokens") if isinstance(data.get("added_tokens"), list) else []
    entries = dict(vocab)
    special = set()
    for token in added:
        if isinstance(token, dict) and isinstance(token.get("id"), int) and isinstance(token.get("content"), str):
            entries[token["content"]] = token["id"]
            if token.get("special"):
                special.add(token["id"])
    names, kinds = _row_pieces(path, entries, rows, "tokenizer")
    kinds.update({i: "special" for i in special if i < rows})
    return TokenTable(names, None, kinds, frozenset(i for i in special if i < rows))


def _load_tokenizer(path: str):
    try:
        from tokenizers import Tokenizer  # noqa: PLC0415 - only sources with a tokenizer need it
    except ImportError:
        raise InputError(f"{path}: reading tokenizer.json needs the tokenizers package"
                         " (pip install tokenizers)") from None
    try:
        return Tokenizer.from_file(path)
    except Exception as exc:  # the Rust side raises a bare Exception with serde's message
        raise InputError(f"{path}: not a tokenizer the tokenizers library can read ({exc})") from None


def _row_pieces(path: Path, entries: dict, rows: int, what: str) -> tuple[list[str], dict[int, str]]:
    """One piece per head row from {piece: id} (rows past the vocabulary are padding), checked against the head."""
    size = max(entries.values(), default=-1) + 1
    if size > rows:
        raise InputError(f"{path}: the {what} has {size} tokens but the head has {rows} rows;"
                         " they must belong to the same model")
    names = [f"<padding row {i}>" for i in range(rows)]
    for piece, i in entries.items():
        names[i] = str(piece)
    return names, {i: "padding" for i in range(rows) if names[i] == f"<padding row {i}>"}


VOCAB_JSON_LIMIT = 512 * 2**20  # bytes of tokenizer.json or vocab.json read as plain JSON


def vocab_json_table(path: Path, rows: int) -> TokenTable:
    """A ``vocab.json`` ({piece: id}, as GPT-2-style checkpoints ship it); byte-level pieces are decoded."""
    data = read_json(path, VOCAB_JSON_LIMIT)
    if not isinstance(data, dict) or not all(isinstance(i, int) and i >= 0 for i in data.values()):
        raise InputError(f"{path}: expected an object mapping each token to a non-negative id")
    names, kinds = _row_pieces(path, data, rows, "vocabulary")
    raw = [None if i in kinds else byte_level_bytes(p) for i, p in enumerate(names)]
    if any(b is None for i, b in enumerate(raw) if i not in kinds):
        return TokenTable(names, None, kinds)
    return TokenTable(names, [names[i] if b is None else bytes_text(b) for i, b in enumerate(raw)], kinds)


def folder_table(folder: Path, rows: int) -> TokenTable:
    """The table of a checkpoint folder: ``tokenizer.json``, else ``vocab.json``, else row ids."""
    if (folder / "tokenizer.json").exists():
        return tokenizer_json_table(folder / "tokenizer.json", rows)
    if (folder / "vocab.json").exists():
        return vocab_json_table(folder / "vocab.json", rows)
    return TokenTable.unnamed(rows)


def gguf_table(pieces: Sequence[str], types: Sequence[int] | None, model: str | None) -> TokenTable:
    """The table of a GGUF file from its pieces, ``tokenizer.ggml.token_type`` and ``tokenizer.ggml.model``."""
    kinds = {i: GGUF_KINDS[int(t)] for i, t in enumerate(types or ()) if int(t) in GGUF_KINDS}
    special = frozenset(i for i, kind in kinds.items() if kind == "control")
    decode = {"gpt2": _byte_level_text, "llama": _sentencepiece_text, "t5": _sentencepiece_text}.get(model or "")
    if decode is None:
        return TokenTable(list(pieces), None, kinds, special)
    display = [p if kinds.get(i) in _TEXT_KINDS else decode(p, kinds.get(i)) for i, p in enumerate(pieces)]
    return TokenTable(list(pieces), display, kinds, special)


def _byte_level_text(piece: str, _kind: str | None) -> str:
    raw = byte_level_bytes(piece)
    return piece if raw is None else bytes_text(raw)


def _sentencepiece_text(piece: str, kind: str | None) -> str:
    if kind == "byte":
        raw = _fallback_byte(piece)
        return piece if raw is None else bytes_text(raw)
    return piece.replace("\u2581", " ")


def transformers_table(tokenizer, rows: int) -> TokenTable:
    """The table of a live ``transformers`` tokenizer (fast ones through their ``tokenizers`` backend)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return from_tokenizer(backend, rows, type(tokenizer).__name__)
    size = len(tokenizer)
    if size > rows:
        raise InputError(f"{type(tokenizer).__name__}: the tokenizer has {size} tokens but the head has"
                         f" {rows} rows; they must belong to the same model")
    names = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(size)))]
    names += [f"<padding row {i}>" for i in range(size, rows)]
    special = frozenset(i for i in getattr(tokenizer, "all_special_ids", []) if i < rows)
    # Added tokens (slow tokenizers keep them in added_tokens_decoder), and ids past the base vocabulary.
    added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) if int(i) < rows}
    base = getattr(tokenizer, "vocab_size", size)
    added |= set(range(base if isinstance(base, int) else size, min(size, rows)))
    kinds = {**{i: "added" for i in added}, **{i: "special" for i in special},
             **{i: "padding" for i in range(size, rows)}}
    return TokenTable(names, None, kinds, special)
