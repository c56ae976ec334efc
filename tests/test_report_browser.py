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
from pathlib import Path

import pytest
from PIL import Image

from pipelines import report
from test_report import NOW, _params, populate

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


def _self_check(page: Path, tmp: Path) -> dict:
    """What the page's own script found once loaded: {"images", "broken", "sections", "ok"}."""
    out = _chromium(page, tmp / "profile-dom", "--virtual-time-budget=3000", "--dump-dom")
    body = re.search(r"<body([^>]*)>", out.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(1))) if body else {}
    assert "data-self-check" in attrs, (f"the self-check did not run (rc {out.returncode}); "
                                        f"stderr: {out.stderr[-1500:]}")
    result = json.loads(html.unescape(attrs["data-self-check"]))
    result["ok"] = attrs.get("data-images-ok")
    return result


def _written(tmp_path: Path) -> Path:
    out = tmp_path / "reports"
    report.write(report.build(_params(), populate(tmp_path / "root"), now=NOW), out)
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
