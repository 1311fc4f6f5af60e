"""Hugging Face checkpoints: the folded layer reproduces the model's own logits on the stated domain."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import AddedToken, Tokenizer
from tokenizers.models import BPE

transformers = pytest.importorskip("transformers")

from argmaxcheck import InputError, audit  # noqa: E402
from argmaxcheck.sources.huggingface import load_checkpoint  # noqa: E402


def tiny(family: str, folder, tied: bool):
    torch.manual_seed(0)
    common = dict(vocab_size=70, num_hidden_layers=1, num_attention_heads=2, tie_word_embeddings=tied)
    if family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=16, n_layer=1, n_head=2, n_positions=32, vocab_size=70, tie_word_embeddings=tied))
        norm = model.transformer.ln_f
    elif family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=16, intermediate_size=32, num_key_value_heads=2, **common))
        norm = model.model.norm
    elif family == "gemma":
        model = transformers.GemmaForCausalLM(transformers.GemmaConfig(
            hidden_size=16, intermediate_size=32, num_key_value_heads=2, head_dim=8, **common))
        norm = model.model.norm
    elif family in ("mistral", "qwen2"):
        cls, cfg = {"mistral": (transformers.MistralForCausalLM, transformers.MistralConfig),
                    "qwen2": (transformers.Qwen2ForCausalLM, transformers.Qwen2Config)}[family]
        model = cls(cfg(hidden_size=16, intermediate_size=32, num_key_value_heads=2, **common))
        norm = model.model.norm
    elif family == "opt":
        model = transformers.OPTForCausalLM(transformers.OPTConfig(
            hidden_size=16, ffn_dim=32, max_position_embeddings=32, word_embed_proj_dim=16, **common))
        norm = model.model.decoder.final_layer_norm
    elif family == "bloom":
        model = transformers.BloomForCausalLM(transformers.BloomConfig(
            hidden_size=16, n_layer=1, n_head=2, vocab_size=70, tie_word_embeddings=tied))
        norm = model.transformer.ln_f
    elif family == "phi":
        model = transformers.PhiForCausalLM(transformers.PhiConfig(
            hidden_size=16, intermediate_size=32, max_position_embeddings=32, **common))
        norm = model.model.final_layernorm
        with torch.no_grad():
            model.lm_head.bias.normal_()
    elif family in ("bert", "roberta"):
        cls, cfg = {"bert": (transformers.BertForMaskedLM, transformers.BertConfig),
                    "roberta": (transformers.RobertaForMaskedLM, transformers.RobertaConfig)}[family]
        model = cls(cfg(hidden_size=16, intermediate_size=32, max_position_embeddings=40, vocab_size=70,
                        num_hidden_layers=1, num_attention_heads=2, pad_token_id=1))
        norm = (model.cls.predictions.transform.LayerNorm if family == "bert" else model.lm_head.layer_norm)
        with torch.no_grad():
            (model.cls.predictions.bias if family == "bert" else model.lm_head.bias).normal_()
    elif family == "t5":
        model = transformers.T5ForConditionalGeneration(transformers.T5Config(
            d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, vocab_size=70, tie_word_embeddings=tied,
            decoder_start_token_id=0))
        norm = model.decoder.final_layer_norm
    elif family == "bart":
        model = transformers.BartForConditionalGeneration(transformers.BartConfig(
            d_model=16, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=70, max_position_embeddings=40))
        norm = model.model.decoder.layers[1].final_layer_norm
        with torch.no_grad():
            model.final_logits_bias.normal_()
    else:
        model = transformers.GPTNeoXForCausalLM(transformers.GPTNeoXConfig(
            hidden_size=16, intermediate_size=32, max_position_embeddings=32, **common))
        norm = model.gpt_neox.final_layer_norm
    with torch.no_grad():  # random norm parameters, so the fold is really exercised
        norm.weight.normal_()
        if getattr(norm, "bias", None) is not None:
            norm.bias.normal_()
    model.save_pretrained(folder, max_shard_size="5KB")  # several shards: the index is exercised
    return model.eval(), norm


@pytest.mark.parametrize("family,tied", [("gpt2", True), ("llama", False), ("llama", True), ("gemma", True),
                                         ("gpt_neox", False), ("mistral", False), ("qwen2", True), ("opt", True),
                                         ("bloom", True), ("phi", False), ("bert", True), ("roberta", True),
                                         ("t5", True), ("bart", True)])
# (T5 untied is left out: transformers 5 saves only shared.weight and tie_word_embeddings=true for it,
# so the saved checkpoint does not describe the in-memory model the test would compare against.)
def test_fold_matches_forward_pass(tmp_path, family, tied):
    model, norm = tiny(family, tmp_path, tied)
    captured = {}
    norm.register_forward_hook(lambda _m, inputs, _out: captured.__setitem__("h", inputs[0].detach()))
    ids = torch.randint(2, 70, (3, 9))
    with torch.no_grad():
        if family in ("t5", "bart"):
            logits = model(input_ids=ids, decoder_input_ids=ids).logits.double().numpy()
        else:
            logits = model(ids).logits.double().numpy()
    ckpt = load_checkpoint(tmp_path)
    y = ckpt.fold_features(captured["h"].double().numpy())
    d = ckpt.layer.weight.shape[1] + (1 if ckpt.norm == "layernorm" else 0)
    assert np.linalg.norm(y, axis=-1).max() < np.sqrt(d)
    assert ckpt.domain.radius == pytest.approx(np.sqrt(d))
    ours = y @ ckpt.layer.weight.T + (0 if ckpt.layer.bias is None else ckpt.layer.bias)
    # Gemma scales the embedding input only; the head sees the norm output directly.
    np.testing.assert_allclose(ours, logits, rtol=1e-4, atol=1e-4)
    report = audit(ckpt.layer, domain=ckpt.domain)
    assert report.undecided == []


def test_missing_shard_and_unknown_family(tmp_path):
    tiny("llama", tmp_path, False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = tmp_path / index["weight_map"]["lm_head.weight"]
    shard.unlink()
    with pytest.raises(InputError, match="missing"):
        load_checkpoint(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "mystery"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="not supported yet"):
        load_checkpoint(tmp_path)


def test_cli_audits_a_checkpoint_folder(tmp_path):
    tiny("gpt2", tmp_path / "m", True)
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(tmp_path / "m"), "--format", "json",
                           "--output", str(out)], capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["domain"]["kind"] == "ball"
    assert report["summary"]["num_classes"] == 70
    assert report["checkpoint"]["head"] == "transformer.wte.weight"


def test_token_names_added_tokens_and_padding_rows(tmp_path):
    tiny("llama", tmp_path, True)
    vocab = {f"tok{i}": i for i in range(60)}
    vocab["\n"] = 60
    tokenizer = Tokenizer(BPE(vocab, merges=[]))
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    layer = load_checkpoint(tmp_path).layer
    names = layer.tokens
    assert names[0] == "tok0" and names[60] == "\n" and names[61] == "<|end|>"
    assert layer.special == frozenset({61})
    record = audit(layer, tokens=[61]).tokens[0].to_dict(names, layer.special)
    assert record["special"] is True
    assert names[62] == "<padding row 62>" and len(names) == 70


def test_vocab_json_and_pytorch_bin(tmp_path):
    model, _ = tiny("gpt2", tmp_path / "st", True)
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    torch.save(model.state_dict(), binary / "pytorch_model.bin")
    (binary / "vocab.json").write_text(json.dumps({f"v{i}": i for i in range(70)}))
    a, b = load_checkpoint(tmp_path / "st"), load_checkpoint(binary)
    np.testing.assert_array_equal(a.layer.weight, b.layer.weight)
    assert b.layer.tokens[5] == "v5"


def test_bad_checkpoints(tmp_path):
    tiny("gpt2", tmp_path, True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "layer_norm_epsilon": 1e-5}))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shard = tmp_path / index["weight_map"]["transformer.wte.weight"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"truncated|not a valid"):
        load_checkpoint(tmp_path)


def test_bundled_tiny_checkpoint(tmp_path):
    """data/tiny-gpt2: planted averages are unreachable, reserved duplicates are named ties."""
    folder = Path(__file__).resolve().parents[2] / "data" / "tiny-gpt2"
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(folder), "--format", "json",
                           "--output", str(out)], capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["undecided"] == 0
    assert {200, 201, 202} <= set(report["unargmaxable"])
    ties = {t["id"]: t for t in report["tokens"] if t["stage"] == "tie"}
    assert set(ties) == set(range(250, 256))
    assert all(t["token"].startswith("<unused_") for t in ties.values())
    assert report["checkpoint"]["norm"] == "layernorm"


def test_plain_file_with_norm_flags_matches_checkpoint(tmp_path):
    """The same GPT-2 head and ln_f as plain arrays, folded by --norm flags, gives the same verdicts."""
    tiny("gpt2", tmp_path / "m", True)
    ckpt = load_checkpoint(tmp_path / "m")
    from argmaxcheck.sources.huggingface import _TensorIndex  # noqa: PLC0415

    tensors = _TensorIndex(tmp_path / "m")
    np.savez(tmp_path / "head.npz", weight=tensors.get("transformer.wte.weight"),
             g=tensors.get("transformer.ln_f.weight"), b=tensors.get("transformer.ln_f.bias"))
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(tmp_path / "head.npz"), "--norm",
                           "layernorm", "--norm-weight", "g", "--norm-bias", "b", "--format", "json", "--output",
                           str(out)], capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["domain"]["kind"] == "ball"
    assert report["unargmaxable"] == audit(ckpt.layer, domain=ckpt.domain).unargmaxable
    bad = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(tmp_path / "head.npz"), "--norm",
                          "layernorm"], capture_output=True, text=True, check=False, timeout=600)
    assert bad.returncode == 2 and "needs --norm-weight" in bad.stderr


def test_only_needed_shards_are_read_and_head_can_be_named(tmp_path):
    tiny("llama", tmp_path, False)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    needed = {index["lm_head.weight"], index["model.norm.weight"]}
    for shard in set(index.values()) - needed:
        (tmp_path / shard).write_bytes(b"corrupt: must never be opened")
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.info["head"] == "lm_head.weight"
    with pytest.raises(InputError, match="no tensor named 'nope'"):
        load_checkpoint(tmp_path, head="nope")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        k: v for k, v in index.items() if k != "lm_head.weight"}}))
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="--weight NAME"):
        load_checkpoint(tmp_path)


def test_float64_pytorch_bin_is_read_exactly(tmp_path):
    model, _ = tiny("gpt2", tmp_path / "st", True)
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text((tmp_path / "st" / "config.json").read_text())
    state = {k: v.double() + 1e-12 for k, v in model.state_dict().items()}  # not representable in float32
    torch.save(state, folder / "pytorch_model.bin")
    ckpt = load_checkpoint(folder)
    assert ckpt.layer.source_dtype == "float64"
    np.testing.assert_array_equal(ckpt.raw.weight, state["transformer.wte.weight"].numpy())
