"""Git and DVC queries of the gate: the DAG as dvc.yaml declares it, what changed against the base,
and the stages those changes make stale."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from pipelines.errors import CheckError

CLAIM_TAG = "[reproduced]"
PARAMS_FILES = ("params.yaml", "reference.yaml")   # their changes come from `dvc params diff`, by key


def env() -> dict:
    # GIT_OPTIONAL_LOCKS=0: our `git status`/`diff` must not take the index lock of a repository
    # someone is committing to.
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_OPTIONAL_LOCKS": "0"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise CheckError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or ''}")
    return r.stdout


def git(args: list[str], cwd: Path, check: bool = True) -> str:
    return run(["git", *args], cwd, check)


def commit(cwd: Path, message: str) -> None:
    git(["-c", "user.email=check-params@localhost", "-c", "user.name=check-params",
         "commit", "-q", "--no-verify", "--allow-empty", "-m", message], cwd)


# ------------------------------------------------------------------------------ the DAG
@dataclass
class Stage:
    name: str
    params: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    outs: list[str] = field(default_factory=list)
    downstream: set[str] = field(default_factory=set)


def read_dag(root: Path) -> dict[str, Stage]:
    """Every stage of dvc.yaml (foreach expanded) with its declared params, deps and outputs."""
    import networkx as nx
    from dvc.repo import Repo

    stages: dict[str, Stage] = {}
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        for s in repo.index.stages:
            # The stage's own name: `addressing` prefixes the dvc.yaml path when the repository is
            # not the working directory (the temporary clone), and then no name would match.
            st = Stage(s.name)
            for d in s.deps:
                if hasattr(d, "params"):
                    st.params += list(d.params)
                else:
                    st.files.append(d.def_path)
            for o in s.outs:
                st.outs.append(o.def_path)
                if o.metric:
                    st.metrics.append(o.def_path)
            st.downstream = {a.name for a in nx.ancestors(graph, s)}
            stages[st.name] = st
    return stages


def _key_hits(changed: str, declared: str) -> bool:
    return changed == declared or changed.startswith(declared + ".") or declared.startswith(changed + ".")


def path_hits(changed: str, dep: str) -> bool:
    return changed == dep or changed.startswith(dep.rstrip("/") + "/")


def stale_stages(stages: dict[str, Stage], changed_keys: list[str], changed_files: list[str],
                 gated: Optional[set[str]] = None) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """({stage: why}, {reason: stages left out}) for the given changes.

    Without `gated` (metrics files): every stage a change hits, and the stages downstream of those
    that write metrics. With it, what the gated metrics need: the stages that write them and their
    upstream, where a change hits them or what they depend on; a stage no gated metric needs runs
    only when a change hits it and no needed stage (a change of its own, not a shared key like `seed`)."""
    hits: dict[str, list[str]] = {}
    for st in stages.values():
        keys = [k for k in changed_keys if any(_key_hits(k, p) for p in st.params)]
        files = [f for f in changed_files if any(path_hits(f, d) for d in st.files)]
        if keys or files:
            hits[st.name] = keys + files
    needed = set(stages) if gated is None else {
        u for s in stages.values() if set(s.metrics) & gated
        for u in [s.name, *(n for n, o in stages.items() if s.name in o.downstream)]}
    shared = {c for name in hits if name in needed for c in hits[name]}
    why = {s: r for s, r in hits.items() if s in needed or not set(r) & shared}
    left_out: dict[str, set[str]] = {"write no metrics": set(), "no gated metric reads them": set()}
    for name in set(hits) - set(why):
        left_out["no gated metric reads them" if stages[name].metrics else "write no metrics"].add(name)
    for name in list(why):
        for down in stages[name].downstream:
            if down in why:
                continue
            if not stages[down].metrics:
                left_out["write no metrics"].add(down)
            elif down in needed:
                why[down] = [f"downstream of {name}"]
            else:
                left_out["no gated metric reads them"].add(down)
    return why, {k: sorted(v - set(why)) for k, v in left_out.items()}


# ------------------------------------------------------------------------- dvc queries
def params_diff(base: str, cwd: Path) -> dict[str, dict]:
    out = json.loads(run(["dvc", "params", "diff", base, "--json"], cwd) or "{}")
    return {k: v for per_file in out.values() for k, v in per_file.items()}


def changed_files(base: str, cwd: Path) -> list[str]:
    tracked = git(["diff", "--name-only", base, "--"], cwd).split("\n")
    untracked = git(["ls-files", "-o", "--exclude-standard"], cwd).split("\n")
    return sorted({f for f in tracked + untracked if f and f not in PARAMS_FILES})


def stale_lock(cwd: Path) -> dict[str, list[str]]:
    """Stages whose dvc.lock records other params than params.yaml and reference.yaml hold."""
    out = json.loads(run(["dvc", "status", "--json"], cwd) or "{}")
    stale = {}
    for stage, entries in out.items():
        for e in entries if isinstance(entries, list) else []:
            deps = e.get("changed deps", {}) if isinstance(e, dict) else {}
            for path, what in deps.items():
                # A mapping lists changed keys; "new" only means the stage never ran (not in the lock).
                if isinstance(what, dict):
                    stale.setdefault(stage, []).extend(f"{k} ({v})" for k, v in what.items())
    return stale


def metrics_diff(rev: str, cwd: Path) -> dict[str, dict]:
    out = json.loads(run(["dvc", "metrics", "diff", rev, "--all", "--json"], cwd) or "{}")
    return {f"{path}:{key}": v for path, per in out.items() for key, v in per.items()}


def claims_reproduced(cwd: Path) -> Optional[str]:
    if os.environ.get("CLAIMS_REPRODUCED") == "1":
        return "CLAIMS_REPRODUCED=1"
    # On a pull request CI checks out GitHub's merge commit: the branch tip is its second parent.
    msg = git(["log", "-1", "--format=%B", "HEAD"], cwd, check=False)
    if git(["rev-parse", "-q", "--verify", "HEAD^2"], cwd, check=False).strip():
        msg += git(["log", "-1", "--format=%B", "HEAD^2"], cwd, check=False)
    return f"{CLAIM_TAG} in the head commit message" if CLAIM_TAG in msg.lower() else None
