"""Every string from a model file is data, in every report; and the gate means one thing in every format.

An adversarial corpus of token names, tensor names and paths (markup, links, mentions, control characters,
workflow commands, lone surrogates, characters XML forbids) goes through every output format, built in code.
"""

import html
import io
import json
import math
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from markdown_it import MarkdownIt
from rich.console import Console

from argmaxcheck import InputError, assert_all_argmaxable
from argmaxcheck.cli import main
from argmaxcheck.report.escape import json_text, markdown_code, markdown_text, printable
from argmaxcheck.report.formats import FORMATS, print_terminal
from argmaxcheck.report.gate import Baseline, GatePolicy, evaluate
from argmaxcheck.report.model import ARGMAXABLE, PRACTICAL, UNARGMAXABLE, UNDECIDED, AuditReport, TokenResult

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "data" / "tiny-gpt2"

XML_FORBIDDEN = "".join(map(chr, [*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20)])) + "\ufffe\uffff"
EVIL = [
    "![x](https://evil.example/pixel.png)", "[click](https://evil.example)", "<https://evil.example>",
    "https://evil.example/a", "www.evil.example", "@octocat", "ping @github/security", "#123", "owner/repo#7",
    "user@evil.example", "<img src=x onerror=alert(1)>", "</code><script>alert(1)</script>", "&lt;b&gt; &amp;",
    "**bold** _em_ ~~gone~~ $x^2$", "# heading", "> quote", "- item", "1. item", "2) item", "===", "a|b||c",
    "back\\|slash", "`tick`", "``", "```fence```", "line\nbreak", "cr\rhere", "\x1b[2J\x1b[H\x1b]0;title\x07",
    "\x1b[31mred", "\n::error file=x.py::forged", "\r::warning::forged", "%0A::error::forged", "\x07bell",
    "\ud800", "lone \udfff low", "\ufffe\uffff", XML_FORBIDDEN, "\u202egnp.exe", "tab\there", "\x7f\x85\x9b",
    "plain", " spaced ", "\\x1b literal",
]
EVIL_PATH = "models/\x1b[2J@octocat\n::error::forged #1 ![i](https://evil.example/i.png)\ud800"
EVIL_INFO = {"domain": "LayerNorm output \x1b[2J\n::error::x @octocat", "audited": "folded final norm",
             "norm_weight": "ln_f\x1b[31m\u202e.weight", "head": "lm\n::error::head"}


def synthetic_report(names, source=EVIL_PATH, checkpoint=None) -> AuditReport:
    """A report with every kind of verdict and explanation; competitors cite other (adversarial) names."""
    n, tokens = len(names), []
    for i in range(n):
        j, k = (i + 1) % n, (i + 2) % n
        kind = i % 6
        if kind == 0:
            t = TokenResult(i, names[i], ARGMAXABLE, 0.5, "screen", witness=np.zeros(3))
        elif kind == 1:
            t = TokenResult(i, names[i], UNARGMAXABLE, -0.1, "exact", support=np.array([j, k]),
                            weights=np.array([0.6, 0.4]), check="exact rational")
        elif kind == 2:
            t = TokenResult(i, names[i], UNARGMAXABLE, 0.0, "tie", tie_with=j)
        elif kind == 3:
            t = TokenResult(i, names[i], PRACTICAL, 1e-9, "exact", witness=np.zeros(3), best_margin=2e-9,
                            threshold=1e-7, max_probability=1e-3, max_probability_upper=2e-3)
        elif kind == 4:
            t = TokenResult(i, names[i], UNDECIDED, math.nan, "exact", reason="solver ended with status 'x' (|z| <= 3)")
        else:
            t = TokenResult(i, names[i], UNARGMAXABLE, -1.0, "dominated", support=np.array([j]), weights=np.ones(1))
        tokens.append(t)
    return AuditReport(n, 3, {"kind": "ball", "radius": 1.7, "center": 0.0}, True, "float32", 0.1, tokens,
                       names=list(names), source=source, checkpoint=checkpoint, special=frozenset({1}))


def flagged_ids(report):
    return {t.id for t in report.tokens if t.verdict != ARGMAXABLE}


def assert_no_controls(text: str, allowed: str = "\n"):
    bad = {c for c in text if not (c.isprintable() or c in allowed)}
    assert not bad, sorted(map(ascii, bad))


# -- class 7: every format escapes every string from a model file --------------------------------------------------

@pytest.fixture(scope="module")
def evil():
    report = synthetic_report(EVIL, checkpoint=EVIL_INFO)
    return report, evaluate(report)


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable("models/ünïcødé path\\x") == "models/ünïcødé path\\x"
    assert printable("a\x1b[2J\n::error::b\r\x07\ud800\ufffe\u202e\t") == \
        "a\\x1b[2J\\n::error::b\\r\\x07\\ud800\\ufffe\\u202e\\t"
    for s in EVIL:
        assert printable(s).isprintable()


def test_markdown_renders_no_markup_links_or_mentions_from_model_strings(evil):
    report, gate = evil
    md = FORMATS["markdown"](report, gate)
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    tokens = parser.parse(md)
    kinds = [t.type for t in tokens] + [c.type for t in tokens for c in (t.children or [])]
    for forbidden in ("link_open", "image", "html_inline", "html_block", "em_open", "s_open",
                      "blockquote_open", "ordered_list_open", "hr", "fence", "code_block", "hardbreak"):
        assert forbidden not in kinds, forbidden
    assert kinds.count("strong_open") == 1  # ours: **gate failed**
    # Our structure only: one title, a heading per category, one bullet list (the gate), tables intact.
    headings = [t.tag for t in tokens if t.type == "heading_open"]
    assert headings == ["h2", "h3", "h3", "h3"]
    assert kinds.count("bullet_list_open") == 1
    rows = [t for t in tokens if t.type == "tr_open"]
    cells = [t for t in tokens if t.type == "td_open"]
    assert len(rows) == 2 + 3 + len(flagged_ids(report))  # the counts table, then a header per category
    # Every body row has as many cells as its table's header (a column no row has a value in is left out).
    tables, in_body = [], False  # [header cells, body rows] per table
    for t in tokens:
        if t.type == "table_open":
            tables.append([0, 0])
            in_body = False
        elif t.type == "tbody_open":
            in_body = True
        elif t.type == "th_open":
            tables[-1][0] += 1
        elif t.type == "tr_open" and in_body:
            tables[-1][1] += 1
    assert tables[0] == [5, 1] and sum(r for _, r in tables[1:]) == len(flagged_ids(report))
    assert len(cells) == sum(h * r for h, r in tables)
    # GitHub links @mentions, #refs and bare URLs in text outside code: none are left there.
    rendered = parser.render(md)
    outside_code = html.unescape(re.sub(r"<code>.*?</code>", "", rendered, flags=re.S))
    for pattern in (r"@\w", r"#\d", r"://", r"(?i)www\.", r"<script", r"onerror"):
        assert not re.search(pattern, outside_code), pattern
    # Each flagged token's name is shown literally, as its Python literal, in a code span.
    codes = {html.unescape(c) for c in re.findall(r"<code>(.*?)</code>", rendered, flags=re.S)}
    for i in flagged_ids(report):
        assert repr(EVIL[i]) in codes, EVIL[i]
    assert_no_controls(md, "\n\u2060")  # the word joiners that break mentions and references
    md.encode("utf-8")


@pytest.mark.parametrize("text", EVIL)
def test_markdown_helpers_round_trip_through_a_commonmark_parser(text):
    parser = MarkdownIt("commonmark").enable(["table", "strikethrough"])
    code = parser.renderInline(markdown_code(text))
    assert html.unescape(re.fullmatch(r"<code>(.*)</code>", code, flags=re.S).group(1)) == printable(text)
    prose = html.unescape(parser.renderInline(markdown_text(text))).replace("\u2060", "")
    assert prose == printable(text)


def test_junit_is_well_formed_and_keeps_every_name(evil):
    report, gate = evil
    xml = FORMATS["junit"](report, gate)
    suite = ET.fromstring(xml.encode("utf-8"))  # raises on any character XML 1.0 forbids
    failures = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert len(failures) == int(suite.get("failures")) == len(flagged_ids(report))
    for case in failures:
        record = json.loads(case.find("failure").text)
        assert record["token"] == EVIL[record["id"]]  # the JSON record round-trips the exact string
        assert case.get("name") == printable(f"{record['id']} {report.token_text(record['id'])}")
    assert suite.get("name") == printable(f"argmaxcheck {EVIL_PATH}")


def test_json_is_utf8_and_parses_back_to_the_same_strings(evil):
    report, gate = evil
    text = FORMATS["json"](report, gate)
    data = json.loads(text.encode("utf-8").decode("utf-8"))
    assert data["summary"]["source"] == EVIL_PATH
    assert {t["id"]: t["token"] for t in data["tokens"]} == {i: EVIL[i] for i in flagged_ids(report)}
    assert data["checkpoint"] == EVIL_INFO
    assert json.loads(json_text({"k\ud800": "\udfff\ufffe"})) == {"k\ud800": "\udfff\ufffe"}


def test_text_terminal_and_html_show_no_control_characters(evil):
    report, gate = evil
    text = FORMATS["text"](report, gate)
    assert_no_controls(text, "\n\t")
    lines = text.splitlines()
    assert len(lines) == 4 + len(flagged_ids(report))  # a token cannot add a line...
    assert all(len(line.split("\t")) == 7 for line in lines[4:])  # ...or a column
    assert lines[0].startswith(printable(EVIL_PATH))
    buf = io.StringIO()
    print_terminal(report, gate, console=Console(file=buf, width=160, color_system=None, force_terminal=False))
    assert_no_controls(buf.getvalue())
    page = FORMATS["html"](report, gate)
    page.encode("utf-8")
    body = page[page.index("</head>"):]
    assert_no_controls(body)
    for raw in ("<img src=x", "<script>alert", "</code><script>"):
        assert raw not in body


def test_github_commands_cannot_be_forged(evil):
    report, gate = evil
    out = FORMATS["github"](report, gate)
    assert_no_controls(out)
    lines = out.splitlines()
    assert len(lines) == len(flagged_ids(report)) + 1
    assert all(re.match(r"::(error|warning|notice) title=[^:,]*::", line) for line in lines), lines
    assert sum(line.startswith("::error") for line in lines) == len(gate.failures())
    title = lines[0][len("::error title="):lines[0].index("::", 2)]
    assert "%3A" in title and "%0A" not in title  # the path's ':' is escaped; its newline is a visible \n


def test_input_error_is_one_printable_line():
    err = InputError("model.npz: no array named 'we\x1b[2Jight\n::error::x'; it has: \ud800")
    assert str(err) == "model.npz: no array named 'we\\x1b[2Jight\\n::error::x'; it has: \\ud800"
    assert err.args[0].count("\n") == 1  # the data itself is kept


def test_cli_error_naming_a_hostile_array_is_one_printable_line(tmp_path):
    path = tmp_path / "layer.npz"
    np.savez(path, **{"w\x1b[2J\n::error::forged": np.eye(3)})
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(path)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "\x1b" not in proc.stderr and "\\x1b[2J\\n::error::forged" in proc.stderr


def _hostile_checkpoint(tmp_path: Path) -> tuple[Path, dict[int, str]]:
    """data/tiny-gpt2 in a folder with a hostile name, its flagged tokens renamed to adversarial strings."""
    folder = tmp_path / "m\x1b[2J\n::error::forged @octocat #1"
    shutil.copytree(TINY, folder)
    tok = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    renamed = dict(zip([200, 201, 202, 250, 251, 252, 253, 254, 255],
                       ["\ud800", "![x](https://evil.example/x.png)", "@octocat", XML_FORBIDDEN,
                        "\x1b[2J\n::error::forged", "<img src=x onerror=alert(1)>", "a|b`c``d", "#123",
                        "\r\n# heading"], strict=True))
    vocab = {name: i for name, i in tok["model"]["vocab"].items() if i not in renamed}
    tok["model"]["vocab"] = {**vocab, **{name: i for i, name in renamed.items()}}
    (folder / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")  # ASCII: \ud800 as in the wild
    return folder, renamed


def test_every_output_of_the_cli_survives_hostile_names_and_paths(tmp_path, capsys):
    folder, renamed = _hostile_checkpoint(tmp_path)
    out = {f: tmp_path / f"r.{f}" for f in ("json", "xml", "md", "html")}
    rc = main(["audit", str(folder), "--quiet", "--no-max-probability", "--format", "github",
               "--json", str(out["json"]), "--junit", str(out["xml"]), "--markdown", str(out["md"]),
               "--html", str(out["html"])])
    gh = capsys.readouterr().out
    assert rc == 1
    assert_no_controls(gh)
    assert all(line.startswith(("::error ", "::warning ", "::notice ")) for line in gh.splitlines())
    data = json.loads(out["json"].read_bytes().decode("utf-8"))
    tokens = {t["id"]: t["token"] for t in data["tokens"]}
    assert all(tokens[i] == name for i, name in renamed.items())
    ET.fromstring(out["xml"].read_bytes())
    md = MarkdownIt("commonmark").enable("table").parse(out["md"].read_text(encoding="utf-8"))
    kinds = {c.type for t in md for c in (t.children or [])} | {t.type for t in md}
    assert not kinds & {"image", "link_open", "html_inline", "html_block"}, kinds
    assert "\x1b" not in out["html"].read_text(encoding="utf-8")
    assert main(["audit", str(folder), "--quiet", "--no-max-probability", "--format", "text"]) == 1
    text = capsys.readouterr().out
    assert_no_controls(text, "\n\t")
    assert text.splitlines()[0].startswith(printable(str(folder)))
    assert main(["explain", str(folder), "251"]) == 1
    out = capsys.readouterr().out
    assert_no_controls(out)
    assert "'\\x1b[2J\\n::error::forged'" in out


def test_json_report_of_an_onnx_node_name_that_is_not_utf8(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="HEADNODEX")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], [weight])
    path = tmp_path / "head.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString().replace(b"HEADNODEX", b"HEAD\xff\x1bODE"))
    assert isinstance(onnx.load(str(path)).graph.node[0].name, bytes)  # protobuf hands it over undecoded
    assert main(["audit", str(path), "--quiet", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"]["head_node"] == "HEAD\\xff\\x1bODE"


def test_explain_json_survives_a_lone_surrogate(tmp_path, capsys):
    folder, _ = _hostile_checkpoint(tmp_path)
    rc = main(["explain", str(folder), "200", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 1 and data["token"]["token"] == "\ud800"


# -- class 8: the gate means one thing in every format -------------------------------------------------------------

def _policies(report):
    n_u = sum(t.verdict == UNARGMAXABLE for t in report.tokens)
    n_p = sum(t.verdict == PRACTICAL for t in report.tokens)
    inf = math.inf
    return [
        ({}, ()), ({PRACTICAL: inf}, ()), ({UNARGMAXABLE: inf, PRACTICAL: inf, UNDECIDED: inf}, ()),
        ({UNARGMAXABLE: n_u, UNDECIDED: inf}, ()), ({UNARGMAXABLE: n_u - 1, UNDECIDED: inf, PRACTICAL: inf}, ()),
        ({PRACTICAL: n_p - 1, UNARGMAXABLE: inf, UNDECIDED: inf}, ()),
        ({PRACTICAL: n_p - 1, UNARGMAXABLE: inf, UNDECIDED: inf}, ("3",)),  # one ignored: now within
        ({UNDECIDED: 0, UNARGMAXABLE: inf, PRACTICAL: inf}, ("re:^tok4$",)),
    ]


@pytest.mark.parametrize("case", range(9))
def test_every_format_renders_the_same_gate(case):
    report = synthetic_report([f"tok{i}" for i in range(30)], source="layer.npz")
    baseline = Baseline("base.json", {1: (UNARGMAXABLE, "tok1"), 3: (UNDECIDED, "tok3")}, 30) if case == 8 else None
    fail_on, ignore = _policies(report)[case] if case < 8 else ({}, ())
    gate = evaluate(report, GatePolicy(fail_on, ignore), baseline)
    failing = gate.failures()
    assert gate.passed == (not failing)
    assert all(gate.exceeded(v) for v in {t.verdict for t in report.tokens if t.id in failing})

    gh = FORMATS["github"](report, gate).splitlines()
    assert {int(line.split("::token ")[1].split()[0]) for line in gh if line.startswith("::error")} == failing
    suite = ET.fromstring(FORMATS["junit"](report, gate))
    assert int(suite.get("failures")) == len(failing)
    assert {int(c.get("name").split()[0]) for c in suite.iter("testcase") if c.find("failure") is not None} == failing
    assert int(suite.get("skipped")) == len(flagged_ids(report)) - len(failing)
    data = json.loads(FORMATS["json"](report, gate))["gate"]
    assert data["passed"] == gate.passed and data["failed"] == sorted(failing)
    text = FORMATS["text"](report, gate)
    assert ("gate: PASSED" in text) == gate.passed
    assert {int(r.split("\t")[0]) for r in text.splitlines() if "\t" in r and r.split("\t")[5] == "fails"} == failing
    md = FORMATS["markdown"](report, gate)
    assert ("**gate failed**" in md) != gate.passed
    assert {int(r.split(" | ")[0][2:]) for r in md.splitlines() if " | fails | " in r} == failing


@pytest.fixture(scope="module")
def averaged_checkpoint(tmp_path_factory):
    """data/tiny-gpt2 with row 7 overwritten by the float32 average of rows 3 and 4 (practically unreachable)."""
    from safetensors.numpy import load_file, save_file  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("ckpt") / "m"
    shutil.copytree(TINY, folder)
    tensors = load_file(folder / "model.safetensors")
    w = tensors["transformer.wte.weight"].copy()
    w[7] = ((w[3].astype(np.float64) + w[4]) / 2).astype(np.float32)
    tensors["transformer.wte.weight"] = w
    save_file(tensors, folder / "model.safetensors")
    return folder


# The tiny model's own flags (ties 250-255, rows 200-203) are ignored: row 7 is what the gate sees, plus the
# 9 unargmaxable ones where the ignores are left out.
@pytest.mark.parametrize(("flags", "expected_exit", "errors"), [
    (["--fail-on", "practically_unreachable=never"], 0, set()),
    (["--fail-on", "practically_unreachable=1"], 0, set()),
    (["--fail-on", "practically_unreachable=0"], 1, {7}),
    (["--fail-on", "unargmaxable=never", "--fail-on", "practically_unreachable=never", "--ignore", "203"], 0, set()),
])
def test_exit_code_github_junit_and_json_agree(averaged_checkpoint, tmp_path, capsys, flags, expected_exit, errors):
    ignores = [] if "unargmaxable=never" in flags else ["--ignore", "200-203", "--ignore", "250-255"]
    junit, report_json = tmp_path / "r.xml", tmp_path / "r.json"
    rc = main(["audit", str(averaged_checkpoint), "--quiet", "--no-max-probability", "--format", "github",
               "--junit", str(junit), "--json", str(report_json), *ignores, *flags])
    out = capsys.readouterr().out
    assert rc == expected_exit
    assert {int(line.split("::token ")[1].split()[0]) for line in out.splitlines() if line.startswith("::error")} \
        == errors
    assert int(ET.parse(junit).getroot().get("failures")) == len(errors)
    assert json.loads(report_json.read_text())["gate"]["failed"] == sorted(errors)


# -- class 10: assert_all_argmaxable names what failed -------------------------------------------------------------

def test_assert_all_argmaxable_names_the_failing_categories():
    report = synthetic_report([f"tok{i}" for i in range(12)], source="layer")
    only_undecided = ["1", "2", "3", "5", "7", "8", "9", "11"]  # leaves tokens 4 and 10: undecided
    with pytest.raises(AssertionError) as info:
        assert_all_argmaxable(report, ignore=only_undecided)
    first = str(info.value).splitlines()[0]
    assert first == "argmaxcheck: 2 undecided (no certificate could be checked)"
    with pytest.raises(AssertionError) as info:
        assert_all_argmaxable(report)
    first = str(info.value).splitlines()[0]
    assert "6 unargmaxable (can never be the argmax)" in first and "2 practically unreachable" in first
    assert "2 undecided" in first


# -- item 7 of issue 12: every human format says which domain was used and why ----------------------------------

@pytest.mark.parametrize(("checkpoint", "domain", "expected"), [
    (None, {"kind": "unbounded"}, "domain: unbounded: all of R^d (R^d: no final norm given)"),
    (None, {"kind": "box", "lower": -2.0, "upper": 2.0}, "domain: box -2 <= z_k <= 2 for every k (chosen with"),
    ({"domain": "LayerNorm output: |z| <= sqrt(3) in the 2-dim mean-zero subspace", "audited": "folded final norm",
      "norm_weight": "ln_f.weight"}, {"kind": "ball", "radius": 1.7, "center": 0.0},
     "domain: ball |z| <= 1.7 (LayerNorm output: |z| <= sqrt(3) in the 2-dim mean-zero subspace; final norm"
     " ln_f.weight folded into the head)"),
    ({"domain": "LayerNorm output", "audited": "raw head"}, {"kind": "box", "lower": 0.0, "upper": math.inf},
     "domain: box 0 <= z_k <= inf for every k (chosen with --domain; the head as stored"),
])
def test_every_human_format_says_which_domain_and_why(checkpoint, domain, expected):
    report = synthetic_report([f"tok{i}" for i in range(6)], source="layer", checkpoint=checkpoint)
    report.domain = domain
    gate = evaluate(report)
    buf = io.StringIO()
    print_terminal(report, gate, console=Console(file=buf, width=400, color_system=None))
    shown = {"terminal": buf.getvalue(), "text": FORMATS["text"](report, gate),
             "html": html.unescape(FORMATS["html"](report, gate)),
             "markdown": MarkdownIt("commonmark").render(FORMATS["markdown"](report, gate)),
             "github": FORMATS["github"](report, gate).replace("%3A", ":").replace("%2C", ",")}
    for name, out in shown.items():
        assert expected in html.unescape(out), (name, out[:2000])


def test_domain_of_a_real_checkpoint_in_the_text_report(capsys):
    assert main(["audit", str(TINY), "--quiet", "--no-max-probability", "--format", "text"]) == 1
    line = capsys.readouterr().out.splitlines()[1]
    assert line == ("domain: ball |z| <= 5.657 (LayerNorm output: |z| <= sqrt(32) in the 31-dim mean-zero subspace;"
                    " final norm transformer.ln_f.weight folded into the head)")
