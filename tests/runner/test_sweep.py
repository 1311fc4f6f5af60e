"""argmaxcheck sweep: one audit per source, one comparison table in four formats, failures as rows."""

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from argmaxcheck import audit
from argmaxcheck.cli import main
from argmaxcheck.runner import expand_sources

ROOT = Path(__file__).resolve().parents[2]
TINY_GPT2 = ROOT / "data" / "tiny-gpt2"
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)


@pytest.fixture
def sources(tmp_path, rng):
    weight = rng.normal(size=(40, 4))
    weight[10:15] = rng.dirichlet(np.ones(3), size=5) @ weight[:3]  # 5 averages: unargmaxable
    np.savez(tmp_path / "averages.npz", weight=weight)
    np.savez(tmp_path / "=simplex|x.npz", weight=np.vstack([np.eye(4), -np.ones((1, 4))]))  # all argmaxable
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    listing = tmp_path / "more.txt"
    listing.write_text("# the rest\n\n=simplex|x.npz\nbroken.npz\n")
    return tmp_path


def _rows(out: Path) -> list[dict]:
    return json.loads((out / "sweep.json").read_text())["rows"]


def test_sweep_writes_one_table_with_failures_as_rows(sources, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["sweep", str(TINY_GPT2), str(sources / "averages.npz"), f"@{sources / 'more.txt'}",
                 "--output", str(out), "--no-max-probability"])
    assert code == 2  # one source could not be loaded: 2 wins over the gates' 1
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 4 and "[4/4] broken.npz: error:" in captured.err
    rows = _rows(out)
    assert [r["model"] for r in rows] == ["tiny-gpt2", "averages.npz", "=simplex|x.npz", "broken.npz"]
    tiny, averages, simplex, broken = rows
    assert (tiny["num_classes"], tiny["dim"], tiny["unargmaxable"], tiny["practically_unreachable"]) == \
        (256, 31, 9, 1)
    assert tiny["domain"].startswith("ball r=5.657") and tiny["status"] == "failed"
    direct = audit(np.load(sources / "averages.npz")["weight"]).summary()
    assert direct["unargmaxable"] >= 5
    assert (averages["unargmaxable"], averages["argmaxable"], averages["domain"]) == \
        (direct["unargmaxable"], direct["argmaxable"], "unbounded")
    assert simplex["status"] == "passed" and simplex["argmaxable"] == 5
    assert broken["status"] == "error" and broken["unargmaxable"] is None and "broken.npz" in broken["error"]
    assert "\n" not in broken["error"]

    # Per-model reports beside the table: the audit's own JSON report, gate included.
    tiny_report = json.loads((out / tiny["report"]).read_text())
    assert tiny_report["summary"]["unargmaxable"] == 9 and tiny_report["gate"]["passed"] is False
    assert tiny_report["checkpoint"]["audited"] == "folded final norm"
    assert len(list((out / "models").iterdir())) == 3

    md = (out / "sweep.md").read_text()
    # stdout (not a terminal here) shows plain columns: Markdown, with its escapes, only goes to sweep.md.
    screen = captured.out.splitlines()
    assert screen[0].split()[:2] == ["model", "vocabulary"] and "|" not in screen[0] and "\\" not in captured.out
    assert screen[1].startswith("tiny-gpt2 ") and " 256 x 31 " in screen[1] and screen[3].startswith("=simplex|x.npz ")
    assert captured.out.endswith("seconds are audit time.\n") and "\x1b" not in captured.out
    assert "| `tiny-gpt2` | 256 x 31 |" in md and "\\|x.npz" in md and "| error: " in md
    with open(out / "sweep.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["model"] for r in table][2] == "'=simplex|x.npz"  # a spreadsheet shows it, never evaluates it
    assert table[0]["error"] == "" and table[3]["domain"] == "" and table[3]["status"] == "error"
    assert table[1]["unargmaxable"] == str(direct["unargmaxable"]) and table[3]["unargmaxable"] == ""

    page = (out / "sweep.html").read_text()
    assert "Unreachable tokens per model" in page and len(page) > 1_000_000  # plotly's JavaScript, inlined
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", page)
    bars = re.findall(r'"name":"unargmaxable"[^}]*?"y":\[([^\]]*)\]', page)
    assert bars and [int(float(v)) for v in bars[0].split(",")] == [9, direct["unargmaxable"], 0]


def test_sweep_exit_codes_follow_the_gates(sources, tmp_path):
    simplex = str(sources / "=simplex|x.npz")
    assert main(["sweep", simplex, "--output", str(tmp_path / "a"), "--quiet"]) == 0
    assert main(["sweep", simplex, str(sources / "averages.npz"), "--output", str(tmp_path / "b"), "--quiet"]) == 1
    assert main(["sweep", simplex, str(sources / "averages.npz"), "--output", str(tmp_path / "c"), "--quiet",
                 "--fail-on", "unargmaxable=never"]) == 0


def test_sweep_resumes_per_source(sources, tmp_path):
    args = ["sweep", str(sources / "averages.npz"), str(sources / "=simplex|x.npz"), "--output",
            str(tmp_path / "out"), "--resume", str(tmp_path / "journal"), "--chunk-size", "8", "--quiet"]
    assert main(args) == 1
    first = _rows(tmp_path / "out")
    journals = sorted(p.name for p in (tmp_path / "journal").iterdir())
    assert len(journals) == 2 and journals[1].startswith("simplex_x.npz-")  # one sub-journal per source
    assert main(args) == 1
    again = _rows(tmp_path / "out")
    for row in again:
        report = json.loads((tmp_path / "out" / row["report"]).read_text())
        assert report["timings"]["chunks_from_journal"] == report["timings"]["chunks"] > 0
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in first]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in again]


def test_source_lists_and_bad_output(tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text("org/some-hub-id\n  # note\n")
    assert expand_sources([f"@{listing}", "x.npz"]) == ["org/some-hub-id", "x.npz"]
    assert main(["sweep", f"@{tmp_path / 'missing.txt'}", "--output", str(tmp_path / "o")]) == 2
    assert "cannot read the source list" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["sweep", "x.npz", "--output", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.skipif(BROWSER is None, reason="no headless chromium (apt-get install chromium)")
def test_sweep_page_draws_its_chart_offline(sources, tmp_path):
    out = tmp_path / "out"
    main(["sweep", str(sources / "averages.npz"), str(sources / "broken.npz"), "--output", str(out), "--quiet"])
    proc = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=15000", "--dump-dom", (out / "sweep.html").resolve().as_uri()],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert 'class="main-svg"' in proc.stdout and "averages.npz" in proc.stdout  # plotly drew the bars
    assert '<a href="models/averages.npz-' in proc.stdout and "<td>error: " in proc.stdout


EVIL = "m\x1b[2J\n::error::forged [bold]x[b] `a|b`_c\udcff.npz"


def test_sweep_shows_hostile_model_names_escaped_everywhere(tmp_path, capsys, monkeypatch):
    """Model names reached the [k/n] lines and sweep.html raw (an ESC, a newline starting ::error::)."""
    np.savez(tmp_path / EVIL, weight=np.vstack([np.eye(3), -np.ones((1, 3))]))  # \udcff: the byte 0xff
    out = tmp_path / "out"
    assert main(["sweep", str(tmp_path / EVIL), str(tmp_path / "missing\x1b]0;t\x07.npz"), "--output", str(out),
                 "--no-max-probability"]) == 2
    captured = capsys.readouterr()
    for text in (captured.err, captured.out):
        assert "\x1b" not in text and "\x07" not in text and "\udcff" not in text
        assert not [line for line in text.splitlines() if line.startswith("::")]
    assert captured.err.count("\n") == 2 and "[1/2] m\\x1b[2J\\n::error::forged" in captured.err
    assert "[bold]x[b]" in captured.out  # no markup in plain columns
    for name in ("sweep.md", "sweep.html", "sweep.csv"):
        text = (out / name).read_text(encoding="utf-8")
        assert "\x1b" not in text and "\x07" not in text and "\n::error::" not in text, name
    page = (out / "sweep.html").read_text(encoding="utf-8")
    assert "<td>m\\x1b[2J\\n::error::forged [bold]x[b] `a|b`_c\\udcff.npz</td>" in page
    rows = _rows(out)
    assert rows[0]["model"] == EVIL  # the JSON keeps the name as given (a lone surrogate as \udcff)
    report = json.loads((out / rows[0]["report"]).read_text(encoding="utf-8"))
    assert report["summary"]["source"] == str(tmp_path / EVIL)


def test_sweep_on_a_terminal_prints_a_rich_table_not_markdown(tmp_path, capsys, monkeypatch):
    np.savez(tmp_path / "ppocrv4_rec_head.npz", weight=np.vstack([np.eye(3), -np.ones((1, 3))]))
    np.savez(tmp_path / "[red]x[red].npz", weight=np.vstack([np.eye(3), -np.ones((1, 3))]))
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["sweep", str(tmp_path / "ppocrv4_rec_head.npz"), str(tmp_path / "[red]x[red].npz"),
                 "--output", str(tmp_path / "out"), "--quiet", "--no-max-probability"]) == 0
    shown = capsys.readouterr().out
    assert "ppocrv4_rec_head.npz" in shown and "ppocrv4\\_rec" not in shown and "| `" not in shown
    assert "[red]x[red].npz" in shown  # the name, not rich markup
    assert "argmaxcheck sweep" in shown and ("┃" in shown or "│" in shown)  # rich's box drawing
