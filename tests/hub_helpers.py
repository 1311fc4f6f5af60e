"""A Hugging Face cache laid out as huggingface_hub lays it out, for the hub tests and the fuzz test."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

TINY = Path(__file__).resolve().parents[1] / "data" / "tiny-gpt2"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], commit: str = COMMIT,
               ref: str | None = "main") -> Path:
    """Put ``files`` into the cache as huggingface_hub lays it out: blobs/, snapshots/<commit>/ (links to the
    blobs) and refs/<ref>; the folder's name comes from the library."""
    root = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = root / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    if ref is not None:
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return root


def tiny_files() -> dict[str, bytes]:
    return {name: (TINY / name).read_bytes() for name in ("config.json", "model.safetensors", "tokenizer.json")}
