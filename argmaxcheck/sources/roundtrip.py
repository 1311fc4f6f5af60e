"""The input side: which tokens the tokenizer produces from their own text.

For every row, its token is decoded alone and the text is encoded again with
the model's own tokenizer (``tokenizers``, batched, ``add_special_tokens=False``).
The token *round-trips* when that gives back exactly ``[its id]``; otherwise
the ids it gave are kept. A token that fails can still be produced inside
longer text (a byte of a multi-byte character, a word piece that only ever
follows another), but never from its own text alone; one that also cannot be
the argmax is dead on both sides.

Special tokens (``tokenizer.json``'s ``special`` added tokens, GGUF control
tokens) that come back only because the tokenizer matches special tokens in
text are ``"special"``, not failures. Rows past the vocabulary have no token: ``None``.

Sources with a tokenizer: ``tokenizer.json`` (checkpoint folders, hub ids) and
GGUF files, whose tokenizer is rebuilt here from ``tokenizer.ggml.*``
(:func:`gguf_tokenizer`): ``gpt2`` is byte-level BPE from the tokens and
merges; ``llama`` SentencePiece-style BPE with byte fallback, merges from the
file or derived from the scores; ``t5`` Unigram with the scores. The build
follows ``transformers``' own GGUF conversion, so both give the same ids.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InputError
from ..report.model import RoundTrip

SPECIAL = "special"
_BATCH = 8192  # tokens per encode_batch / decode_batch call: bounded memory, same speed


def round_trips(tokenizer, rows: int, special: frozenset[int] = frozenset()) -> RoundTrip:
    """The round trip of every row of a head of ``rows`` rows through ``tokenizer``.

    ``special``: rows the source marks special (they may come back ``"special"``).
    Rows with no token in the tokenizer's vocabulary (padding rows) are ``None``.
    """
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    ids = [i for i in range(min(rows, size)) if tokenizer.id_to_token(i) is not None]
    status: list[bool | str | None] = [None] * rows
    produced: dict[int, tuple[int, ...]] = {}
    added_special = {i for i, tok in tokenizer.get_added_tokens_decoder().items() if tok.special}
    special = frozenset(special) | added_special
    for start in range(0, len(ids), _BATCH):
        chunk = ids[start:start + _BATCH]
        texts = tokenizer.decode_batch([[i] for i in chunk], skip_special_tokens=False)
        for i, got in zip(chunk, _encode_all(tokenizer, texts), strict=True):
            if got == (i,):
                status[i] = SPECIAL if i in special else True
            else:
                status[i] = False
                produced[i] = got
    # A special token that comes back whole only because special tokens are matched in text: "special"
    # (already). One that comes back whole without that matching (a plain vocabulary entry that happens to
    # be marked special) is an ordinary round trip.
    specials = [i for i in ids if status[i] == SPECIAL]
    if specials and hasattr(tokenizer, "encode_special_tokens"):
        before = tokenizer.encode_special_tokens
        try:
            tokenizer.encode_special_tokens = True
            texts = tokenizer.decode_batch([[i] for i in specials], skip_special_tokens=False)
            for i, got in zip(specials, _encode_all(tokenizer, texts), strict=True):
                if got == (i,):
                    status[i] = True
        finally:
            tokenizer.encode_special_tokens = before
    return RoundTrip(tuple(status), produced)


def _encode_all(tokenizer, texts: list[str]) -> list[tuple[int, ...]]:
    """The ids of each text; a text the tokenizer refuses (a character its model has no piece for, and no
    unknown token) gives no ids, so its token does not round-trip."""
    try:
        return [tuple(enc.ids) for enc in tokenizer.encode_batch(texts, add_special_tokens=False)]
    except Exception:  # the Rust side raises a bare Exception
        out = []
        for text in texts:
            try:
                out.append(tuple(tokenizer.encode(text, add_special_tokens=False).ids))
            except Exception:
                out.append(())
        return out


# --- GGUF: the tokenizer from tokenizer.ggml.* -------------------------------------------------------

_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split the merges were learned with (others: GPT-2's, ByteLevel's own regex)
PRE_SPLITS = {**dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx", "pixtral"),
                              _LLAMA3_SPLIT),
              **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "megrez"), _QWEN2_SPLIT)}
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4


def gguf_tokenizer(model: str | None, pieces: Sequence[str], types: Sequence[int] | None, *,
                   merges: Sequence[str] | None = None, scores: Sequence[float] | None = None,
                   pre: str | None = None, add_space_prefix: bool | None = None, where: str = "GGUF"):
    """A ``tokenizers.Tokenizer`` for a GGUF vocabulary; None for a ``tokenizer.ggml.model`` it cannot build."""
    try:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
    except ImportError:
        raise InputError(f"{where}: the tokenizer round trip needs the tokenizers package"
                         " (pip install tokenizers)") from None
    types = list(types or [1] * len(pieces))
    if model == "gpt2":
        from .tokens import _byte_level_alphabet  # noqa: PLC0415

        alphabet = _byte_level_alphabet()
        spell = {b: c for c, b in alphabet.items()}
        vocab = {}
        for i, p in enumerate(pieces):
            key = p if set(p) <= alphabet.keys() else "".join(spell[b] for b in p.encode("utf-8"))
            vocab.setdefault(key, i)
        pairs = [tuple(m.split(" ", 1)) for m in merges or ()]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, dropout=None))
        split = PRE_SPLITS.get(pre or "")
        if split is None:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                  use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        control_ok = alphabet.keys()
    elif model == "llama":
        vocab = {}
        for i, p in enumerate(pieces):
            vocab.setdefault(p, i)
        if merges:
            pairs = [tuple(m.split(" ", 1)) for m in merges]
        else:
            pairs = _merges_from_scores(vocab, dict(zip(pieces, scores or [0.0] * len(pieces), strict=False)))
        tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=True, byte_fallback=True, dropout=None))
        prefix = True if add_space_prefix is None else add_space_prefix
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first" if prefix else
                                                     "never", split=False)
        steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + ([decoders.Strip(content=" ", left=1)] if prefix else []))
        control_ok = None
    elif model == "t5":
        unk = next((i for i, t in enumerate(types) if t == _UNKNOWN), None)
        tok = Tokenizer(models.Unigram([(p, float(s)) for p, s in zip(pieces, scores or [0.0] * len(pieces),
                                                                      strict=False)], unk, False))
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(
            replacement="\u2581", prepend_scheme="always", split=True)])
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
        control_ok = None
    else:
        return None
    # As llama.cpp and transformers: control tokens are special added tokens, user-defined ones plain added
    # tokens, both matched whole in text. (A byte-level "control" token spelled outside the byte alphabet is
    # a mislabel that adding would push past the vocabulary: skipped, as transformers does.)
    control = [AddedToken(p, normalized=False, special=True) for p, t in zip(pieces, types, strict=False)
               if t == _CONTROL and (control_ok is None or set(p) <= control_ok)]
    if control:
        tok.add_special_tokens(control)
    vocab_now = tok.get_vocab()
    user = [AddedToken(p, normalized=False, special=False) for p, t in zip(pieces, types, strict=False)
            if t == _USER_DEFINED and p in vocab_now]
    if user:
        tok.add_tokens(user)
    return tok


def _merges_from_scores(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges implied by a vocabulary: every split of a piece into two pieces, the merge
    ranked by the merged piece's score (best first), as ``transformers`` derives them."""
    merges = []
    for piece, score in scores.items():
        local = [(piece[:k], piece[k:], score) for k in range(1, len(piece))
                 if piece[:k] in vocab and piece[k:] in vocab]
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]
