"""dvc.yaml's code deps are current: every stage lists exactly the project modules its command
imports, transitively (pipelines/cli/deps.py computes that closure and writes the lists: `make deps`).
A module left out would let DVC serve a stale result as up to date; one listed but never imported
would rerun stages for nothing."""
from __future__ import annotations

import textwrap
from pathlib import Path

from pipelines.cli import deps

REPO = Path(__file__).resolve().parents[1]


def test_dvc_yaml_code_deps_are_current():
    text = (REPO / "dvc.yaml").read_text()
    problems = deps.mismatches(text)
    assert not problems and deps.render(text) == text, (
        "dvc.yaml's code deps are not current: run `make deps` (python -m pipelines.cli.deps)\n"
        + "\n".join(problems))


def test_train_and_replicate_run_the_same_code_with_the_same_deps():
    entries = deps.stage_entries((REPO / "dvc.yaml").read_text())
    assert entries["train"] == entries["replicate"] == "stages.train"


def _tiny_repo(root: Path) -> None:
    (root / "stages").mkdir(parents=True)
    (root / "pipelines" / "sub").mkdir(parents=True)
    (root / "stages" / "go.py").write_text("from pipelines import a\n")
    (root / "pipelines" / "__init__.py").write_text('"""docstring only: runs nothing"""\n')
    (root / "pipelines" / "a.py").write_text("import os\n\ndef f():\n    from pipelines.sub import b  # lazy\n")
    (root / "pipelines" / "sub" / "__init__.py").write_text("X = 1\n")
    (root / "pipelines" / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipelines import c\nCODE = 'shipped.py'\n")
    (root / "pipelines" / "sub" / "shipped.py").write_text("import json\n")
    (root / "pipelines" / "c.py").write_text("")
    (root / "pipelines" / "stale.py").write_text("")
    (root / "pipelines" / "plug").mkdir()
    (root / "pipelines" / "plug" / "__init__.py").write_text("")
    for name in ("one", "two"):   # imported by name, as pipelines/models.py imports the networks
        (root / "pipelines" / "plug" / f"{name}.py").write_text("")
    (root / "stages" / "load.py").write_text("import importlib\nPLUGS = 'pipelines.plug.*'\n")


def test_the_closure_follows_lazy_imports_packages_and_files_or_modules_used_by_name_not_type_checking(tmp_path):
    _tiny_repo(tmp_path)
    closure = deps.import_closure("stages.go", tmp_path)
    assert set(closure) == {"stages/go.py", "pipelines/a.py", "pipelines/sub/__init__.py", "pipelines/sub/b.py",
                            "pipelines/sub/shipped.py"}
    assert closure["pipelines/sub/b.py"] == "pipelines.a"
    assert set(deps.import_closure("stages.load", tmp_path)) == {"stages/load.py", "pipelines/plug/one.py",
                                                                 "pipelines/plug/two.py"}


def test_render_rewrites_only_the_code_dep_lines(tmp_path):
    _tiny_repo(tmp_path)
    text = textwrap.dedent("""\
        # a comment that stays
        stages:
          go:
            foreach: ${things}
            do:
              cmd: python -m stages.go --x ${key}
              deps:
                - stages/go.py
                - pipelines/stale.py   # listed, never imported
                - data/${key}   # data stays
              outs:
                - out/${key}
        plots:
          - pipelines/stale.py
        """)
    new = deps.render(text, tmp_path)
    assert new.splitlines() == text.replace(
        "        - pipelines/stale.py   # listed, never imported\n",
        "".join(f"        - {p}\n" for p in ("pipelines/a.py", "pipelines/sub/__init__.py", "pipelines/sub/b.py",
                                              "pipelines/sub/shipped.py"))).splitlines()
    assert deps.render(new, tmp_path) == new and not deps.mismatches(new, tmp_path)
    assert deps.mismatches(text, tmp_path) == [
        "stage 'go': add pipelines/a.py (imported by stages.go); add pipelines/sub/__init__.py (imported by "
        "pipelines.sub.b); add pipelines/sub/b.py (imported by pipelines.a); add pipelines/sub/shipped.py "
        "(imported by pipelines.sub.b); remove pipelines/stale.py (not imported by stages.go, transitively)"]
