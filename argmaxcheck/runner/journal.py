"""The resume journal: one folder, one header naming the run, one pair of files per finished chunk.

Layout of a journal folder::

    header.json                 what run this is: hashes of every input (see RunIdentity)
    chunk-000000.npz            the chunk's verdicts, margins, witnesses and certificates
    chunk-000000.json           its manifest: ids, timings and the sha256 of the .npz

Every file is written to a temporary file in the folder, flushed and fsynced,
renamed over its final name, and the folder is fsynced: a crash (SIGKILL, power
loss) leaves either the old state or the new one. The manifest is written
after its ``.npz``, so it is the commit mark: a chunk without a manifest was not
finished, and a chunk whose ``.npz`` does not match the manifest's hash
(truncated, corrupted) is decided again, with a note. A header that cannot be
read is an error, never silently replaced: it is what stops a journal from one
run from being merged into another.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import numpy as np

from ..domains import Domain
from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import AuditReport, TokenResult

FORMAT = "argmaxcheck-journal"
JOURNAL_VERSION = 1
HEADER = "header.json"
_TMP_PREFIX = ".argmaxcheck-tmp-"

Log = Callable[[str], None]


def stderr_note(message: str) -> None:
    """The default log: one line on stderr."""
    sys.stderr.write(f"argmaxcheck: note: {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class RunIdentity:
    """What makes two runs the same run: a hash of each input that can change a chunk's report.

    ``parts`` maps a component (in words, as an error names it) to its hash;
    ``digest`` hashes them all.
    """

    parts: dict

    @classmethod
    def of(cls, layer: OutputLayer, domain: Domain, chunks: Sequence[np.ndarray], options,
           chunk_size: int) -> RunIdentity:
        import argmaxcheck  # noqa: PLC0415 - the package's version; importing it at module load would be circular

        names = json.dumps(layer.tokens).encode()  # JSON: unambiguous for any string, lone surrogates included
        ids = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        parts = {
            "weights": _hash(repr(layer.weight.shape).encode(), np.ascontiguousarray(layer.weight, np.float64)),
            "bias": _hash(b"<none>") if layer.bias is None else _hash(np.ascontiguousarray(layer.bias, np.float64)),
            "token names": _hash(names, repr(sorted(layer.special)).encode(), layer.source_dtype.encode()),
            "domain": _hash(_domain_bytes(domain)),
            "audited tokens": _hash(np.ascontiguousarray(ids, np.int64)),
            "chunk size": str(int(chunk_size)),
            "options": _hash(_canonical(options)),
            "argmaxcheck version": str(argmaxcheck.__version__),
        }
        return cls(parts)

    @property
    def digest(self) -> str:
        return _hash(json.dumps(self.parts, sort_keys=True).encode())

    def differences(self, other: RunIdentity) -> list[str]:
        return [k for k in self.parts if self.parts.get(k) != other.parts.get(k)] or \
            [k for k in other.parts if k not in self.parts]


class Journal:
    """A resume journal in ``folder`` for the run ``identity`` over ``chunks`` (see the module docstring).

    Use :meth:`open`; then :meth:`load` each chunk (``None`` when it must be
    decided) and :meth:`save` each chunk as it finishes.
    """

    def __init__(self, folder: Path, identity: RunIdentity, chunks: Sequence[np.ndarray], layer: OutputLayer,
                 log: Log):
        self.folder, self.identity, self.chunks, self.layer, self.log = folder, identity, chunks, layer, log

    @classmethod
    def open(cls, folder: str | os.PathLike, identity: RunIdentity, chunks: Sequence[np.ndarray],
             layer: OutputLayer, log: Log = stderr_note) -> Journal:
        """Start a journal in ``folder`` or reopen the one there; refuse one written for another run.

        Raises
        ------
        InputError
            When the folder's parent does not exist, the folder holds other
            files, its header is unreadable, or it belongs to other inputs or flags.
        """
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"journal {folder}: exists and is not a folder")
        if not folder.exists():
            if not folder.resolve().parent.is_dir():
                raise InputError(f"journal {folder}: its parent folder {folder.resolve().parent} does not exist")
            folder.mkdir()
        for leftover in folder.glob(_TMP_PREFIX + "*"):  # an interrupted write of ours; never a finished file
            leftover.unlink(missing_ok=True)
        journal = cls(folder, identity, chunks, layer, log)
        header = folder / HEADER
        if header.exists():
            journal._check_header(header)
        elif any(folder.iterdir()):
            raise InputError(f"journal {folder}: the folder is not empty and has no {HEADER}, so it is not an"
                             " argmaxcheck journal; give an empty or new folder")
        else:
            body = {"format": FORMAT, "journal_version": JOURNAL_VERSION, "run": identity.digest,
                    "inputs": identity.parts, "chunks": len(chunks),
                    "tokens": int(sum(c.size for c in chunks))}
            body["checksum"] = _hash(json.dumps(body, sort_keys=True).encode())
            _atomic_write(folder, HEADER, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
        return journal

    def _check_header(self, header: Path) -> None:
        where = f"journal {self.folder}"
        try:
            body = json.loads(header.read_text(encoding="utf-8"))
            checksum = body.pop("checksum")
            intact = checksum == _hash(json.dumps(body, sort_keys=True).encode())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, KeyError, TypeError):
            intact = False
        if not intact or body.get("format") != FORMAT:
            raise InputError(f"{where}: {HEADER} is corrupt or not an argmaxcheck journal header; delete the folder"
                             " to start the audit over")
        if body.get("journal_version") != JOURNAL_VERSION:
            raise InputError(f"{where}: journal version {body.get('journal_version')} is not supported (this"
                             f" argmaxcheck writes {JOURNAL_VERSION}); use a new folder")
        if body.get("run") != self.identity.digest:
            stored = RunIdentity(dict(body.get("inputs") or {}))
            differ = ", ".join(stored.differences(self.identity)) or "the run hash"
            raise InputError(f"{where}: written for other inputs or flags (differs in: {differ}); use a new folder,"
                             " or the same inputs and flags as the interrupted run")

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.folder / f"chunk-{k:06d}.npz", self.folder / f"chunk-{k:06d}.json"

    def load(self, k: int) -> AuditReport | None:
        """Chunk ``k``'s report from the journal, or ``None`` when it is not there (or is damaged: noted)."""
        data, manifest = self._paths(k)
        if not manifest.exists():
            return None
        ids = self.chunks[k]
        what = f"chunk {k} (tokens {int(ids[0])}-{int(ids[-1])})"
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            raw = data.read_bytes()
            if meta.get("run") != self.identity.digest or meta.get("sha256") != _hash(raw):
                raise ValueError("its data file does not match its manifest (truncated or corrupted)")
            report = _report_from_npz(raw, meta, self.layer)
            if not np.array_equal([t.id for t in report.tokens], ids):
                raise ValueError("it holds other tokens than the chunk")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError,
                AttributeError) as exc:
            self.log(f"journal {self.folder}: {what} is damaged ({exc}); deciding it again")
            return None
        return report

    def save(self, k: int, report: AuditReport) -> None:
        """Record chunk ``k`` durably: its data, then its manifest (the commit mark)."""
        data, manifest = self._paths(k)
        raw = _report_to_npz(report)
        ids = self.chunks[k]
        meta = {"run": self.identity.digest, "chunk": k, "first": int(ids[0]), "last": int(ids[-1]),
                "count": int(ids.size), "sha256": _hash(raw), "seconds": report.seconds,
                "num_classes": report.num_classes, "dim": report.dim, "domain": report.domain,
                "has_bias": report.has_bias, "source_dtype": report.source_dtype, "timings": report.timings}
        _atomic_write(self.folder, data.name, raw)
        _atomic_write(self.folder, manifest.name, (json.dumps(meta, indent=1) + "\n").encode())


_FLOATS = ("margin", "best_margin", "threshold", "bracket_lower", "bracket_upper", "max_probability",
           "max_probability_upper")
_TEXTS = ("verdict", "stage", "check", "reason")
# Every TokenResult field the journal stores (token names come from the layer); a test keeps it complete.
STORED_FIELDS = frozenset({"id", "token", "witness", "support", "weights", "tie_with", *_FLOATS, *_TEXTS})


def _report_to_npz(report: AuditReport) -> bytes:
    """Every field of every TokenResult, as arrays (no pickles), in token order."""
    tokens = report.tokens
    with_witness = [t for t in tokens if t.witness is not None]
    with_support = [t for t in tokens if t.support is not None]
    ptr = np.zeros(len(with_support) + 1, np.int64)
    ptr[1:] = np.cumsum([t.support.size for t in with_support])
    arrays = {
        "id": np.array([t.id for t in tokens], np.int64),
        "tie_with": np.array([-1 if t.tie_with is None else t.tie_with for t in tokens], np.int64),
        "has_witness": np.array([t.witness is not None for t in tokens], bool),
        "witness": np.array([t.witness for t in with_witness], np.float64).reshape(len(with_witness), report.dim),
        "has_support": np.array([t.support is not None for t in tokens], bool),
        "support_ptr": ptr,
        "support": np.concatenate([t.support for t in with_support]).astype(np.int64) if with_support
        else np.zeros(0, np.int64),
        "weights": np.concatenate([t.weights for t in with_support]).astype(np.float64) if with_support
        else np.zeros(0),
        **{f: np.array([getattr(t, f) for t in tokens], np.float64) for f in _FLOATS},
        # str arrays drop trailing NULs; the engine's strings have none (its own words, not model data).
        **{f: np.array([getattr(t, f) for t in tokens], dtype=str) for f in _TEXTS},
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _report_from_npz(raw: bytes, meta: dict, layer: OutputLayer) -> AuditReport:
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    names = layer.tokens
    tokens, w, s = [], 0, 0
    for k, i in enumerate(a["id"].tolist()):
        witness = support = weights = None
        if a["has_witness"][k]:
            witness, w = a["witness"][w], w + 1
        if a["has_support"][k]:
            lo, hi = a["support_ptr"][s], a["support_ptr"][s + 1]
            support, weights, s = a["support"][lo:hi], a["weights"][lo:hi], s + 1
        tie = int(a["tie_with"][k])
        tokens.append(TokenResult(
            i, names[i] if names else None, str(a["verdict"][k]), float(a["margin"][k]), str(a["stage"][k]),
            witness=witness, support=support, weights=weights, tie_with=None if tie < 0 else tie,
            check=str(a["check"][k]), reason=str(a["reason"][k]),
            **{f: float(a[f][k]) if f in a else np.nan for f in _FLOATS if f != "margin"}))  # older chunks
    return AuditReport(int(meta["num_classes"]), int(meta["dim"]), meta["domain"], bool(meta["has_bias"]),
                       str(meta["source_dtype"]), float(meta["seconds"]), tokens, names=names,
                       timings=dict(meta["timings"]), special=layer.special)


def _atomic_write(folder: Path, name: str, data: bytes) -> None:
    """Write ``folder/name`` so that a crash leaves the old file or the new one, never a part."""
    tmp = folder / f"{_TMP_PREFIX}{name}.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _hash(*chunks) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c if isinstance(c, bytes) else memoryview(c).cast("B"))
    return h.hexdigest()


def _domain_bytes(domain: Domain) -> bytes:
    """The resolved domain, exactly: its kind and every bound's float64 bytes."""
    parts = [domain.kind.encode()]
    for attr in ("lower", "upper", "center", "radius"):
        value = getattr(domain, attr, None)
        if value is not None:
            parts.append(attr.encode() + np.ascontiguousarray(value, np.float64).tobytes())
    return b"|".join(parts)


def _canonical(options) -> bytes:
    """The options as canonical JSON (nested dataclasses included)."""
    plain = asdict(options) if is_dataclass(options) else options
    return json.dumps(plain, sort_keys=True, default=repr).encode()
