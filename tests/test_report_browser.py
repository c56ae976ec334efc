"""The HTML report in a real browser (headless Chromium): every inlined figure decodes, every section is there.

The page carries a small inline self-check (pipelines/report/page.py SELF_CHECK) that records, on load,
which images failed and which section ids exist on <body>; Chromium's --dump-dom hands the page back
after a virtual time budget, so nothing here depends on a DevTools client library.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from pipelines import report
from test_report import NOW, _params, populate, write_predictions

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian package `chromium`; .ci/setup installs it)")

# No network, no profile state, no background services: the page must render from itself alone.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]
SECTIONS = ["contents", "data-used", "part-1-1", "more-epochs", "cheaper-network", "part-1-2", "alexnet-overfitting",
            "part-1-3", "tl-comparison", "tl-noise", "tl-separability", "tl-tl-scratch", "tl-tl-svm", "tl-tl-finetune",
            "tl-tl-finetune-aug", "curve-diagnosis", "other-variants"]


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=180)


def _dom(page: Path, tmp: Path) -> subprocess.CompletedProcess:
    """The page's DOM as Chromium built it, once loaded and its script run (stdout)."""
    return _chromium(page, tmp / "profile-dom", "--virtual-time-budget=3000", "--dump-dom")


def _self_check(page: Path, tmp: Path) -> dict:
    """What the page's own script found once loaded: {"images", "broken", "sections", "ok"}."""
    out = _dom(page, tmp)
    body = re.search(r"<body([^>]*)>", out.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}
    assert "data-self-check" in attrs, (f"the self-check did not run (rc {out.returncode}); "
                                        f"stderr: {out.stderr[-1500:]}")
    result = json.loads(html.unescape(attrs["data-self-check"]))
    result["ok"] = attrs.get("data-images-ok")
    return result


def _written(tmp_path: Path, predictions: bool = False) -> Path:
    out = tmp_path / "reports"
    root = populate(tmp_path / "root")
    if predictions:   # the transfer options' per-image test predictions: the summary lists their verdicts
        write_predictions(root)
    report.write(report.build(_params(), root, now=NOW), out)
    return out / "report.html"


def test_report_renders_every_figure_and_section(tmp_path):
    page = _written(tmp_path)
    check = _self_check(page, tmp_path)
    n_imgs = page.read_text().count('src="data:image/png;base64,')
    assert check["ok"] == "yes" and check["broken"] == [] and check["images"] == n_imgs > 20
    missing = [s for s in SECTIONS if s not in check["sections"]]
    assert not missing, f"sections absent from the rendered page: {missing}"

    # A picture of the page for a person to look at: kept as a CI artifact, else in the test's tmp.
    shot = (REPO / "reports-ci" if os.environ.get("CI") else tmp_path) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    out = _chromium(page, tmp_path / "profile-shot", "--virtual-time-budget=3000", f"--screenshot={shot}",
                    "--window-size=1280,4000")
    assert shot.is_file(), f"no screenshot (rc {out.returncode}): {out.stderr[-1500:]}"
    with Image.open(shot) as im:
        assert im.size == (1280, 4000)
        # Not a blank page: a rendered report has text, tables and figures in many colours.
        assert len(im.convert("RGB").resize((128, 400)).getcolors(128 * 400) or ()) > 50


def test_a_corrupt_figure_fails_the_check(tmp_path):
    page = _written(tmp_path)
    text = page.read_text()
    start = text.index('src="data:image/png;base64,') + len('src="data:image/png;base64,')
    end = text.index('"', start)
    # Valid base64, not a PNG: the browser gets bytes it cannot decode, as from a damaged file.
    page.write_text(text[:start] + "bm90IGEgcG5nIGF0IGFsbA==" + text[end:])
    alt = re.findall(r'<img alt="([^"]*)"', text)[0]
    check = _self_check(page, tmp_path)
    assert check["ok"] == "no" and check["broken"] == [html.unescape(alt)]
    assert check["images"] == text.count('src="data:image/png;base64,')


class _Blocks(HTMLParser):
    """The top-level blocks of one section of the DOM: (tag, its text, its <li> texts)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[tuple[str, str, list[str]]] = []
        self.depth = 0
        self.li: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if self.depth == 0:
            self.blocks.append((tag, "", []))
        if tag == "li":
            self.li = []
        self.depth += tag not in ("br", "img", "hr", "input", "meta")

    def handle_endtag(self, tag):
        if tag == "li" and self.li is not None:
            self.blocks[-1][2].append("".join(self.li).strip())
            self.li = None
        self.depth -= 1

    def handle_data(self, data):
        if self.blocks and self.depth > 0:
            tag, text, items = self.blocks[-1]
            self.blocks[-1] = (tag, text + data, items)
            if self.li is not None:
                self.li.append(data)


def test_summary_lists_render_as_lists(tmp_path):
    # The summary's lists follow a bold lead-in line; without the blank line Markdown needs they
    # render as one paragraph of items run together by " - ". Read the DOM the browser built.
    dom = _dom(_written(tmp_path, predictions=True), tmp_path).stdout
    start = dom.index('<h2 id="summary">')
    section = dom[dom.index("</h2>", start) + len("</h2>"):dom.index("<h2", start + 1)]
    parser = _Blocks()
    parser.feed(section)
    blocks = [(tag, " ".join(text.split()), items) for tag, text, items in parser.blocks]
    leads = {"Data that ran:": 3, "Transfer-learning verdicts": 6}   # three datasets; six pairs of four options
    for lead, n in leads.items():
        at = next(i for i, (tag, text, _) in enumerate(blocks) if tag == "p" and text.startswith(lead))
        tag, _, items = blocks[at + 1]
        assert tag == "ul" and len(items) == n, f"{lead!r} is followed by {tag} with {len(items)} items, not a list of {n}"
        assert all(item and not item.startswith("- ") for item in items)
    assert not [text for tag, text, _ in blocks if tag == "p" and " - `" in text], "a list rendered as a paragraph"
