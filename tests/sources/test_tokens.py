"""Readable tokens: tokenizer.json read and decoded by the tokenizers library, stray bytes as <0xAB>, kinds marked."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gguf_helpers import write_llama_folder
from tokenizers import AddedToken, Tokenizer, decoders, models

from argmaxcheck import AuditOptions, InputError, audit
from argmaxcheck.report.formats import FORMATS
from argmaxcheck.report.gate import GatePolicy, evaluate
from argmaxcheck.sources import load_source
from argmaxcheck.sources.tokens import byte_level_bytes, bytes_text, from_tokenizer, gguf_table

BYTE_LEVEL = ["a", "Ġthe", "Ċ", "âĢ", "âĢĻ", "Ġ", "ï¿½"]


def byte_level_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE({p: i for i, p in enumerate(BYTE_LEVEL)}, merges=[]))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|im_end|>", special=True)])
    tokenizer.add_tokens([AddedToken("<tool>", special=False)])
    return tokenizer


def folder(tmp_path, tokenizer: Tokenizer, rows: int, rng):
    weight = np.round(rng.normal(size=(rows, 8)) * 8) / 8  # multiples of 1/8: averages are exact in float32
    weight[1] = (weight[2] + weight[3]) / 2  # row 1 never wins: it shows up in every report
    path = write_llama_folder(tmp_path / "m", weight, np.ones(8))
    tokenizer.save(str(path / "tokenizer.json"))
    return path


def test_bytes_text_never_shows_a_replacement_character():
    assert bytes_text(b"\xe2\x80") == "<0xE2><0x80>"
    assert bytes_text("’".encode()) == "’"
    assert bytes_text(b"a\xffb") == "a<0xFF>b"
    assert byte_level_bytes("Ġthe") == b" the" and byte_level_bytes("▁the") is None


def test_byte_level_tokenizer_json(tmp_path, rng):
    loaded = load_source(folder(tmp_path, byte_level_tokenizer(), 11, rng))
    layer = loaded.layer
    assert layer.tokens[:9] == [*BYTE_LEVEL, "<|im_end|>", "<tool>"]
    # U+FFFD's own bytes are a real character; only bytes that are not whole characters become <0xAB>.
    assert layer.display[:9] == ["a", " the", "\n", "<0xE2><0x80>", "’", " ", "\ufffd", "<|im_end|>", "<tool>"]
    assert layer.token_kinds == {7: "special", 8: "added", 9: "padding", 10: "padding"}
    assert layer.special == frozenset({7}) and layer.tokens[9] == "<padding row 9>"
    assert loaded.raw.display == layer.display  # the stored head carries the table too


def test_sentencepiece_tokenizer_keeps_the_leading_space_and_byte_pieces(tmp_path, rng):
    """Llama 2's decoder strips the space that opens a text; inside text ' the' keeps it."""
    pieces = ["a", "▁the", "<0x0A>", "<0xE2>", "the", "<unk>"]
    tokenizer = Tokenizer(models.BPE({p: i for i, p in enumerate(pieces)}, merges=[], byte_fallback=True,
                                     unk_token="<unk>"))
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken("<s>", special=True)])
    table = from_tokenizer(tokenizer, 7, "t")
    assert table.display == ["a", " the", "\n", "<0xE2>", "the", "<unk>", "<s>"]
    assert table.kinds == {2: "byte", 3: "byte", 6: "special"}


def test_unigram_metaspace_and_wordpiece():
    unigram = Tokenizer(models.Unigram([("<unk>", 0.0), ("▁the", -1.0), ("a", -2.0), ("’", -3.0)], 0,
                                       byte_fallback=False))
    unigram.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    assert from_tokenizer(unigram, 4, "t").display == ["<unk>", " the", "a", "’"]
    # WordPiece joins words with spaces: no reference token, each decoded alone.
    wordpiece = Tokenizer(models.WordPiece({"[UNK]": 0, "the": 1, "##ing": 2, "a": 3}, unk_token="[UNK]"))
    wordpiece.decoder = decoders.WordPiece()
    assert from_tokenizer(wordpiece, 4, "t").display == ["[UNK]", "the", "##ing", "a"]


def test_gguf_tables():
    table = gguf_table(["<s>", "Ġthe", "âĢ", "<tool>"], [3, 1, 1, 4], "gpt2")
    assert table.display == ["<s>", " the", "<0xE2><0x80>", "<tool>"]
    assert table.kinds == {0: "control", 3: "user_defined"} and table.special == frozenset({0})
    assert gguf_table(["x"], None, "rwkv").display is None


def test_bad_tokenizers(tmp_path, rng):
    path = folder(tmp_path, byte_level_tokenizer(), 11, rng)
    small = write_llama_folder(tmp_path / "small", rng.normal(size=(6, 8)), np.ones(8))
    (small / "tokenizer.json").write_text((path / "tokenizer.json").read_text())
    with pytest.raises(InputError, match=r"tokenizer.json: the tokenizer has 9 tokens but the head has 6 rows"):
        load_source(small)
    # Valid JSON the library will not load: its vocabulary is still read, as raw pieces.
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {"a": 0}}}))
    raw = load_source(path).layer
    assert raw.tokens[0] == "a" and raw.tokens[1] == "<padding row 1>" and raw.display is None
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": ["a"]}}))
    with pytest.raises(InputError, match=r"tokenizer.json: not a tokenizer the tokenizers library can read"):
        load_source(path)
    (path / "tokenizer.json").unlink()
    (path / "vocab.json").write_text(json.dumps({"a": "zero"}))
    with pytest.raises(InputError, match=r"vocab.json: expected an object mapping each token to a non-negative id"):
        load_source(path)
    (path / "vocab.json").write_text(json.dumps({"Ġthe": 0, "âĢ": 1}))
    assert load_source(path).layer.display[:3] == [" the", "<0xE2><0x80>", "<padding row 2>"]


@pytest.mark.parametrize("fmt", ["text", "markdown", "html", "junit", "github", "json"])
def test_every_format_shows_decoded_text_and_the_piece(tmp_path, rng, fmt):
    loaded = load_source(folder(tmp_path, byte_level_tokenizer(), 11, rng))
    report = audit(loaded.layer, domain=loaded.domain, tokens=[1], options=AuditOptions(probability_seconds=0.0))
    assert report.tokens[0].verdict == "unargmaxable"
    out = FORMATS[fmt](report, evaluate(report, GatePolicy()), loaded.layer)
    if fmt == "json":
        record = json.loads(out)["tokens"][0]
        assert record["token"] == "Ġthe" and record["display"] == " the"
        assert "' the'" in record["explanation"]
        return
    shown = out.replace("&#x27;", "'").replace("&#39;", "'").replace("&quot;", '"')
    assert "' the'" in shown and "'Ġthe'" in shown


def test_live_tokenizer_names_for_model_audits(rng):
    transformers = pytest.importorskip("transformers")
    from argmaxcheck.integrations import audit_model  # noqa: PLC0415

    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer())
    config = transformers.LlamaConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(config)
    report = audit_model(model, fast, AuditOptions(probability_seconds=0.0))
    assert report.display[1] == " the" and report.names[1] == "Ġthe" and report.token_kinds[7] == "special"
