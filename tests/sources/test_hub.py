"""Hub ids ORG/NAME[@REVISION]: resolved from a real cache layout offline, and downloading only what is needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
from hub_helpers import COMMIT, OTHER, TINY, cache_repo, tiny_files  # noqa: F401 - OTHER: revision tests
from huggingface_hub import constants, scan_cache_dir
from huggingface_hub.utils import hf_raise_for_status
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders
from tokenizers.models import BPE

from argmaxcheck import InputError
from argmaxcheck.sources import hub, load_source
from argmaxcheck.sources.hub import load_repo, parse_repo_id


@pytest.fixture(autouse=True)
def fake_cache(tmp_path, monkeypatch):
    """FakeHub writes into tmp_path/cache, so the library's cache is there (files outside it are refused)."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """In-process: the library's cache is tmp_path/hub, and it is offline (constants are read per call)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_cache_layout_is_the_librarys(tmp_path):
    cache_repo(tmp_path, "org/tiny", tiny_files())
    (repo,) = scan_cache_dir(tmp_path).repos
    assert repo.repo_id == "org/tiny" and repo.refs["main"].commit_hash == COMMIT
    assert {f.file_name for f in repo.refs["main"].files} == {"config.json", "model.safetensors", "tokenizer.json"}


def _cli(args, env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | env
    return subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", *args, "--no-max-probability"],
                          capture_output=True, text=True, env=full, timeout=300, check=False)


def test_cli_audits_a_cached_repo_offline(tmp_path):
    """HF_HOME picks the cache, HF_HUB_OFFLINE keeps the network out; the report names repo and commit."""
    cache_repo(tmp_path / "home" / "hub", "org/tiny", tiny_files())
    env = {"HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "r.json"
    proc = _cli(["org/tiny", "--tokens", "199-203", "--json", str(out), "--format", "text"], env)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(out.read_text())
    assert report["checkpoint"]["repo_id"] == "org/tiny" and report["checkpoint"]["revision"] == COMMIT
    assert report["checkpoint"]["norm"] == "layernorm"
    assert report["summary"]["source"] == "org/tiny"
    assert set(report["unargmaxable"]) == {200, 201, 202}  # as for the folder itself (test_checkpoint)
    assert "'tok200'" in proc.stdout


def test_cli_revision_and_hf_hub_cache(tmp_path):
    cache_repo(tmp_path / "cache", "org/tiny", tiny_files(), commit=OTHER, ref=None)
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "r.json"
    proc = _cli([f"org/tiny@{OTHER}", "--tokens", "250-251", "--json", str(out)], env)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(out.read_text())["checkpoint"]["revision"] == OTHER
    # No refs/main in this cache: without a revision the repo is not cached.
    proc = _cli(["org/tiny"], env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "org/tiny: 'config.json' is not in the local cache" in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr


def test_offline_errors(offline_cache):
    with pytest.raises(InputError, match=r"^org/missing: 'config.json' is not in the local cache .* HF_HUB_OFFLINE"):
        load_repo("org/missing")
    files = tiny_files()
    del files["model.safetensors"]
    cache_repo(offline_cache, "org/noweights", files)
    with pytest.raises(InputError, match=r"no model.safetensors, .* in the local cache"):
        load_repo("org/noweights")


def test_local_paths_win_over_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org").mkdir()
    local = tmp_path / "org" / "tiny"
    local.mkdir()
    for name, data in tiny_files().items():
        (local / name).write_bytes(data)
    assert load_source("org/tiny").info.get("repo_id") is None  # the folder, not the hub
    assert not hub.SOURCE.matches(Path("org/typo"))  # 'org' is a local folder: a mistyped path
    assert not hub.SOURCE.matches(Path("other/head.npz"))
    assert hub.SOURCE.matches(Path("other/model@v1.0"))
    assert parse_repo_id("google/gemma-2-2b@main") == ("google/gemma-2-2b", "main")
    assert parse_repo_id("a/b/c") is None and parse_repo_id("gpt2") is None


class FakeHub:
    """Stands in for huggingface_hub.hf_hub_download: serves ``remote`` files at one commit into a
    snapshot folder, records every request, and fails as the library does."""

    def __init__(self, root: Path, remote: dict[str, bytes], error: str | None = None):
        self.root, self.remote, self.error = root, remote, error
        self.requests: list[tuple[str, str | None]] = []

    def __call__(self, repo_id, filename, *, revision=None, **kwargs):
        self.requests.append((filename, revision))
        url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{filename}"
        if self.error or filename not in self.remote:
            httpx2 = pytest.importorskip("httpx2")  # huggingface_hub >= 2's HTTP client builds its errors
            code = self.error or "EntryNotFound"
            hf_raise_for_status(httpx2.Response(403 if code == "GatedRepo" else 404,
                                                headers={"X-Error-Code": code},
                                                request=httpx2.Request("GET", url)))
        assert revision in (None, "main", COMMIT)
        path = self.root / "snapshots" / COMMIT / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.remote[filename])
        return str(path)


def _safetensors(tensors: dict, tmp_path: Path) -> bytes:
    tmp = tmp_path / "t.safetensors"
    save_file(tensors, str(tmp))
    return tmp.read_bytes()


def sharded_llama(tmp_path, rng) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """A remote Llama repo: head in shard 1, final norm in shard 3, everything else in shards 2 and 4."""
    weight, gamma = rng.normal(size=(40, 16)).astype(np.float32), rng.uniform(0.5, 1.5, 16).astype(np.float32)
    other = rng.normal(size=(16, 16)).astype(np.float32)
    shards = {"model-00001-of-00004.safetensors": {"model.embed_tokens.weight": weight},
              "model-00002-of-00004.safetensors": {"model.layers.0.mlp.up_proj.weight": other},
              "model-00003-of-00004.safetensors": {"model.norm.weight": gamma},
              "model-00004-of-00004.safetensors": {"model.layers.1.mlp.up_proj.weight": other}}
    remote = {name: _safetensors(t, tmp_path) for name, t in shards.items()}
    remote["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {k: name for name, t in shards.items() for k in t}}).encode()
    remote["config.json"] = json.dumps({"model_type": "llama", "rms_norm_eps": 1e-5,
                                        "tie_word_embeddings": True}).encode()
    tokenizer = Tokenizer(BPE({**{f"w{i}": i for i in range(38)}, "Ġthe": 38}, merges=[]))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])
    remote["tokenizer.json"] = tokenizer.to_str().encode()
    return remote, weight, gamma


def test_download_requests_only_what_the_audit_reads(tmp_path, rng, monkeypatch):
    remote, weight, gamma = sharded_llama(tmp_path, rng)
    fake = FakeHub(tmp_path / "cache", remote)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    loaded = load_repo("org/sharded")
    assert fake.requests == [("config.json", None), ("tokenizer.json", COMMIT),
                             ("model.safetensors.index.json", COMMIT),
                             ("model-00001-of-00004.safetensors", COMMIT),
                             ("model-00003-of-00004.safetensors", COMMIT)]
    assert loaded.info["repo_id"] == "org/sharded" and loaded.info["revision"] == COMMIT
    np.testing.assert_allclose(loaded.layer.weight, weight.astype(np.float64) * gamma, rtol=1e-12)
    assert loaded.layer.display[38] == " the" and loaded.layer.token_kinds == {39: "special"}


def test_download_single_file_repo_with_vocab_json(tmp_path, rng, monkeypatch):
    remote = {name: data for name, data in tiny_files().items() if name != "tokenizer.json"}
    remote["vocab.json"] = json.dumps({f"v{i}": i for i in range(255)} | {"Ġthe": 255}).encode()
    fake = FakeHub(tmp_path / "cache", remote)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    loaded = load_repo("org/tiny", "main")
    assert [f for f, _ in fake.requests] == ["config.json", "tokenizer.json", "vocab.json",
                                            "model.safetensors.index.json", "model.safetensors"]
    assert loaded.layer.display[255] == " the" and loaded.info["revision"] == COMMIT
    assert loaded.info["requested_revision"] == "main"


@pytest.mark.parametrize(("code", "message"), [
    ("GatedRepo", r"^org/x: gated repository: accept its terms"),
    ("RepoNotFound", r"^org/x: no such repository on the Hugging Face Hub"),
    ("RevisionNotFound", r"^org/x: the repository has no revision"),
    ("EntryNotFound", r"^org/x: the repository has no 'config.json'"),
])
def test_hub_refusals_are_one_line_errors(tmp_path, monkeypatch, code, message):
    fake = FakeHub(tmp_path / "cache", {}, error=code)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(InputError, match=message) as info:
        load_repo("org/x")
    assert "\n" not in str(info.value)


def test_unsupported_model_type_downloads_no_weights(tmp_path, rng, monkeypatch):
    remote, _, _ = sharded_llama(tmp_path, rng)
    remote["config.json"] = json.dumps({"model_type": "mamba"}).encode()
    fake = FakeHub(tmp_path / "cache", remote)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with pytest.raises(InputError, match=r"org/m: model_type 'mamba' is not supported yet"):
        load_repo("org/m")
    assert fake.requests == [("config.json", None)]


def test_tokenizer_bigger_than_the_head_is_refused(tmp_path, rng, monkeypatch):
    remote, _, _ = sharded_llama(tmp_path, rng)
    tokenizer = Tokenizer(BPE({f"w{i}": i for i in range(45)}, merges=[]))
    remote["tokenizer.json"] = tokenizer.to_str().encode()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", FakeHub(tmp_path / "cache", remote))
    with pytest.raises(InputError, match=r"the tokenizer has 45 tokens but the head has 40 rows"):
        load_repo("org/sharded")


# ---------------------------------------------------------------- strictly inside the cache

def _no_file_opened(monkeypatch):
    """hf_hub_download, which opens refs/ and the snapshot, must not even be called."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"hf_hub_download called: {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)


@pytest.mark.parametrize("revision", ["..", "../../../../etc", "main/../../x", "refs/../main", "/etc/passwd",
                                      "a//b", "./main", "main/."])
def test_revisions_that_walk_paths_are_refused_first(offline_cache, monkeypatch, revision):
    cache_repo(offline_cache, "org/tiny", tiny_files())
    _no_file_opened(monkeypatch)
    with pytest.raises(InputError, match=r"^org/tiny@.*: not a revision") as info:
        load_repo("org/tiny", revision)
    assert "\n" not in str(info.value)


def test_a_ref_that_escapes_the_cache_is_one_line(offline_cache, tmp_path, monkeypatch):
    """refs/main holding '../../..' made huggingface_hub raise a ValueError: exit 3."""
    root = cache_repo(offline_cache, "org/tiny", tiny_files())
    (root / "refs" / "main").write_text("../../../../outside")
    _no_file_opened(monkeypatch)
    with pytest.raises(InputError, match=r"^org/tiny: refs/main in the cache .* does not hold a commit hash"
                                         r" but '../../../../outside'"):
        load_repo("org/tiny")


def test_a_ref_linked_outside_the_cache_is_refused(offline_cache, tmp_path, monkeypatch):
    root = cache_repo(offline_cache, "org/tiny", tiny_files())
    (tmp_path / "elsewhere").write_text(COMMIT)
    (root / "refs" / "main").unlink()
    (root / "refs" / "main").symlink_to(tmp_path / "elsewhere")
    _no_file_opened(monkeypatch)
    with pytest.raises(InputError, match=r"^org/tiny: refs/main in the Hugging Face cache .* links outside it"):
        load_repo("org/tiny")


def test_a_snapshot_linked_outside_the_cache_is_refused(offline_cache, tmp_path, monkeypatch):
    root = cache_repo(offline_cache, "org/tiny", tiny_files())
    outside = tmp_path / "outside"
    outside.mkdir()
    for name, data in tiny_files().items():
        (outside / name).write_bytes(data)
    snapshot = root / "snapshots" / COMMIT
    for f in snapshot.iterdir():
        f.unlink()
    snapshot.rmdir()
    snapshot.symlink_to(outside)
    _no_file_opened(monkeypatch)
    with pytest.raises(InputError, match=rf"^org/tiny: snapshots/{COMMIT} in the Hugging Face cache .* links"
                                         r" outside it"):
        load_repo("org/tiny")
    with pytest.raises(InputError, match=r"links outside it"):  # the same when the commit is asked for
        load_repo("org/tiny", COMMIT)


def test_a_snapshot_file_linked_outside_the_cache_is_not_opened(offline_cache, tmp_path, monkeypatch):
    root = cache_repo(offline_cache, "org/tiny", tiny_files())
    (tmp_path / "config.json").write_bytes(tiny_files()["config.json"])
    link = root / "snapshots" / COMMIT / "config.json"
    link.unlink()
    link.symlink_to(tmp_path / "config.json")
    opened = []
    monkeypatch.setattr(hub, "read_json", lambda path, limit: opened.append(path))
    with pytest.raises(InputError, match=r"^org/tiny: 'config.json' in the Hugging Face cache .* links outside it"):
        load_repo("org/tiny")
    assert opened == []


def test_cli_ref_escaping_the_cache_is_exit_2(tmp_path):
    root = cache_repo(tmp_path / "cache", "org/tiny", tiny_files())
    (root / "refs" / "main").write_text("../../../../outside")
    proc = _cli(["org/tiny"], {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("argmaxcheck: error: org/tiny: refs/main")
