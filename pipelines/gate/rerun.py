"""`dvc repro` of the stale stages: here on the params as they are (full profile), or in a temporary
clone on pipelines/profiles.py's tiny profile, after the base itself where its committed metrics are
full-size."""
from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from pipelines import profiles
from pipelines.gate.repo import commit, env, git, path_hits, read_dag


@dataclass
class Outcome:
    ran: list[str]
    compare_rev: str
    cwd: Path
    baseline: str
    failed: Optional[str] = None


def _write_tiny(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(profiles.tiny(copy.deepcopy(raw)), sort_keys=False))


def repro(stages: list[str], cwd: Path) -> int:
    print(f"$ dvc repro {' '.join(stages)}   (in {cwd})", file=sys.stderr, flush=True)
    # The stages' own output goes to stderr: stdout carries only the summary.
    return subprocess.call(["dvc", "repro", *stages], cwd=cwd, env=env(), stdout=sys.stderr, stderr=sys.stderr)


def here(stages: list[str], root: Path, base_sha: str) -> Outcome:
    """The full profile: the stages rerun in this working tree, judged against the base's metrics."""
    rc = repro(stages, root)
    return Outcome(stages, base_sha, root, "the base's committed metrics",
                   failed=None if rc == 0 else "`dvc repro` failed")


def _overlay_worktree(src: Path, dst: Path, outs: list[str]) -> None:
    """Make dst's files those of src's working tree (uncommitted edits included, outputs not)."""
    def is_out(f: str) -> bool:
        return any(path_hits(f, o) for o in outs)

    for f in git(["ls-files", "-co", "--exclude-standard"], src).split("\n"):
        if f and not is_out(f) and (src / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    for f in git(["ls-files", "-d"], src).split("\n"):
        if f and (dst / f).is_file():
            (dst / f).unlink()


def _tiny_baseline(clone: Path, base_sha: str, base_raw: dict, stages: list[str]) -> Optional[str]:
    """Reproduce the base on the tiny profile in clone and commit it there: the commit to compare
    with, or None when the base does not reproduce."""
    git(["checkout", "-q", "--detach", base_sha], clone)
    _write_tiny(clone / "params.yaml", base_raw)
    in_base = [s for s in stages if s in read_dag(clone)]
    if in_base and repro(in_base, clone) != 0:
        return None
    git(["add", "-f", "-A", "params.yaml", "dvc.lock"] + (["metrics"] if (clone / "metrics").exists() else []),
        clone)
    commit(clone, "check-params: tiny-profile baseline")
    return git(["rev-parse", "HEAD"], clone).strip()


def tiny(root: Path, base_sha: str, head_sha: str, base_raw: dict, stages: list[str],
         outs: list[str], work: Path) -> Outcome:
    """The tiny profile, in a clone under work: the base first where its committed metrics are
    full-size, then the head's working tree."""
    clone = work / "repo"
    # --shared borrows the objects: no copy of the history, nothing written to this repository.
    git(["clone", "-q", "--shared", "--no-checkout", str(root), str(clone)], root)
    compare, baseline = base_sha, "the base's committed metrics (the base is on the tiny profile)"
    try:
        tiny_base = profiles.tiny(copy.deepcopy(base_raw))
    except (KeyError, TypeError, AttributeError) as e:
        # The tiny profile follows today's params.yaml; an older base may lack a section it shrinks.
        return Outcome([], compare, clone, baseline,
                       failed=f"the tiny profile cannot shrink the base's params.yaml ({type(e).__name__}: {e})")
    if tiny_base != base_raw:
        baseline = "the base reproduced on the tiny profile here (its committed metrics are full-size)"
        compare = _tiny_baseline(clone, base_sha, base_raw, stages)
        if compare is None:
            return Outcome([], base_sha, clone, baseline, failed="the base does not reproduce on the tiny profile")
    git(["checkout", "-q", "-f", "--detach", head_sha], clone)
    _overlay_worktree(root, clone, outs)
    _write_tiny(clone / "params.yaml", yaml.safe_load((root / "params.yaml").read_text()))
    # The stale stages were found in the full-size DAG; the tiny one fans out over fewer
    # replicates, and `dvc repro` refuses a stage that does not exist.
    tiny_dag = read_dag(clone)
    stages = [s for s in stages if s in tiny_dag]
    if repro(stages, clone) != 0:
        return Outcome(stages, compare, clone, baseline, failed="`dvc repro` failed on the tiny profile")
    return Outcome(stages, compare, clone, baseline)
