"""The HTML report in a real headless browser: offline, no console errors, plots rendered."""

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
# .ci/run installs Debian's chromium and sets this, so CI fails rather than skips without a browser.
if BROWSER is None and os.environ.get("ARGMAXCHECK_REQUIRE_BROWSER"):
    raise RuntimeError("ARGMAXCHECK_REQUIRE_BROWSER is set but no chromium is installed")
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no headless chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    out = tmp_path_factory.mktemp("html") / "report.html"
    proc = subprocess.run([sys.executable, "-m", "argmaxcheck", "audit", str(ROOT / "data" / "tiny-gpt2"),
                           "--quiet", "--format", "text", "--html", str(out)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1, proc.stderr
    return out


def test_html_is_self_contained(report_html):
    text = report_html.read_text(encoding="utf-8")
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?(https?:)?//", text), "fetches from a network"
    assert "&#x27;&lt;unused_0&gt;&#x27;" in text  # token strings are escaped, not markup
    assert "domain: ball |z| &lt;= 5.657 (LayerNorm output: |z| &lt;= sqrt(32)" in text  # which domain, and why
    assert "<td class=\"muted\">gate</td><td>fails</td>" in text  # each card says what the gate made of it
    assert text.count('class="card"') == 10  # 9 unargmaxable + 1 practically unreachable


def _chromium(*flags, url):
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any network fetch fails
                           "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
                           "--window-size=1200,2400", *flags, url],
                          capture_output=True, text=True, timeout=180, check=False)


def _png_pixels(path: Path) -> bytes:
    """The decompressed (filtered) scanlines of a PNG: enough to tell a blank page from a drawn one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8:pos + 8 + length])
        pos += 12 + length
    return zlib.decompress(b"".join(chunks))


@needs_browser
def test_html_renders_in_headless_chromium_without_console_errors(report_html, tmp_path):
    url = report_html.resolve().as_uri()
    shot = tmp_path / "shot.png"
    proc = _chromium(f"--screenshot={shot}", url=url)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, "\n".join(console)
    pixels = _png_pixels(shot)
    assert len(set(pixels)) > 50, "the page rendered blank"
    dom = _chromium("--dump-dom", url=url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('class="main-svg"') >= 3 * 2, "plotly did not draw the three plots"
    assert "tok200" in dom.stdout


def test_the_console_check_catches_errors(tmp_path):
    """The check above must be able to fail: a page with a script error shows up in the log."""
    if BROWSER is None:
        pytest.skip("no headless chromium")
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>notDefined();</script></body></html>")
    proc = _chromium(f"--screenshot={tmp_path / 'b.png'}", url=page.resolve().as_uri())
    assert any(":CONSOLE" in line and "notDefined" in line for line in proc.stderr.splitlines())
