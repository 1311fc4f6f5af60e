"""Audits sharded on a local Ray cluster: same report as the local chunked run, a killed worker retried."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from report_helpers import assert_same_report

from argmaxcheck import AuditOptions, Box, InputError
from argmaxcheck.cli import main
from argmaxcheck.runner import LocalExecutor, RayExecutor, audit_sharded
from argmaxcheck.runner.executors import import_ray

ROOT = Path(__file__).resolve().parents[2]


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails, as when it is not installed
    with pytest.raises(InputError, match=r"pip install 'argmaxcheck\[ray\]'"):
        import_ray()


def _has_ray() -> bool:
    try:
        import ray  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


needs_ray = pytest.mark.skipif(not _has_ray(), reason="ray is not installed (pip install 'argmaxcheck[ray]')")


@pytest.fixture(scope="module")
def cluster():
    import ray  # noqa: PLC0415

    # Workers inherit this environment: they import this checkout's argmaxcheck, like the driver.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=80 << 20)
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH")
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(48, 4))
    weight[20:32] = rng.dirichlet(np.ones(3), size=12) @ weight[:3]
    return weight


def ray_initialized():
    import ray  # noqa: PLC0415

    return ray.is_initialized()


def _comparable(report):
    data = report.to_dict()
    data.pop("timings")
    data.pop("stages")
    data["summary"].pop("seconds")
    return data


def _same_tokens(a, b):
    assert _comparable(a) == _comparable(b)
    for s, t in zip(a.tokens, b.tokens, strict=True):
        for field in ("witness", "support", "weights"):
            x, y = getattr(s, field), getattr(t, field)
            assert (x is None and y is None) or np.array_equal(x, y), (s.id, field)


@needs_ray
def test_killed_worker_is_retried_and_nothing_is_lost_or_doubled(cluster, layer, tmp_path):
    options = AuditOptions(probability_seconds=0.0)
    domain = Box.symmetric(2.0)
    local = audit_sharded(layer, domain=domain, options=options, chunk_size=6, executor=LocalExecutor())
    marker = tmp_path / "killed"
    runs = tmp_path / "runs"
    runs.mkdir()

    def dies_once(layer, domain, ids, options):
        """Chunk 3 kills its own worker process the first time it runs; every run leaves a trace."""
        import signal  # noqa: PLC0415 - runs on the worker

        from argmaxcheck.runner.chunks import audit_chunk  # noqa: PLC0415

        (runs / f"{int(ids[0])}-{os.getpid()}").touch()
        if int(ids[0]) == 18 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return audit_chunk(layer, domain, ids, options)

    journal = tmp_path / "journal"
    with RayExecutor(task=dies_once, max_retries=2) as executor:
        on_ray = audit_sharded(layer, domain=domain, options=options, chunk_size=6, executor=executor,
                               journal=journal)
    assert marker.exists()
    starts = sorted(p.name.split("-")[0] for p in runs.iterdir())
    assert starts.count("18") == 2 and len(starts) == 9  # 8 chunks, one of them run twice
    assert on_ray.timings["executor"] == "ray" and on_ray.timings["chunks"] == 8
    _same_tokens(on_ray, local)
    assert_same_report(on_ray, local, same_split=True)  # every field, the stage records' counts included
    assert ray_initialized()  # the executor leaves a cluster it did not start running

    # The journal the Ray run kept, per shard, resumes locally to the same report.
    assert len(list(journal.glob("chunk-*.json"))) == 8
    resumed = audit_sharded(layer, domain=domain, options=options, chunk_size=6, journal=journal)
    assert resumed.timings["chunks_from_journal"] == 8
    _same_tokens(resumed, local)


@needs_ray
def test_cli_ray_flag_gives_the_local_report(cluster, layer, tmp_path):
    path = tmp_path / "layer.npz"
    np.savez(path, weight=layer)
    for flags, name in (([], "local.json"), (["--ray"], "ray.json")):
        code = main(["audit", str(path), "--chunk-size", "10", *flags, "--format", "json",
                     "--output", str(tmp_path / name)])
        assert code == 1
    reports = [json.loads((tmp_path / n).read_text()) for n in ("local.json", "ray.json")]
    assert [r["timings"]["executor"] for r in reports] == ["local", "ray"]
    for r in reports:
        r.pop("timings")
        r.pop("stages")
        r["summary"].pop("seconds")
    assert reports[0] == reports[1]


@needs_ray
def test_unreachable_address_is_one_line_and_exit_2(tmp_path):
    path = tmp_path / "layer.npz"
    np.savez(path, weight=np.eye(3))
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(path), "--ray", "127.0.0.1:1"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot reach 127.0.0.1:1" in proc.stderr, proc.stderr


@needs_ray
def test_chunk_failing_beyond_its_retries_is_one_line_and_keeps_what_was_decided(cluster, layer, tmp_path):
    options = AuditOptions(probability_seconds=0.0)

    def always_dies(layer, domain, ids, options):
        import signal  # noqa: PLC0415

        from argmaxcheck.runner.chunks import audit_chunk  # noqa: PLC0415

        if int(ids[0]) == 42:  # the last chunk: the others are usually finished and journaled by then
            os.kill(os.getpid(), signal.SIGKILL)
        return audit_chunk(layer, domain, ids, options)

    journal = tmp_path / "journal"
    with RayExecutor(task=always_dies, max_retries=0) as executor, \
            pytest.raises(InputError, match=r"^Ray: chunk 7 \(tokens 42-47\) failed after 0 retries: ") as err:
        audit_sharded(layer, options=options, chunk_size=6, executor=executor, journal=journal)
    assert "\n" not in str(err.value)
    kept = len(list(journal.glob("chunk-*.json")))
    resumed = audit_sharded(layer, options=options, chunk_size=6, journal=journal)
    assert resumed.timings["chunks_from_journal"] == kept < 8
    _same_tokens(resumed, audit_sharded(layer, options=options, chunk_size=6))
