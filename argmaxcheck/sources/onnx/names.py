"""Token names of an ONNX classifier, from the model's metadata: the first key such as ``character`` (PaddleOCR),
``labels``, ``classes`` or ``names`` that lists exactly one name per class."""

from __future__ import annotations

import ast
import json

from .text import free_text

_NAME_KEYS = ("character", "labels", "classes", "names", "vocab", "id2label")
# Token-name metadata longer than this many characters per class (plus a little) is not parsed:
# a name list is far shorter, and parsing cost grows with the text, not with the model.
_NAME_CHARS_PER_CLASS = 256
_NAME_TEXT_SLACK = 4096
# Python-literal name tables (Ultralytics writes str(dict)) are parsed only up to this size:
# ast.literal_eval needs about 500 bytes of memory per character of input.
_LITERAL_MAX_CHARS = 64 * 1024


def token_names(metadata: dict[str, str], n: int) -> tuple[list[str] | None, str | None]:
    """One name per class from the first name-list metadata key that fits, and a note on what was used."""
    limit = _NAME_TEXT_SLACK + _NAME_CHARS_PER_CLASS * n
    notes = []
    for key in _NAME_KEYS:
        if key not in metadata:
            continue
        text = metadata[key]
        if len(text) > limit:
            notes.append(f"metadata '{key}' is {len(text)} characters long, more than the {limit} allowed for"
                         f" {n} classes; not used")
            continue
        names, why = _parse_names(text, n)
        if names is None:
            notes.append(f"metadata '{key}' {why}; not used")
            continue
        if len(names) == n:
            return names, f"metadata '{key}'"
        if key == "character" and len(names) + 2 == n:  # PaddleOCR CTC: blank first, space last
            return ["<blank>", *names, " "], "metadata 'character' (PaddleOCR CTC: <blank> first, space last)"
        notes.append(f"metadata '{key}' has {len(names)} entries for {n} classes; not used")
    return None, ("; ".join(notes) or None)


def _parse_names(text: str, n: int) -> tuple[list[str] | None, str]:
    """(names, '') from a JSON list or {index: name} object, a small Python literal of either, or one name
    per line; (None, why) for a list or object that is not one of these."""
    start = text.lstrip()[:1]
    value = None
    if start in ("[", "{"):
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            if len(text) <= _LITERAL_MAX_CHARS:
                try:
                    value = ast.literal_eval(text.strip())
                except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                    value = None
    if isinstance(value, list):
        if not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
            return None, "is a list of other things than names"
        return [free_text(str(v)) for v in value], ""
    if isinstance(value, dict):
        try:
            index = {int(k): v for k, v in value.items()}
        except (TypeError, ValueError):
            return None, "is a mapping whose keys are not class indices"
        if set(index) != set(range(len(index))) or not all(isinstance(v, str) for v in index.values()):
            return None, "is a mapping that does not give one name to each index 0, 1, ..."
        return [free_text(index[k]) for k in range(len(index))], ""
    return [free_text(line) for line in text.splitlines()], ""
