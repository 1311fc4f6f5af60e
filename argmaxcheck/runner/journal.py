"""The resume journal: one folder, one header naming the run, one pair of files per finished chunk.

Layout of a journal folder::

    header.json                 what run this is: hashes of every input (see RunIdentity)
    chunk-000000.npz            the chunk's verdicts, margins, witnesses and certificates
    chunk-000000.json           its manifest: ids, per-stage records and the sha256 of the .npz

Every file is written to a temporary file in the folder, flushed and fsynced,
renamed over its final name, and the folder is fsynced: a crash (SIGKILL, power
loss) leaves either the old state or the new one. The manifest is written
after its ``.npz``, so it is the commit mark: a chunk without a manifest was not
finished, and a chunk whose ``.npz`` does not match the manifest's hash
(truncated, corrupted) is decided again, with a note. A header that cannot be
read is an error, never silently replaced: it is what stops a journal from one
run from being merged into another.

**What is trusted.** Nothing in a journal is a proof. A manifest carries its
own checksum over its content, the run's hash and the chunk's number, so a
manifest copied from another run or chunk, or edited, is a damaged chunk. But
a forger who knows the format can recompute every hash; so the layer, domain
and ids of a loaded chunk come from the run itself (a manifest that claims
others is damaged), and every witness and certificate it holds is checked
again by :mod:`.recheck` before the report is merged.

**Bad files, one rule.** The header is the run's identity: a header that is
corrupt, nested too deeply, of another version or of another run is refused
in one line (:class:`~argmaxcheck.errors.InputError`, exit 2) and nothing in
the folder is changed. Anything wrong with a *chunk* (unreadable or nested
JSON, a hash mismatch, an unknown verdict string, row counts or ids that do not
match the chunk, arrays of the wrong shape) makes it a damaged chunk: one note,
and it is decided again.

**One run at a time.** A run holds an exclusive lock (``fcntl.flock`` on
``.argmaxcheck-lock`` in the folder) from before it reads the header until it
ends; a second run on the same journal is refused in one line rather than
made to wait. Only the holder removes the temporary files of interrupted
writes, and only after the header proved the folder to be this run's journal.
"""

from __future__ import annotations

import contextlib
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
from ..report.model import VERDICTS, AuditReport, TokenResult
from ..report.stats import AuditStats

FORMAT = "argmaxcheck-journal"
JOURNAL_VERSION = 2  # 2: manifests carry a checksum bound to the run and chunk, and per-stage records
HEADER = "header.json"
_TMP_PREFIX = ".argmaxcheck-tmp-"
LOCK = ".argmaxcheck-lock"

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
                 log: Log, domain: Domain | None = None):
        self.folder, self.identity, self.chunks, self.layer, self.log = folder, identity, chunks, layer, log
        self.domain = None if domain is None else domain.resolve(layer.dim)
        self._lock: int | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike, identity: RunIdentity, chunks: Sequence[np.ndarray],
             layer: OutputLayer, log: Log = stderr_note, domain: Domain | None = None) -> Journal:
        """Start a journal in ``folder`` or reopen the one there; refuse one written for another run.

        The journal is locked until :meth:`close` (or the end of the process).

        Raises
        ------
        InputError
            When the folder's parent does not exist, the folder holds other
            files, its header is unreadable, it belongs to other inputs or
            flags, or another run holds it.
        """
        folder = Path(folder)
        if os.path.islink(folder) and not folder.exists():
            raise InputError(f"journal {folder}: is a symbolic link to {os.readlink(folder)}, which does not exist;"
                             " give a folder")
        if folder.exists() and not folder.is_dir():
            raise InputError(f"journal {folder}: exists and is not a folder")
        header = folder / HEADER
        if folder.exists() and not os.path.lexists(header) and any(p.name != LOCK for p in folder.iterdir()):
            raise InputError(f"journal {folder}: the folder is not empty and has no {HEADER}, so it is not an"
                             " argmaxcheck journal; give an empty or new folder")
        if not folder.exists():
            if not folder.resolve().parent.is_dir():
                raise InputError(f"journal {folder}: its parent folder {folder.resolve().parent} does not exist")
            try:
                folder.mkdir()
            except OSError as exc:
                raise InputError(f"journal {folder}: cannot be created ({exc.strerror or exc})") from None
        journal = cls(folder, identity, chunks, layer, log, domain)
        journal._acquire()
        try:
            if os.path.lexists(header):
                journal._check_header(header)
            elif any(p.name != LOCK for p in folder.iterdir()):
                raise InputError(f"journal {folder}: the folder is not empty and has no {HEADER}, so it is not an"
                                 " argmaxcheck journal; give an empty or new folder")
            for leftover in folder.glob(_TMP_PREFIX + "*"):  # an interrupted write of ours: we hold the lock
                leftover.unlink(missing_ok=True)
            if not os.path.lexists(header):
                body = {"format": FORMAT, "journal_version": JOURNAL_VERSION, "run": identity.digest,
                        "inputs": identity.parts, "chunks": len(chunks),
                        "tokens": int(sum(c.size for c in chunks))}
                body["checksum"] = _hash(json.dumps(body, sort_keys=True).encode())
                _atomic_write(folder, HEADER, (json.dumps(body, indent=1, sort_keys=True) + "\n").encode())
        except BaseException:
            journal.close()
            raise
        return journal

    def _acquire(self) -> None:
        """Hold the journal's lock (non-blocking): a second run on the same folder is refused, not queued."""
        try:
            import fcntl  # noqa: PLC0415 - POSIX only
        except ImportError:  # pragma: no cover - no flock: nothing to hold
            return
        try:
            fd = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise InputError(f"journal {self.folder}: cannot create its lock file {LOCK}"
                             f" ({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(f"journal {self.folder}: another argmaxcheck run is using it; wait for it to end"
                             " or give another folder") from None
        self._lock = fd

    def close(self) -> None:
        """Release the journal's lock (idempotent)."""
        if self._lock is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock)
            self._lock = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def _check_header(self, header: Path) -> None:
        where = f"journal {self.folder}"
        try:
            body = json.loads(header.read_text(encoding="utf-8"))
            checksum = body.pop("checksum")
            intact = checksum == _hash(json.dumps(body, sort_keys=True).encode())
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, KeyError, TypeError, RecursionError):
            intact = False  # RecursionError: JSON nested too deeply
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
        """Chunk ``k``'s report from the journal, or ``None`` when it is not there (or is damaged: noted).

        The report's witnesses and certificates are *not* checked here; :mod:`.recheck` does that.
        """
        data, manifest = self._paths(k)
        if not os.path.lexists(manifest):
            return None
        ids = self.chunks[k]
        what = f"chunk {k} (tokens {int(ids[0])}-{int(ids[-1])})"
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8"))
            if not isinstance(meta, dict):
                raise ValueError("its manifest is not a JSON object")
            checksum = meta.pop("checksum", None)
            if checksum != _hash(json.dumps(meta, sort_keys=True).encode()):
                raise ValueError("its manifest's checksum does not match its content")
            raw = data.read_bytes()
            if meta.get("run") != self.identity.digest or meta.get("chunk") != k or meta.get("sha256") != _hash(raw):
                raise ValueError("its data file does not match its manifest (truncated or corrupted)")
            expected = self._expected_meta(ids)
            wrong = [key for key, value in expected.items() if meta.get(key) != value]
            if wrong:
                raise ValueError(f"its manifest claims another {', '.join(wrong)} than this run")
            report = _report_from_npz(raw, meta, self.layer, ids)
            if self.domain is not None:
                report.domain = self.domain.describe()
        except RecursionError:
            self.log(f"journal {self.folder}: {what} is damaged (its manifest is nested too deeply); deciding it again")
            return None
        except Exception as exc:  # a chunk is a cache: whatever is wrong with it, it is decided again
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            self.log(f"journal {self.folder}: {what} is damaged ({reason}); deciding it again")
            return None
        return report

    def _expected_meta(self, ids: np.ndarray) -> dict:
        """What a manifest of chunk ``ids`` must say about the run (a forged one may claim another domain)."""
        layer = self.layer
        out = {"first": int(ids[0]), "last": int(ids[-1]), "count": int(ids.size), "num_classes": layer.num_classes,
               "dim": layer.dim, "has_bias": layer.bias is not None, "source_dtype": layer.source_dtype}
        if self.domain is not None:
            out["domain"] = json.loads(json.dumps(self.domain.describe()))
        return out

    def save(self, k: int, report: AuditReport) -> None:
        """Record chunk ``k`` durably: its data, then its manifest (the commit mark)."""
        data, manifest = self._paths(k)
        raw = _report_to_npz(report)
        ids = self.chunks[k]
        meta = {"run": self.identity.digest, "chunk": k, "first": int(ids[0]), "last": int(ids[-1]),
                "count": int(ids.size), "sha256": _hash(raw), "seconds": report.seconds,
                "num_classes": report.num_classes, "dim": report.dim, "domain": report.domain,
                "has_bias": report.has_bias, "source_dtype": report.source_dtype, "stages": report.stats.to_state(),
                "device": report.device, "device_note": report.device_note, "precision": report.precision}
        meta = json.loads(json.dumps(meta))  # what reading it back gives (tuples become lists), for the checksum
        meta["checksum"] = _hash(json.dumps(meta, sort_keys=True).encode())
        _atomic_write(self.folder, data.name, raw)
        _atomic_write(self.folder, manifest.name, (json.dumps(meta, indent=1) + "\n").encode())


_FLOATS = ("margin", "best_margin", "threshold", "max_probability", "max_probability_upper")
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


def _report_from_npz(raw: bytes, meta: dict, layer: OutputLayer, ids: np.ndarray) -> AuditReport:
    """The chunk report in ``raw``; ValueError for anything that does not fit the chunk ``ids`` of ``layer``."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    n, dim = int(ids.size), layer.dim
    if not np.array_equal(a["id"], ids):
        raise ValueError("it holds other tokens than the chunk")
    for f in ("tie_with", "has_witness", "has_support", *_FLOATS, *_TEXTS):
        if a[f].shape != (n,):
            raise ValueError(f"its {f} array has {a[f].shape} entries for {n} tokens")
    unknown = sorted(set(a["verdict"].tolist()) - set(VERDICTS))
    if unknown:
        raise ValueError(f"unknown verdict {unknown[0][:40]!r}")
    has_w, has_s = a["has_witness"].astype(bool), a["has_support"].astype(bool)
    ptr = a["support_ptr"]
    if a["witness"].shape != (int(has_w.sum()), dim) or ptr.shape != (int(has_s.sum()) + 1,) or ptr[0] != 0 \
            or np.any(np.diff(ptr) < 0) or ptr[-1] != a["support"].size or a["weights"].shape != a["support"].shape:
        raise ValueError("its witness or certificate arrays do not fit its tokens")
    names = layer.tokens
    tokens, w, s = [], 0, 0
    for k, i in enumerate(ids.tolist()):
        witness = support = weights = None
        if has_w[k]:
            witness, w = a["witness"][w].astype(np.float64), w + 1
        if has_s[k]:
            lo, hi = ptr[s], ptr[s + 1]
            support, weights, s = a["support"][lo:hi].astype(np.int64), a["weights"][lo:hi].astype(np.float64), s + 1
        tie = int(a["tie_with"][k])
        tokens.append(TokenResult(
            i, names[i] if names else None, str(a["verdict"][k]), float(a["margin"][k]), str(a["stage"][k]),
            witness=witness, support=support, weights=weights, tie_with=None if tie < 0 else tie,
            check=str(a["check"][k]), reason=str(a["reason"][k]),
            **{f: float(a[f][k]) for f in _FLOATS if f != "margin"}))
    def text(key):
        return None if meta.get(key) is None else str(meta[key])

    try:
        stats = AuditStats.from_state(meta.get("stages", ()))
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        raise ValueError("its stage records are malformed") from None
    return AuditReport(layer.num_classes, dim, meta["domain"], layer.bias is not None, layer.source_dtype,
                       float(meta["seconds"]), tokens, names=names, stats=stats, special=layer.special,
                       display=layer.display, token_kinds=dict(layer.token_kinds), device=text("device"),
                       device_note=text("device_note"), precision=text("precision"))


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
