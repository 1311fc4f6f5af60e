"""Hugging Face Hub model ids, ``ORG/NAME[@REVISION]``: from the local cache, or downloading only what the audit reads.

Files are resolved with ``huggingface_hub.hf_hub_download``, so the cache is the
one ``transformers`` fills: ``HF_HOME`` and ``HF_HUB_CACHE`` choose it, and
``HF_HUB_OFFLINE=1`` reads it without touching the network. Online, exactly
these files are fetched (each shown with the library's progress bar):
``config.json``; the tokenizer (``tokenizer.json``, else ``vocab.json``); the
weights' ``model.safetensors.index.json`` and then only the shards that hold
the head and the final norm (or the single ``model.safetensors``, or
``pytorch_model.bin``). The first file fixes the commit; every later one comes
from that same commit, which the report records.

A path that exists locally always wins over a hub id, and so does a path whose
first component is a local folder (``data/tiny-gtp2`` is a typo, not a repo).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from pathlib import Path

from .._text import printable
from ..errors import InputError
from .arrays import check_regular_file, read_json
from .base import LoadedLayer, SourceRequest
from .huggingface import _HEAD_BIAS, CONFIG_JSON_LIMIT, _family, load_checkpoint

_REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(?P<rev>[A-Za-z0-9._/-]+))?")
_COMMIT = re.compile(r"[0-9a-f]{40}")
REF_FILE_LIMIT = 1024  # a refs/ file holds a 40-character commit hash
# Names that are files, not repos: a missing 'data/head.npz' should say "no such file".
_FILE_SUFFIXES = {".npz", ".npy", ".safetensors", ".pt", ".pth", ".bin", ".onnx", ".gguf", ".json"}


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``text`` is spelled ``ORG/NAME[@REVISION]``, else None."""
    match = _REPO_ID.fullmatch(text)
    if match is None or Path(match["repo"]).suffix.lower() in _FILE_SUFFIXES:
        return None
    return match["repo"], match["rev"]


class _HubSource:
    """The registry entry: a hub id that is not a local path."""

    name = "hub"

    def matches(self, path: Path) -> bool:
        text = str(path)
        if path.exists() or parse_repo_id(text) is None:
            return False
        return not Path(text.split("/", 1)[0]).is_dir()

    def load(self, path: Path, request: SourceRequest) -> LoadedLayer:
        repo_id, revision = parse_repo_id(str(path))
        return load_repo(repo_id, revision, head=request.weight)


SOURCE = _HubSource()


def load_repo(repo_id: str, revision: str | None = None, head: str | None = None) -> LoadedLayer:
    """Resolve ``repo_id`` at ``revision`` (default: ``main``) and read it as a checkpoint folder.

    The report's ``checkpoint`` section gains ``repo_id`` and ``revision`` (the resolved commit hash).
    """
    folder, commit = fetch(repo_id, revision, head)
    loaded = load_checkpoint(folder, head=head)
    info = {**loaded.info, "repo_id": repo_id, "revision": commit,
            **({"requested_revision": revision} if revision and revision != commit else {})}
    return dataclasses.replace(loaded, info=info)


def fetch(repo_id: str, revision: str | None = None, head: str | None = None) -> tuple[Path, str]:
    """The snapshot folder holding what the audit of ``repo_id`` reads, and its commit hash.

    Downloads (or finds in the cache) ``config.json``, the tokenizer, and the weight files that hold the head
    and the final norm; nothing else.
    """
    check_revision(repo_id, revision)
    files = _Files(repo_id, revision)
    check_cache(repo_id, revision)  # before the library opens anything in it
    config_path = files.get("config.json", required=True)
    folder, commit = config_path.parent, config_path.parent.name
    files.revision = commit  # every later file from the commit config.json came from
    config = read_json(config_path, CONFIG_JSON_LIMIT)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    spec = _family(model_type, config, f"{repo_id}: config.json") if isinstance(model_type, str) else None
    if spec is None:  # refuse before downloading any weights
        raise InputError(f"{repo_id}: model_type '{model_type}' is not supported yet")
    if files.get("tokenizer.json") is None:
        files.get("vocab.json")
    heads, tied_name, _norm, norm_w, norm_b, _eps = spec
    needed = {*heads, tied_name, norm_w, norm_b, _HEAD_BIAS.get(model_type), head} - {None}
    index_path = files.get("model.safetensors.index.json")
    if index_path is not None:
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(weight_map[name]) for name in needed if name in weight_map})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{repo_id}: model.safetensors.index.json is not a valid shard index ({exc})") from None
        for shard in shards:
            files.get(shard, required=True)
    elif files.get("model.safetensors") is None and files.get("pytorch_model.bin") is None:
        where = "in the local cache" if files.offline else "in the repository"
        raise InputError(f"{repo_id}@{commit[:12]}: no model.safetensors, model.safetensors.index.json or"
                         f" pytorch_model.bin {where}")
    return folder, commit


def check_revision(repo_id: str, revision: str | None) -> None:
    """Refuse a revision that walks paths: the library joins it to the cache folder (refs/REVISION)."""
    if revision is None:
        return
    parts = revision.split("/")
    if ".." in revision or any(part in ("", ".") for part in parts):
        raise InputError(f"{repo_id}@{revision}: not a revision (a branch, tag or commit hash never contains"
                         " '..', './' or an empty '/' part)")


def check_cache(repo_id: str, revision: str | None) -> None:
    """Refuse a cache whose repository folder, ``refs/REVISION`` file or snapshot folder resolves outside
    the cache, or whose ``refs/REVISION`` does not hold a commit hash, before any file in it is opened.

    huggingface_hub reads ``refs/REVISION`` and joins what it holds to ``snapshots/``: a ref holding
    ``../../x`` made it raise a ValueError, a snapshot linked elsewhere was read from there.
    """
    from huggingface_hub import constants  # noqa: PLC0415
    from huggingface_hub.file_download import repo_folder_name  # noqa: PLC0415

    at = repo_id + (f"@{revision}" if revision else "")
    cache = Path(constants.HF_HUB_CACHE)
    root = _resolved(cache, at)
    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    if not _present(storage):
        return  # nothing cached yet: the library creates it
    _inside(storage, root, at, "its cache folder")
    revision = revision or "main"
    commit = revision if _COMMIT.fullmatch(revision) else None
    ref = storage / "refs" / revision
    if commit is None and _present(ref):
        _inside(ref, root, at, f"refs/{revision}")
        check_regular_file(ref)  # never open a FIFO (it blocks) or a folder
        try:
            with open(ref, "rb") as fh:
                content = fh.read(REF_FILE_LIMIT + 1)
        except OSError as exc:
            raise InputError(f"{at}: refs/{revision} in the cache cannot be read ({printable(exc.strerror or exc)})"
                             ) from None
        text = content.decode("ascii", errors="replace")
        if not _COMMIT.fullmatch(text):
            raise InputError(f"{at}: refs/{revision} in the cache ({storage}) does not hold a commit hash but"
                             f" '{printable(text, 60)}'")
        commit = text
    if commit is not None and _present(storage / "snapshots" / commit):
        _inside(storage / "snapshots" / commit, root, at, f"snapshots/{commit}")


def _present(path: Path) -> bool:
    return path.is_symlink() or path.exists()


def _resolved(path: Path, at: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise InputError(f"{at}: {path} in the cache cannot be resolved ({printable(exc)})") from None


def _inside(path: Path, root: Path, at: str, what: str) -> Path:
    """``path`` resolved, refused unless it lies inside the cache folder ``root``."""
    resolved = _resolved(path, at)
    if resolved != root and root not in resolved.parents:
        raise InputError(f"{at}: {what} in the Hugging Face cache ({root}) links outside it, to {resolved}")
    return resolved


def _hub():
    """The huggingface_hub module, imported only for hub ids (its submodules are imported where used)."""
    try:
        import huggingface_hub  # noqa: PLC0415
    except ImportError:
        raise InputError("model ids need the huggingface_hub package (pip install huggingface_hub)") from None
    return huggingface_hub


class _Files:
    """hf_hub_download for one repo, with every failure turned into a one-line InputError."""

    def __init__(self, repo_id: str, revision: str | None):
        self.repo_id, self.revision, self.requested = repo_id, revision, revision
        _hub()
        from huggingface_hub import constants  # noqa: PLC0415

        self.offline = bool(constants.HF_HUB_OFFLINE)

    def get(self, filename: str, required: bool = False) -> Path | None:
        """The local path of ``filename``; None when it does not exist (or, offline, is not cached) and
        is not ``required``."""
        hub = _hub()
        from huggingface_hub import constants, errors  # noqa: PLC0415

        at = f"{self.repo_id}" + (f"@{self.requested}" if self.requested else "")
        try:
            with _quiet_retries():
                path = Path(hub.hf_hub_download(self.repo_id, filename, revision=self.revision))
        except errors.GatedRepoError:
            raise InputError(f"{at}: gated repository: accept its terms on huggingface.co, then log in"
                             " (hf auth login)") from None
        except errors.RepositoryNotFoundError:
            raise InputError(f"{at}: no such repository on the Hugging Face Hub (or it is private: log in with"
                             " hf auth login)") from None
        except errors.RevisionNotFoundError:
            raise InputError(f"{at}: the repository has no revision '{self.requested}'") from None
        except errors.LocalEntryNotFoundError:
            if not required:
                return None  # offline or unreachable, and not cached: as good as absent
            cache = constants.HF_HUB_CACHE
            why = "HF_HUB_OFFLINE is set" if self.offline else "the Hugging Face Hub cannot be reached"
            raise InputError(f"{at}: '{filename}' is not in the local cache ({cache}) and {why}") from None
        except errors.EntryNotFoundError:
            if not required:
                return None
            raise InputError(f"{at}: the repository has no '{filename}'") from None
        except errors.HFValidationError as exc:
            raise InputError(f"{at}: not a valid repo id or revision ({_first_line(exc)})") from None
        except ValueError as exc:  # the library's own refusals of what it found in the cache
            raise InputError(f"{at}: the Hugging Face cache cannot serve '{filename}' ({_first_line(exc)})"
                             ) from None
        except errors.HfHubHTTPError as exc:
            raise InputError(f"{at}: the Hugging Face Hub refused '{filename}' ({_first_line(exc)})") from None
        except OSError as exc:  # network failures the library does not wrap, a full disk, permissions
            raise InputError(f"{at}: cannot get '{filename}' ({_first_line(exc)})") from None
        # Checked before anything opens it: a snapshot's file may only link to a blob of the cache.
        _inside(path, _resolved(Path(constants.HF_HUB_CACHE), at), at, f"'{filename}'")
        return path


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


@contextlib.contextmanager
def _quiet_retries():
    """The library logs each network retry as a warning; the error that follows says it once."""
    from huggingface_hub.utils import logging  # noqa: PLC0415

    logger = logging.get_logger("huggingface_hub")
    level = logger.level
    logger.setLevel(40)  # ERROR
    try:
        yield
    finally:
        logger.setLevel(level)
