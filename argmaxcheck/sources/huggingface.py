"""Hugging Face checkpoint folders (and live ``transformers`` models): find the head and its final norm.

A folder with ``config.json`` and single or sharded safetensors (or
``pytorch_model.bin``): the family's table below says where the output layer
and the final norm live; the norm is folded in (:mod:`.norms`) so the audit
runs on the features the model can really produce. Only the tensors needed are
read; shards that do not hold them are never opened.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from .._text import printable
from ..errors import InputError
from ..layer import OutputLayer, as_float64
from .arrays import SafetensorsFile, TorchFile, check_regular_file, read_json, value_dtype_name
from .base import HeadSource, LoadedLayer
from .norms import fold_norm
from .tokens import folder_table

# model_type -> (head candidates, tied-embedding name, final norm kind, norm weight, norm bias, eps key)
_FAMILIES = {
    "gpt2": (["lm_head.weight"], "transformer.wte.weight", "layernorm", "transformer.ln_f.weight",
             "transformer.ln_f.bias", "layer_norm_epsilon"),
    "llama": (["lm_head.weight"], "model.embed_tokens.weight", "rmsnorm", "model.norm.weight", None,
              "rms_norm_eps"),
    "mistral": (["lm_head.weight"], "model.embed_tokens.weight", "rmsnorm", "model.norm.weight", None,
                "rms_norm_eps"),
    "qwen2": (["lm_head.weight"], "model.embed_tokens.weight", "rmsnorm", "model.norm.weight", None,
              "rms_norm_eps"),
    "gemma": (["lm_head.weight"], "model.embed_tokens.weight", "rmsnorm1p", "model.norm.weight", None,
              "rms_norm_eps"),
    "gemma2": (["lm_head.weight"], "model.embed_tokens.weight", "rmsnorm1p", "model.norm.weight", None,
               "rms_norm_eps"),
    "gpt_neox": (["embed_out.weight"], "gpt_neox.embed_in.weight", "layernorm",
                 "gpt_neox.final_layer_norm.weight", "gpt_neox.final_layer_norm.bias", "layer_norm_eps"),
    "opt": (["lm_head.weight"], "model.decoder.embed_tokens.weight", "layernorm",
            "model.decoder.final_layer_norm.weight", "model.decoder.final_layer_norm.bias", None),
    "bloom": (["lm_head.weight"], "transformer.word_embeddings.weight", "layernorm", "transformer.ln_f.weight",
              "transformer.ln_f.bias", "layer_norm_epsilon"),
    "phi": (["lm_head.weight"], "model.embed_tokens.weight", "layernorm", "model.final_layernorm.weight",
            "model.final_layernorm.bias", "layer_norm_eps"),
}
# Output-layer biases, where a family has one.
HEAD_BIAS = {"phi": "lm_head.bias", "bert": "cls.predictions.bias", "roberta": "lm_head.bias",
             "xlm-roberta": "lm_head.bias", "bart": "final_logits_bias", "marian": "final_logits_bias"}


def family_spec(model_type: str, config: dict, where: str):
    """Where a family keeps its head and final norm; None if unknown."""
    if model_type in _FAMILIES:
        return _FAMILIES[model_type]
    if model_type == "bert":  # the MLM head ends dense -> gelu -> LayerNorm -> decoder
        return (["cls.predictions.decoder.weight"], "bert.embeddings.word_embeddings.weight", "layernorm",
                "cls.predictions.transform.LayerNorm.weight", "cls.predictions.transform.LayerNorm.bias",
                "layer_norm_eps")
    if model_type in ("roberta", "xlm-roberta"):
        return (["lm_head.decoder.weight"], "roberta.embeddings.word_embeddings.weight", "layernorm",
                "lm_head.layer_norm.weight", "lm_head.layer_norm.bias", "layer_norm_eps")
    if model_type == "t5":  # RMS without mean; the tied head's d^-0.5 scale cannot change an argmax
        return (["lm_head.weight"], "shared.weight", "rmsnorm", "decoder.final_layer_norm.weight", None,
                "layer_norm_epsilon")
    if model_type in ("bart", "marian"):  # post-LN: the last decoder layer's final norm feeds the head
        last = _config_value(config, "decoder_layers", int, 1, where)
        if last < 1:
            raise InputError(f"{where}: 'decoder_layers' is {last}, expected at least 1")
        last -= 1
        norm = f"model.decoder.layers.{last}.final_layer_norm"
        return (["lm_head.weight"], "model.shared.weight", "layernorm", f"{norm}.weight", f"{norm}.bias", None)
    return None


# The most bytes of JSON read from a checkpoint folder: parsing time and memory stay bounded.
CONFIG_JSON_LIMIT = 16 * 2**20
INDEX_JSON_LIMIT = 64 * 2**20
TOKENIZER_JSON_LIMIT = 512 * 2**20


def checkpoint_file(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused unless it stays inside the checkpoint folder, links followed.

    ``name`` comes from the folder's own files (a shard index), so it is untrusted: no absolute path,
    no ``..``, no link out. A Hugging Face cache snapshot links its files to ``../../blobs/``: that folder
    of the same repository counts as inside. The file itself is checked when it is opened.
    """
    parts = PurePosixPath(name).parts
    if (not name or "\0" in name or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute()
            or PureWindowsPath(name).drive or ".." in parts or ".." in PureWindowsPath(name).parts):
        raise InputError(f"{what}: '{printable(name)}' is not a plain file name inside the checkpoint folder")
    real_folder = folder.resolve()
    roots = [real_folder]
    if real_folder.parent.name == "snapshots":
        roots.append(real_folder.parent.parent / "blobs")
    target = (folder / name).resolve()
    if not any(target.is_relative_to(root) for root in roots):
        raise InputError(f"{what}: '{printable(name)}' leads outside the checkpoint folder (a link?);"
                         " copy the file in or audit the folder it points to")
    return folder / name


def _present(folder: Path, name: str) -> bool:
    path = folder / name
    return path.is_symlink() or path.exists()


def _config_value(config: dict, key: str, kind: type, default, where: str):
    """``config[key]`` checked to be a ``kind`` (bool is not a number here); ``default`` if absent or null."""
    value = config.get(key)
    if value is None:
        return default
    ok = isinstance(value, bool) if kind is bool else (isinstance(value, kind) and not isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[kind]
        raise InputError(f"{where}: '{key}' is {printable(repr(value), 40)}, expected {expected}")
    return value


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").exists()


def load_checkpoint(path: str | Path, head: str | None = None) -> LoadedLayer:
    """Read a Hugging Face checkpoint folder and fold its final norm into the output layer.

    ``head`` names the output-layer tensor when the family's usual names do not apply.
    """
    folder = Path(path)
    config_path = checkpoint_file(folder, "config.json", str(folder))
    config = read_json(config_path, CONFIG_JSON_LIMIT)
    for name in ("tokenizer.json", "vocab.json"):  # read by _token_names: inside the folder, and bounded
        if _present(folder, name):
            size = check_regular_file(checkpoint_file(folder, name, str(folder))).st_size
            if size > TOKENIZER_JSON_LIMIT:
                raise InputError(f"{folder / name}: {size} bytes, more than the {TOKENIZER_JSON_LIMIT} a"
                                 " tokenizer file may have")
    loaded = _from_tensors(str(folder), config, lambda: _TensorIndex(folder), head,
                           lambda rows: _token_names(folder, rows), str(config_path))
    # The table's decoded forms and kinds too (the names above came from the same, cached, table).
    return folder_table(folder, loaded.layer.num_classes).apply(loaded)


def checkpoint_from_model(model, tokenizer=None, head: str | None = None) -> LoadedLayer:
    """The same as :func:`load_checkpoint` for a live ``transformers`` model (its config and
    state dict, read in memory); names come from ``tokenizer`` when given."""
    config = model.config.to_dict()

    def names(rows):
        if tokenizer is None:
            return [f"<row {i}>" for i in range(rows)], frozenset()
        known = min(rows, len(tokenizer))
        strings = [str(t) for t in tokenizer.convert_ids_to_tokens(list(range(known)))]
        strings += [f"<padding row {i}>" for i in range(known, rows)]
        return strings, frozenset(i for i in getattr(tokenizer, "all_special_ids", []) if i < rows)

    return _from_tensors(type(model).__name__, config, lambda: _StateDict(model.state_dict()), head, names,
                         f"{type(model).__name__}.config")


def _from_tensors(folder: str, config, open_tensors, head: str | None, token_names, config_name: str
                  ) -> LoadedLayer:
    """Check ``config``, then find the head and final norm among ``open_tensors()`` (a _TensorIndex or
    _StateDict) and fold them; ``folder`` names the source in errors (a path, or the model's class),
    ``config_name`` its config."""
    if not isinstance(config, dict):
        raise InputError(f"{config_name}: expected a JSON object of settings, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str):
        raise InputError(f"{config_name}: 'model_type' is {printable(repr(model_type), 40)},"
                         " expected the model family's name")
    spec = family_spec(model_type, config, config_name)
    if spec is None:
        supported = sorted([*_FAMILIES, "bert", "roberta", "xlm-roberta", "t5", "bart", "marian"])
        raise InputError(f"{folder}: model_type '{printable(model_type, 60)}' is not supported yet"
                         f" (supported: {', '.join(supported)})")
    heads, tied_name, norm, norm_w, norm_b, eps_key = spec
    tied = _config_value(config, "tie_word_embeddings", bool, True, config_name)
    if model_type == "opt":
        hidden = _config_value(config, "hidden_size", int, None, config_name)
        if _config_value(config, "word_embed_proj_dim", int, hidden, config_name) != hidden:
            raise InputError(f"{folder}: OPT with project_out (word_embed_proj_dim != hidden_size) is not"
                             " supported yet")
    eps = float(_config_value(config, eps_key, float, 0.0, config_name) or 1e-5) if eps_key else 1e-5
    if eps < 0:
        raise InputError(f"{config_name}: '{eps_key}' is {eps}, expected a number >= 0")
    tensors = open_tensors()
    if head is not None and head not in tensors:
        raise InputError(f"{folder}: no tensor named '{head}'; it has: {', '.join(tensors.matrices()[:20])}")
    head = head or next((h for h in heads if h in tensors), None)
    if head is None and tied and tied_name in tensors:
        head = tied_name
    if head is None:
        raise InputError(f"{folder}: no output layer found (looked for {', '.join([*heads, tied_name])});"
                         f" tensors: {', '.join(tensors.matrices()[:20])} (pick one with --weight NAME)")
    weight = tensors.get(head)
    source_dtype = tensors.dtype(head)
    if weight.ndim != 2 or 0 in weight.shape:
        raise InputError(f"{folder}: output layer '{head}' has shape {weight.shape}, expected [vocabulary, dim]")
    if model_type == "t5" and head == tied_name:
        # A tied T5 head rescales its input by d^-0.5: no argmax changes, but margins stay in logit units.
        weight = weight * weight.shape[1] ** -0.5
    d = weight.shape[1]
    gamma = tensors.get(norm_w) if norm_w in tensors else None
    if gamma is None:
        raise InputError(f"{folder}: final norm '{norm_w}' is missing from the checkpoint")
    if gamma.shape != (d,):
        raise InputError(f"{folder}: '{norm_w}' has shape {gamma.shape}, expected ({d},) to match {head}")
    if not np.isfinite(gamma).all():
        raise InputError(f"{folder}: '{norm_w}' has non-finite values")
    head_bias = None
    if HEAD_BIAS.get(model_type) in tensors:
        head_bias = tensors.get(HEAD_BIAS[model_type]).reshape(-1)
        if head_bias.shape != (weight.shape[0],):
            raise InputError(f"{folder}: '{HEAD_BIAS[model_type]}' has shape {head_bias.shape},"
                             f" expected ({weight.shape[0]},)")
    names, special = token_names(weight.shape[0])
    info = {"model_type": model_type, "head": head, "norm": norm, "norm_weight": norm_w,
            "norm_bias": norm_b, "eps": eps}
    ckpt = fold_norm(OutputLayer(weight, None, names, source_dtype), norm, gamma,
                     tensors.get(norm_b) if norm_b and norm_b in tensors else None,
                     head_bias, eps)
    info["domain"] = ckpt.info["domain"]
    layer = dataclasses.replace(ckpt.layer, special=special)
    raw = dataclasses.replace(ckpt.raw, special=special)
    return LoadedLayer(layer, ckpt.domain, info, raw, norm, ckpt.basis, eps)


class _TensorIndex:
    """Tensor name -> the file that holds it, over single or sharded safetensors or pytorch_model.bin.

    Every file name comes from the folder itself and must stay inside it (:func:`checkpoint_file`);
    shards are opened only when a tensor they hold is asked for.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.where: dict[str, Path] = {}
        self.files: dict[Path, object] = {}
        if _present(folder, "model.safetensors.index.json"):
            index = checkpoint_file(folder, "model.safetensors.index.json", str(folder))
            data = read_json(index, INDEX_JSON_LIMIT)
            weight_map = data.get("weight_map") if isinstance(data, dict) else None
            if not (isinstance(weight_map, dict)
                    and all(isinstance(v, str) for v in weight_map.values())):
                raise InputError(f"{index}: not a valid shard index ('weight_map' must map tensor names to"
                                 " shard file names)")
            shards = {shard: checkpoint_file(folder, shard, f"{index}: shard")
                      for shard in set(weight_map.values())}
            self.where = {name: shards[shard] for name, shard in weight_map.items()}
        elif _present(folder, "model.safetensors"):
            single = checkpoint_file(folder, "model.safetensors", str(folder))
            self.files[single] = SafetensorsFile(single)
            self.where = dict.fromkeys(self.files[single].names(), single)
        elif _present(folder, "pytorch_model.bin"):
            single = checkpoint_file(folder, "pytorch_model.bin", str(folder))
            self.files[single] = TorchFile(single)
            self.where = dict.fromkeys(self.files[single].names(), single)
        else:
            raise InputError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")

    def __contains__(self, name) -> bool:
        return name in self.where

    def _file(self, name):
        path = self.where[name]
        if path not in self.files:
            if not _present(path.parent, path.name):
                raise InputError(f"{path}: shard listed in the index for '{printable(name)}' is missing")
            self.files[path] = SafetensorsFile(path)
        source = self.files[path]
        if name not in source.names():
            raise InputError(f"{path}: does not hold '{printable(name)}' although the index says so")
        return source

    def get(self, name):
        path = self.where[name]
        return as_float64(self._file(name).get(name), f"{path}: tensor '{printable(name)}'")

    def dtype(self, name) -> str:
        return self._file(name).dtype_name(name)

    def matrices(self) -> list[str]:
        return sorted(self.where)


class _StateDict:
    """A model's state dict with the interface of _TensorIndex (tied weights appear under both names)."""

    def __init__(self, state: dict):
        self.state = state

    def __contains__(self, name) -> bool:
        return name in self.state

    def get(self, name):
        return as_float64(self.state[name], f"tensor '{name}'")

    def dtype(self, name) -> str:
        return value_dtype_name(self.state[name])

    def matrices(self) -> list[str]:
        return sorted(self.state)


def _token_names(folder: Path, rows: int) -> tuple[list[str], frozenset[int]]:
    """Names from tokenizer.json (read by the tokenizers library) or vocab.json (rows past the vocabulary
    are padding rows), and special ids; :func:`load_checkpoint` attaches the decoded forms and kinds."""
    table = folder_table(folder, rows)
    return table.pieces, table.special


SOURCE = HeadSource("huggingface", is_checkpoint, load_checkpoint)  # the registry entry
