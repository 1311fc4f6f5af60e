"""Where chunks run: in this process, or as tasks on a Ray cluster.

An executor's ``run(layer, domain, jobs, progress)`` yields ``(k, report)``
for every job ``(k, ids, options)`` as it finishes, in any order; the caller
journals and merges. Both run the same function on the same chunks
(:func:`~argmaxcheck.runner.chunks.audit_chunk`), so they produce the same
chunk reports.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..domains import Domain
from ..engine import AuditOptions
from ..errors import InputError
from ..layer import OutputLayer
from ..report.model import AuditReport
from .chunks import audit_chunk

Job = tuple[int, np.ndarray, AuditOptions]
ChunkTask = Callable[[OutputLayer, Domain, np.ndarray, AuditOptions], AuditReport]


class ClusterError(InputError):
    """The Ray cluster cannot be reached, or a chunk failed there beyond its retries (one line; exit 2)."""


class LocalExecutor:
    """Chunks one after another in this process (progress is reported token by token)."""

    name = "local"
    in_process = True  # its chunk reports were checked by the engine in this process (no recheck needed)

    def run(self, layer: OutputLayer, domain: Domain, jobs: Sequence[Job],
            progress=None) -> Iterator[tuple[int, AuditReport]]:
        for k, ids, options in jobs:
            yield k, audit_chunk(layer, domain, ids, options, progress)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> bool:
        return False


class RayExecutor:
    """Chunks as Ray tasks: the layer goes to the object store once, each chunk is a task with retries.

    Parameters
    ----------
    address : str or None
        ``None``: the cluster in ``RAY_ADDRESS`` if set, else a new local one
        on this machine's cores; ``"auto"``: the cluster this machine belongs
        to; ``host:port`` or ``ray://host:port``: that cluster. Ignored when
        Ray is already initialised in this process (its cluster is used).
    max_retries : int
        How often Ray re-runs a chunk whose worker died (killed, out of
        memory, node lost). A chunk is a pure function of its inputs, so a
        re-run gives the same report and no token is lost or counted twice.
    task : callable, optional
        The function run per chunk (default :func:`audit_chunk`); for tests
        and instrumentation.
    init_options : dict, optional
        Extra keyword arguments for ``ray.init`` when this executor starts Ray.

    Every node needs the same argmaxcheck version installed; a mismatch is an error.
    Use as a context manager (or call :meth:`close`): Ray is shut down again
    only if this executor started it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, max_retries: int = 3, task: ChunkTask | None = None,
                 init_options: dict | None = None):
        self.address = address or None
        self.max_retries = max_retries
        self.task = task or audit_chunk
        self.init_options = dict(init_options or {})
        self._ray = None
        self._owned = False

    def __enter__(self) -> RayExecutor:
        self.connect()
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def connect(self):
        """Import Ray and join (or start) the cluster; idempotent."""
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        if not ray.is_initialized():
            where = self.address or "a local cluster"
            if self.address not in (None, "auto", "local"):
                _check_reachable(self.address)
            options = {"logging_level": logging.ERROR, "log_to_driver": False, **self.init_options}
            if self.address is None:
                options.setdefault("include_dashboard", False)
            try:
                ray.init(address=self.address, **options)
            except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError...: all one line here
                raise ClusterError(f"Ray: cannot connect to {where} ({_first_line(exc)})") from None
            self._owned = True
        self._ray = ray
        return ray

    def close(self) -> None:
        if self._ray is not None and self._owned:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def run(self, layer: OutputLayer, domain: Domain, jobs: Sequence[Job],
            progress=None) -> Iterator[tuple[int, AuditReport]]:
        if not jobs:
            return
        import argmaxcheck  # noqa: PLC0415 - the driver's version, compared with each worker's

        ray = self.connect()
        remote = ray.remote(max_retries=self.max_retries, retry_exceptions=False)(_run_task)
        layer_ref = ray.put(layer)  # W crosses to the object store once; every task reads it there
        # A bounded window of tasks in flight keeps finished reports from piling up in the object store.
        window = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        queue = list(jobs)
        running: dict = {}
        if progress is not None:
            progress.stage("chunks on Ray", sum(int(ids.size) for _, ids, _ in jobs))
        try:
            while queue or running:
                while queue and len(running) < window:
                    k, ids, options = queue.pop(0)
                    running[remote.remote(self.task, layer_ref, domain, ids, options)] = (k, ids)
                done, _ = ray.wait(list(running), num_returns=1)
                k, ids = running.pop(done[0])
                version, report = self._result(ray, done[0], k, ids)
                if version != argmaxcheck.__version__:
                    raise ClusterError(f"Ray: the workers run argmaxcheck {version}, this is"
                                       f" {argmaxcheck.__version__}; install the same version on every node")
                if progress is not None:
                    progress.advance(int(ids.size))
                yield k, report
        finally:  # an error, or a caller that stops early: the other chunks' tasks are not wanted any more
            for ref in running:
                ray.cancel(ref)

    def _result(self, ray, ref, k: int, ids: np.ndarray):
        what = f"chunk {k} (tokens {int(ids[0])}-{int(ids[-1])})"
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, InputError):
                raise InputError(str(cause)) from None
            raise ClusterError(f"Ray: {what} failed: {_first_line(cause or exc)}") from None
        except ray.exceptions.RayError as exc:  # worker or node lost more often than max_retries
            raise ClusterError(f"Ray: {what} failed after {self.max_retries} retries: {_first_line(exc)}") from None


def _run_task(task: ChunkTask, layer: OutputLayer, domain: Domain, ids: np.ndarray, options: AuditOptions):
    """What runs on a worker: the chunk, tagged with the worker's argmaxcheck version."""
    import argmaxcheck  # noqa: PLC0415

    return argmaxcheck.__version__, task(layer, domain, ids, options)


def import_ray():
    """Ray, or a one-line error naming the extra that installs it."""
    try:
        import ray  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise InputError("--ray needs the optional 'ray' package: pip install 'argmaxcheck[ray]'") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on an address nothing listens at (ray.init would wait for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # a name Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"Ray: cannot reach {address} ({exc.strerror or exc})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
