"""The documentation: the tables of docs/*.md that come from results files equal what
pipelines/cli/docs.py makes of those files (`make docs`), and every relative link in README.md and
docs/*.md leads to a file that exists."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import markdown
import pytest

from pipelines.cli import docs
from pipelines.errors import DataError

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_committed_pages_equal_the_generated_ones():
    for page, text in docs.render(REPO).items():
        assert (REPO / page).read_text() == text, f"{page} is stale: run `make docs` (python -m pipelines.cli.docs)"


def _copy(tmp: Path) -> Path:
    """The files the generator reads, in a repository of their own."""
    for rel in ["docs", "benchmarks", "tests/golden/workspace"]:
        shutil.copytree(REPO / rel, tmp / rel, ignore=shutil.ignore_patterns("*.py", "*.png", "__pycache__"))
    shutil.copy(REPO / "tests/golden/metrics.json", tmp / "tests/golden/metrics.json")
    return tmp


def _edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def _block(text: str, name: str) -> str:
    return text.split(docs.BEGIN.format(name))[1].split(docs.END.format(name))[0]


def test_tables_follow_their_results_files_and_nothing_else_changes(tmp_path):
    root = _copy(tmp_path)
    before = (root / "docs/speed.md").read_text()
    _edit_json(root / docs.BENCH_AVX2, lambda r: r["models"]["alexnet"]["ours"].update(train_img_per_s=12345.4))
    runs = json.loads((root / docs.PRECISION[0]).read_text())["variants"]["mnist_cnn"]["runs"]

    def slower_bf16(res):   # bf16 twice as slow on the seeds the speed-up is taken over
        for r in res["variants"]["mnist_cnn"]["runs"]:
            if r["precision"] == "bf16" and r["seed"] in docs.SPEEDUP_SEEDS:
                r["train_seconds"] *= 2

    _edit_json(root / docs.PRECISION[0], slower_bf16)
    run = [sys.executable, "-m", "pipelines.cli.docs", "--root", str(root)]
    stale = subprocess.run([*run, "--check"], cwd=REPO, capture_output=True, text=True)
    assert stale.returncode == 1 and "docs/speed.md is stale" in stale.stdout
    assert (root / "docs/speed.md").read_text() == before, "--check wrote a page"
    subprocess.run(run, cwd=REPO, check=True, capture_output=True)
    after = (root / "docs/speed.md").read_text()
    assert "| AlexNet | ours | 12,345 |" in _block(after, "paths-memory")
    old = sum(r["train_seconds"] for r in runs if r["precision"] == "fp32" and r["seed"] in docs.SPEEDUP_SEEDS) / sum(
        r["train_seconds"] for r in runs if r["precision"] == "bf16" and r["seed"] in docs.SPEEDUP_SEEDS)
    row = next(line for line in _block(after, "precision").splitlines() if line.startswith("| `mnist_cnn`"))
    assert f"| {old / 2:.2f}x |" in row and f"| {old:.2f}x |" not in row
    # Outside the generated blocks, the hand-written text is untouched.
    for name in docs.BLOCKS["docs/speed.md"]:
        before = before.replace(_block(before, name), "")
        after = after.replace(_block(after, name), "")
    assert before == after
    assert subprocess.run([*run, "--check"], cwd=REPO, capture_output=True).returncode == 0


def test_the_tiny_run_table_reads_the_golden_workspace(tmp_path):
    root = _copy(tmp_path)
    train = root / docs.GOLDEN / "metrics/tl_svm/train.json"
    _edit_json(train, lambda m: m.update(best_val_acc=12.5, best_epoch=1))
    table = docs.tiny_run(root)
    row = next(line for line in table.splitlines() if line.startswith("| `tl_svm`"))
    assert "| 12.50 % (1) |" in row and "| 2 (50 %) |" in row
    assert "`tl_svm`" in table.splitlines()[-1], "a variant under chance is named below the table"


@pytest.mark.parametrize("text, found", [("no markers here\n", 0), (
    f"{docs.BEGIN.format('t')}\nx\n{docs.END.format('t')}\n{docs.BEGIN.format('t')}\ny\n{docs.END.format('t')}\n", 2)])
def test_a_page_without_exactly_one_block_is_refused(text, found):
    with pytest.raises(DataError, match=f"docs/x.md: generated block 't' found {found} times"):
        docs.fill(text, {"t": "table"}, "docs/x.md")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.targets += [a[k] for k in ("href", "src") if a.get(k)]


def _relative_links(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(markdown.markdown(page.read_text(), extensions=["tables", "fenced_code"]))
    return [t for t in parser.targets if not urlparse(t).scheme and not t.startswith(("#", "//"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_leads_to_a_file(page):
    links = _relative_links(page)
    missing = [t for t in links if not (page.parent / unquote(t.split("#")[0])).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_the_link_check_sees_links_and_ignores_code(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("[a](a.md) ![b](img/b.png) [web](https://example.org) [here](#top)\n\n"
                    "`[c](c.md)`\n\n```\n[d](d.md)\n```\n")
    assert _relative_links(page) == ["a.md", "img/b.png"]
