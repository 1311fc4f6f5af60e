"""Safe report writing: check every output target before the audit, then write all of them or none.

The command line asks for reports in up to six places (``--output``,
``--json``, ``--html``, ``--markdown``, ``--junit``, ``--save-certificates``).
Writing them goes in two steps:

1. :func:`plan_outputs`, *before* anything is read or audited, checks every
   target and raises :class:`~argmaxcheck.errors.InputError` (one line, naming
   the option) for a target that

   * is an input of the audit: the model file, any existing file inside an
     input folder (a checkpoint), the ``--baseline``, the external data files
     an ``.onnx`` model names (see :class:`InputFiles`). Paths are compared by
     the file they reach (device and inode), so symlinks, hard links and
     ``x/../`` spellings are caught;
   * lies in a folder the run owns (``owned``: a resume journal, whose every
     file, present or future, is read back), or in a Hugging Face hub cache
     (``models--*/blobs`` or ``models--*/snapshots``: a snapshot's files are
     links to the cached blobs, and writing through one would change the
     cached model). Both are judged on the path as given and on the path with
     every link resolved;
   * is a folder, a block device or a socket, lies in a missing or unwritable
     folder, or is an existing read-only file (refused, never made writable).
     Write permission is read from the mode bits as well as ``os.access``:
     root passes ``os.access`` everywhere, but a file or folder without any
     write bit was not meant to change;
   * is given twice (also ``-`` twice, or ``-`` while the ``--format`` report
     already goes to standard output).

2. :meth:`OutputPlan.write_all` takes every report already rendered in memory
   and writes them:

   * a regular file is replaced atomically: a temporary ``.argmaxcheck-*``
     file in the same folder, then :func:`os.replace`. An existing file keeps
     its permission bits (and, where we may, its owner). A symlink is written
     *through*: its target is replaced, the link itself stays;
   * ``-``, ``/dev/stdout``, ``/dev/stderr`` and ``/dev/fd/N`` are written to
     that file descriptor; a character device or FIFO (``/dev/null``, a named
     pipe) is opened and written in place, never replaced;
   * all temporary files are written first, then all renamed (with SIGINT and
     SIGTERM held back during the renames), then the streams are written. So
     a failure or a signal before the renames leaves every file as it was and
     no temporary file behind; after them, every file is complete.

SIGTERM during :meth:`~OutputPlan.write_all` raises :class:`Terminated`
(a :class:`BaseException`, like :class:`KeyboardInterrupt` for SIGINT), so
the clean-up runs and the command line can exit with one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

STDOUT = "-"
TEMP_PREFIX = ".argmaxcheck-"
# Next to an .onnx model whose external data cannot be listed, only files named like reports may be
# overwritten (external data is conventionally *.data, *.bin, *.onnx_data or has no suffix).
REPORT_SUFFIXES = frozenset({".json", ".html", ".htm", ".md", ".markdown", ".xml", ".txt", ".npz"})
# An input folder is scanned for the files it holds (symlinked blobs of a hub cache included) up to
# this many entries; beyond it, only paths inside the folder are recognised as inputs.
MAX_FOLDER_ENTRIES = 10_000
# Paths that name a file descriptor of this process: written to that descriptor, never resolved
# (resolving /dev/stdout of a redirected run gives the file the shell opened, which must not be replaced).
_FD_PATHS = {"/dev/stdin": 0, "/dev/stdout": 1, "/dev/stderr": 2}
_FD_PREFIXES = ("/dev/fd/", "/proc/self/fd/")
_HUB_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


class Terminated(BaseException):  # named like KeyboardInterrupt, its SIGINT twin
    """SIGTERM arrived while reports were being written (the temporary files are already removed)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class InputFiles:
    """The files an audit reads, so that no report is ever written over one of them.

    Parameters
    ----------
    paths : iterable of path-like
        What the audit reads: the model path (file or folder) and the
        ``--baseline``. A path that does not exist is skipped: the loader
        rejects it before anything is written.

    Notes
    -----
    For a folder, every file in it is an input (a checkpoint's config,
    tokenizer and weights, hub-cache symlinks included). For an ``.onnx``
    model, the external data files its tensors name are inputs: they are
    listed by parsing the model without its external data. If it cannot be
    parsed, every existing file in its folder is treated as an input except
    those named like reports (:data:`REPORT_SUFFIXES`); the loader will
    reject such a model anyway.
    """

    files: set[tuple[int, int]] = field(default_factory=set)  # (st_dev, st_ino)
    folders: list[Path] = field(default_factory=list)  # every file below is an input
    model_folders: list[Path] = field(default_factory=list)  # every non-report file below is an input
    owned: list[Path] = field(default_factory=list)  # nothing below may be written, existing or not

    @classmethod
    def of(cls, paths: Iterable[str | os.PathLike], owned: Iterable[str | os.PathLike] = ()) -> InputFiles:
        inputs = cls()
        for path in paths:
            inputs._add(Path(path))
        for folder in owned:
            inputs.owned.extend({Path(os.path.abspath(folder)), Path(os.path.realpath(folder))})
            inputs._add(Path(folder))
        return inputs

    def forbidden(self, path: Path) -> str | None:
        """Why no report may be written at ``path`` (given or resolved) whether or not it exists; None if it may."""
        for folder in self.owned:
            if path == folder or path.is_relative_to(folder):
                return f"it is in the resume journal {folder}, which the run reads back; write reports outside it"
        parts = path.parts
        for k in range(len(parts) - 1):
            if parts[k].startswith(_HUB_REPO_PREFIXES) and parts[k + 1] in ("blobs", "snapshots"):
                return ("it is in a Hugging Face hub cache, whose files are the cached model's blobs;"
                        " write reports outside the cache")
        return None

    def _add(self, path: Path) -> None:
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return
        if stat.S_ISDIR(st.st_mode):
            self.folders.append(Path(os.path.realpath(path)))
            self._scan(path)
            return
        self.files.add((st.st_dev, st.st_ino))
        if path.suffix.lower() == ".onnx":
            external = _onnx_external_files(path)
            if external is None:
                self.model_folders.append(Path(os.path.realpath(path)).parent)
            for data in external or ():
                with contextlib.suppress(OSError, ValueError):
                    data_st = os.stat(data)
                    self.files.add((data_st.st_dev, data_st.st_ino))

    def _scan(self, folder: Path) -> None:
        seen = 0
        for root, dirs, names in os.walk(folder):
            for name in names + dirs:  # a symlink to a file may be listed among dirs when it is broken
                seen += 1
                if seen > MAX_FOLDER_ENTRIES:
                    return
                with contextlib.suppress(OSError, ValueError):
                    st = os.stat(os.path.join(root, name))  # follows symlinks: the blob is the input
                    if not stat.S_ISDIR(st.st_mode):
                        self.files.add((st.st_dev, st.st_ino))

    def why(self, real: Path, st: os.stat_result) -> str | None:
        """Why the existing file ``real`` (a resolved path, ``st`` its stat) is an input; None if it is not."""
        for folder in self.folders:
            if real.is_relative_to(folder):
                return f"every file in the input folder {folder} is an input; write reports outside it"
        if (st.st_dev, st.st_ino) in self.files:
            return "it is an input of the audit"
        for folder in self.model_folders:
            if real.is_relative_to(folder) and real.suffix.lower() not in REPORT_SUFFIXES:
                return (f"it is next to the ONNX model in {folder} and may be its external data"
                        f" (report files end in {', '.join(sorted(REPORT_SUFFIXES))})")
        return None


@dataclass(frozen=True)
class Target:
    """One checked output target.

    Attributes
    ----------
    option, spec : str
        The option (``--json``) and the path as given.
    kind : str
        ``fd`` (write to file descriptor ``fd``: ``-``, ``/dev/stdout``, ...),
        ``stream`` (a character device or FIFO, opened and written in place)
        or ``file`` (a regular file, replaced atomically; it may not exist yet).
    path : Path or None
        The resolved path written (symlinks followed); None for ``fd``.
    fd : int or None
        The file descriptor, for ``fd``.
    mode, owner : int or None, tuple or None
        Permission bits and (uid, gid) of the existing file to keep.
    """

    option: str
    spec: str
    kind: str
    path: Path | None = None
    fd: int | None = None
    mode: int | None = None
    owner: tuple[int, int] | None = None

    @property
    def key(self) -> object:
        """Identity of the place written, to refuse the same place twice."""
        if self.kind == "fd":
            return ("fd", self.fd)
        return ("path", str(self.path))


@dataclass(frozen=True)
class OutputPlan:
    """Output targets checked by :func:`plan_outputs`; :meth:`write_all` writes them."""

    targets: tuple[Target, ...] = ()

    def __contains__(self, option: str) -> bool:
        return any(t.option == option for t in self.targets)

    def target(self, option: str) -> Target | None:
        """The target of ``option``, or None when it was not asked for."""
        return next((t for t in self.targets if t.option == option), None)

    def write_all(self, rendered: Mapping[str, str | bytes]) -> None:
        """Write every target's report: all regular files or none, no temporary file left behind.

        Parameters
        ----------
        rendered : mapping of option to str or bytes
            The finished report of every target (str is written as UTF-8).

        Raises
        ------
        InputError
            A file could not be written (disk full, permissions changed since
            the plan): no file was changed, which the message confirms (only
            a rename failing half-way, if the folder changed under us, or a
            stream failing after the files, leaves some written).
        KeyboardInterrupt, Terminated
            SIGINT or SIGTERM arrived; before the renames nothing was changed,
            after them every file is complete.
        """
        missing = [t.option for t in self.targets if t.option not in rendered]
        if missing:
            raise ValueError(f"no rendered report for {', '.join(missing)}")
        data = {t.option: _as_bytes(rendered[t.option]) for t in self.targets}
        files = [t for t in self.targets if t.kind == "file"]
        with _sigterm_raises():
            temps: list[tuple[str, Path]] = []
            current, renamed = None, 0
            try:
                for current in files:
                    with _signals_held():  # a signal between creating and recording it would orphan the file
                        fd, tmp = tempfile.mkstemp(dir=current.path.parent, prefix=TEMP_PREFIX, suffix=".tmp")
                        temps.append((tmp, current.path))
                    _fill_temp(fd, current, data[current.option])
                with _signals_held():
                    for current in files:
                        os.replace(temps[0][0], current.path)
                        temps.pop(0)
                        renamed += 1
            except OSError as exc:
                # a rename fails only if the folder changed under us since the plan; say what was written
                done = (f"{renamed} other report file(s) were already replaced" if renamed
                        else "no report file was changed")
                raise InputError(f"{current.option} {current.spec}: cannot be written"
                                 f" ({exc.strerror or exc}); {done}") from None
            finally:
                for tmp, _ in temps:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
            for t in self.targets:
                if t.kind != "file":
                    _write_stream(t, data[t.option])


def plan_outputs(requests: Sequence[tuple[str, str | None]], inputs: Iterable[str | os.PathLike] = (),
                 stdout_taken_by: str | None = None, owned: Iterable[str | os.PathLike] = (),
                 make_folders: bool = False) -> OutputPlan:
    """Check output targets before any work is done; see the module docstring for the rules.

    Parameters
    ----------
    requests : sequence of (option, path or None)
        Each output option and its path as given (None: not asked for).
    inputs : iterable of path-like
        What the audit will read (model path, baseline): never written.
    stdout_taken_by : str, optional
        What already prints to standard output (e.g. ``"the --format report"``),
        so that ``-`` elsewhere is refused.
    owned : iterable of path-like
        Folders the run reads and writes itself (a resume journal): no report
        may land anywhere below them, even where no file is yet.
    make_folders : bool
        The caller creates missing parent folders (a sweep's output folder):
        a missing parent is accepted when the nearest existing one is a
        writable folder.

    Returns
    -------
    OutputPlan

    Raises
    ------
    InputError
        One line naming the option and path at fault.
    """
    asked = [(option, spec) for option, spec in requests if spec is not None]
    if not asked:
        return OutputPlan()
    input_files = InputFiles.of(inputs, owned) if any(spec != STDOUT for _, spec in asked) else InputFiles()
    targets: list[Target] = []
    seen: dict[object, str] = {("fd", 1): stdout_taken_by} if stdout_taken_by else {}
    for option, spec in asked:
        target = _check_target(option, str(spec), input_files, make_folders)
        if target.key in seen:
            other = seen[target.key]
            if target.key == ("fd", 1) and other == stdout_taken_by:
                raise InputError(f"{option} {spec}: standard output already carries {other}"
                                 " (send that one to a file with --output FILE)")
            raise InputError(f"{option} {spec}: {other} already writes there; give each report its own file")
        seen[target.key] = f"{option} {spec}"
        targets.append(target)
    return OutputPlan(tuple(targets))


def silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null (the reader of a pipe went away), so exit does not fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def encode_for_stdout(text: str) -> bytes:
    """``text`` in standard output's encoding; what it cannot show is written as a ``\\x..`` escape."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    return text.encode(encoding, errors="backslashreplace")


def write_stdout(data: bytes) -> None:
    """Write ``data`` to standard output; a closed pipe (``| head``) ends the output quietly."""
    _write_stream(Target("stdout", STDOUT, "fd", fd=1), data)


def _check_target(option: str, spec: str, inputs: InputFiles, make_folders: bool = False) -> Target:
    def refuse(why: str) -> InputError:
        return InputError(f"{option} {spec}: {why}")

    if spec == STDOUT:
        return Target(option, spec, "fd", fd=1)
    if not spec or "\0" in spec:
        raise refuse("not a file name")
    fd = _fd_of(spec)
    if fd is not None:
        return _check_fd(option, spec, fd, inputs, refuse)
    if spec.endswith(("/", os.sep)):
        raise refuse("names a folder, not a file")
    real = Path(os.path.realpath(spec))
    for place in (Path(os.path.abspath(spec)), real):
        why = inputs.forbidden(place)
        if why:
            raise refuse(f"would overwrite or add to what the run reads ({why})")
    try:
        st = os.stat(spec)
    except FileNotFoundError:
        return _check_new_file(option, spec, real, refuse, make_folders)
    except (OSError, ValueError) as exc:
        raise refuse(f"cannot be used ({getattr(exc, 'strerror', None) or exc})") from None
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        raise refuse("is a folder; give a file name inside it")
    why = inputs.why(real, st)
    if why:
        raise refuse(f"would overwrite an input ({why}); choose another file")
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        if not os.access(real, os.W_OK):
            raise refuse("is not writable")
        return Target(option, spec, "stream", path=real)
    if stat.S_ISBLK(mode):
        raise refuse("is a block device; a report is never written to a disk")
    if not stat.S_ISREG(mode):
        raise refuse("is a socket or other special file; give a file name, - or /dev/stdout")
    # root passes os.access on any file: the write bits say whether the user meant it to change
    if not (mode & 0o222) or not os.access(real, os.W_OK):
        raise refuse("is read-only; make it writable or choose another file")
    if not _writable_folder(real.parent):
        raise refuse(f"its folder {real.parent} is not writable (the report replaces the file atomically)")
    return Target(option, spec, "file", path=real, mode=stat.S_IMODE(mode), owner=(st.st_uid, st.st_gid))


def _check_new_file(option: str, spec: str, real: Path, refuse, make_folders: bool = False) -> Target:
    parent = real.parent
    if make_folders:
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
    if not parent.is_dir():
        raise refuse(f"folder {parent} does not exist" if not os.path.lexists(parent) else f"{parent} is not a folder")
    if not _writable_folder(parent):
        raise refuse(f"folder {parent} is not writable")
    return Target(option, spec, "file", path=real)


def _writable_folder(folder: Path) -> bool:
    """Whether reports may be created in ``folder``: ``os.access`` and, for root, a write bit in its mode."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return bool(mode & 0o222) and os.access(folder, os.W_OK | os.X_OK)


def _check_fd(option: str, spec: str, fd: int, inputs: InputFiles, refuse) -> Target:
    try:
        st = os.fstat(fd)
        import fcntl  # noqa: PLC0415 - POSIX only, like /dev/fd itself

        access = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError:
        raise refuse(f"file descriptor {fd} is not open") from None
    if access not in (os.O_WRONLY, os.O_RDWR):
        raise refuse(f"file descriptor {fd} is not open for writing")
    if inputs.why(Path(spec), st):
        raise refuse(f"file descriptor {fd} is an input of the audit")
    return Target(option, spec, "fd", fd=fd)


def _fd_of(spec: str) -> int | None:
    if spec in _FD_PATHS:
        return _FD_PATHS[spec]
    for prefix in _FD_PREFIXES:
        rest = spec[len(prefix):] if spec.startswith(prefix) else ""
        if rest.isascii() and rest.isdigit():
            return int(rest)
    return None


def _onnx_external_files(model: Path) -> list[Path] | None:
    """The external data files an ONNX model names (resolved next to it); None if it cannot be parsed."""
    try:
        import onnx  # noqa: PLC0415 - optional dependency, only for .onnx inputs

        proto = onnx.load_model(str(model), load_external_data=False)
    except Exception:  # any failure: fall back to the cautious folder rule
        return None
    found: list[Path] = []
    graphs, tensors = [proto.graph], []
    while graphs:  # an explicit stack: subgraphs (If, Loop, Scan) may nest deeply
        graph = graphs.pop()
        tensors.extend(graph.initializer)
        tensors.extend(s.values for s in graph.sparse_initializer)
        tensors.extend(s.indices for s in graph.sparse_initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            found.extend(model.parent / entry.value for entry in tensor.external_data if entry.key == "location")
    return found


def _as_bytes(report: str | bytes) -> bytes:
    # backslashreplace: a lone surrogate from a model file becomes the text \ud800, which in JSON is
    # the very escape that reads back as it; nothing is dropped and nothing fails half-way.
    return report if isinstance(report, bytes) else report.encode("utf-8", errors="backslashreplace")


def _fill_temp(fd: int, target: Target, data: bytes) -> None:
    """Write ``data`` to the open temporary file ``fd`` (then closed) with the mode ``target`` keeps."""
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        if target.mode is None:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp's 0600 is for secrets; a report is not one
        else:
            os.fchmod(f.fileno(), target.mode)
            if target.owner is not None and hasattr(os, "fchown"):
                with contextlib.suppress(OSError):  # only root may give a file away; others keep theirs
                    os.fchown(f.fileno(), *target.owner)


def _write_stream(target: Target, data: bytes) -> None:
    try:
        stream = {1: sys.stdout, 2: sys.stderr}.get(target.fd) if target.kind == "fd" else None
        if stream is not None:  # through sys.stdout/stderr, so a redirected or captured stream gets it
            stream.flush()
            buffer = getattr(stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
                buffer.flush()
            else:
                stream.write(data.decode(getattr(stream, "encoding", None) or "utf-8", errors="replace"))
                stream.flush()
        elif target.kind == "fd":
            view = memoryview(data)
            while view:
                view = view[os.write(target.fd, view):]
        else:
            with open(target.path, "wb", buffering=0) as f:  # a device or FIFO: no O_TRUNC effect, no rename
                f.write(data)
    except BrokenPipeError:
        if target.fd == 1:
            silence_stdout()  # `argmaxcheck ... | head`: the reader has what it wanted
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            return
        raise InputError(f"{target.option} {target.spec}: cannot be written ({exc.strerror or exc})") from None


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` inside the block (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def handler(signum, _frame):
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back during the renames: they are delivered after the last one."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
