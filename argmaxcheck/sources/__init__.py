"""Sources: turn what the user has (a file, a folder) into a :class:`LoadedLayer`.

The registry below is tried in order; the first source whose ``matches``
accepts the path reads it. Plain array files are the fallback, so their
error messages (no such file, unsupported type) are what an unknown path gets.
To add a source: write one module with a ``SOURCE`` object (see
:class:`~argmaxcheck.sources.base.Source`) and add it here.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import arrays, gguf, hub, huggingface, onnx
from .base import LoadedLayer, Source, SourceRequest

SOURCES: tuple[Source, ...] = (
    huggingface.SOURCE,
    onnx.SOURCE,
    gguf.SOURCE,
    hub.SOURCE,
    arrays.SOURCE,
)


def load_source(path: str | os.PathLike, request: SourceRequest | None = None) -> LoadedLayer:
    """Read the output layer at ``path`` with the first source that recognises it."""
    path, request = Path(path), request or SourceRequest()
    source = next((s for s in SOURCES if s.matches(path)), arrays.SOURCE)
    return source.load(path, request)


__all__ = ["SOURCES", "LoadedLayer", "Source", "SourceRequest", "load_source"]
