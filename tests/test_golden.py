"""The report built from a fixed tiny workspace is byte-identical to the one committed in
tests/golden/ (markdown and HTML, at a fixed generation time). It guards refactoring: moving code
must not change a single character the reader sees. tests/golden_files.py rebuilds the workspace."""
from __future__ import annotations

import shutil
from pathlib import Path

from golden_files import GOLDEN, NOW, WORKSPACE
from pipelines import config, report


def build_report(workspace: Path, out: Path) -> tuple[str, str]:
    """The report of `workspace`, written by the report stage's own writer into `out`."""
    params = config.load(workspace / "params.yaml")
    rep = report.build(params, workspace, now=NOW)
    report.write(rep, out)
    return (out / "report.md").read_text(), (out / "report.html").read_text()


def test_report_is_byte_identical_to_golden(tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(WORKSPACE, ws)
    md, page = build_report(ws, tmp_path / "out")
    assert "Code version: unknown" in md, "the workspace must not sit inside a git checkout"
    golden_md = (GOLDEN / "report.md").read_text()
    if md != golden_md:
        import difflib
        diff = "".join(list(difflib.unified_diff(golden_md.splitlines(True), md.splitlines(True),
                                                 "golden/report.md", "built"))[:80])
        raise AssertionError(f"report.md differs from the golden one:\n{diff}")
    assert page == (GOLDEN / "report.html").read_text(), "report.html differs from the golden one"


def test_golden_report_has_every_part():
    # The golden report is a real one: every part of the lab has numbers, not "not run".
    md = (GOLDEN / "report.md").read_text()
    for part in ("Part 1.1", "Part 1.2", "Part 1.3", "Where the time went"):
        assert part in md
    assert "not run" not in md
    assert md.count("data:image") == 0 and (GOLDEN / "report.html").read_text().count("data:image/png") >= 20
