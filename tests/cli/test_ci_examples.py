"""The CI recipes in docs/ run as written: the GitHub Actions step and the pre-commit hook."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / "docs" / "examples" / "argmaxcheck-workflow.yml"
CI_DOC = ROOT / "docs" / "ci.md"
HOOKS = ROOT / ".pre-commit-hooks.yaml"
PRECOMMIT = ROOT / "docs" / "examples" / "pre-commit-config.yaml"


def _repo_with_model(tmp_path: Path) -> Path:
    """A user's repository: models/my-model (a copy of data/tiny-gpt2) and its accepted report."""
    model = tmp_path / "models" / "my-model"
    shutil.copytree(ROOT / "data" / "tiny-gpt2", model)
    (tmp_path / "reports").mkdir()
    proc = _argmaxcheck(["audit", "models/my-model", "--quiet", "--json", "reports/argmaxcheck.json",
                         "--format", "text"], tmp_path)
    assert proc.returncode == 1, proc.stderr  # the tiny model has flagged tokens; they are accepted
    return tmp_path


def _argmaxcheck(argv, cwd):
    # The user's repository is the working folder: PYTHONPATH keeps this checkout's argmaxcheck the one that runs.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "argmaxcheck", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False, env=env)


def _break_a_row(repo: Path, row: int, like: int):
    path = repo / "models" / "my-model" / "model.safetensors"
    tensors = load_file(path)
    wte = next(k for k in tensors if k.endswith("wte.weight"))
    tensors[wte] = tensors[wte].copy()
    tensors[wte][row] = tensors[wte][like]
    save_file(tensors, path)


def _average_a_row(repo: Path, row: int, a: int, b: int):
    """Overwrite a row with the float32 average of two others (a merge bug): practically unreachable."""
    path = repo / "models" / "my-model" / "model.safetensors"
    tensors = load_file(path)
    wte = next(k for k in tensors if k.endswith("wte.weight"))
    w = tensors[wte].copy()
    w[row] = ((w[a].astype(np.float64) + w[b]) / 2).astype(np.float32)
    tensors[wte] = w
    save_file(tensors, path)


def _audit_argv(run: str) -> list[str]:
    argv = shlex.split(run)
    assert argv[:2] == ["argmaxcheck", "audit"]
    return argv[1:]


def _workflow_command() -> list[str]:
    steps = yaml.safe_load(WORKFLOW.read_text())["jobs"]["audit"]["steps"]
    return _audit_argv(next(s["run"] for s in steps if "run" in s and s["run"].startswith("argmaxcheck audit")))


def _documented_command() -> list[str]:
    """The audit step as docs/ci.md shows it (its first YAML block that runs argmaxcheck audit)."""
    blocks = re.findall(r"```yaml\n(.*?)```", CI_DOC.read_text(), flags=re.S)
    steps = yaml.safe_load(next(b for b in blocks if "argmaxcheck audit" in b))
    return _audit_argv(next(s["run"] for s in steps if s.get("run", "").startswith("argmaxcheck audit")))


def test_github_workflow_step_passes_on_baseline_and_fails_on_a_new_unreachable_token(tmp_path):
    repo = _repo_with_model(tmp_path)
    argv = _workflow_command()
    proc = _argmaxcheck(argv, repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "::error" not in proc.stdout and "gate: PASSED" in proc.stdout
    for name in ("argmaxcheck.json", "argmaxcheck.md", "argmaxcheck.html", "argmaxcheck.xml"):
        assert (repo / name).stat().st_size > 0
    _break_a_row(repo, 7, like=8)  # rows 7 and 8 now tie: two new unargmaxable tokens
    proc = _argmaxcheck(argv, repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 2 and any("token 7 'tok7'" in e for e in errors), errors
    assert all("highest probability it can reach" in e for e in errors)  # the ball domain is bounded
    gate = json.loads((repo / "argmaxcheck.json").read_text())["gate"]
    assert sorted(gate["counted"]["unargmaxable"]) == [7, 8]
    assert set(gate["ignored"]) == set(range(250, 256))  # the <unused_k> rows, by the workflow's regex


def test_documented_gate_fails_on_a_row_overwritten_with_the_float32_average_of_two_rows(tmp_path):
    """Such a row is practically unreachable (argmaxable by a rounding step): the gate docs/ci.md shows catches it."""
    repo = _repo_with_model(tmp_path)
    argv = _documented_command()
    assert argv == _workflow_command()  # the page shows the example workflow's step
    assert _argmaxcheck(argv, repo).returncode == 0
    _average_a_row(repo, 7, 3, 4)
    proc = _argmaxcheck(argv, repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "token 7 'tok7'" in errors[0], errors
    report = json.loads((repo / "argmaxcheck.json").read_text())
    assert report["gate"]["failed"] == [7]
    assert next(t["verdict"] for t in report["tokens"] if t["id"] == 7) != "argmaxable"


def test_pre_commit_hook_runs_its_entry_with_the_documented_args(tmp_path):
    repo = _repo_with_model(tmp_path)
    hook = next(h for h in yaml.safe_load(HOOKS.read_text()) if h["id"] == "argmaxcheck")
    config = yaml.safe_load(PRECOMMIT.read_text())
    used = next(h for r in config["repos"] for h in r["hooks"] if h["id"] == "argmaxcheck")
    assert hook["pass_filenames"] is False
    entry = shlex.split(hook["entry"])
    assert entry[0] == "argmaxcheck"
    proc = _argmaxcheck(entry[1:] + used["args"], repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _break_a_row(repo, 9, like=10)
    proc = _argmaxcheck(entry[1:] + used["args"], repo)
    assert proc.returncode == 1 and "gate: FAILED" in proc.stdout
    assert np.any([line.startswith("9\t'tok9'") for line in proc.stdout.splitlines()])
