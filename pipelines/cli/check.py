"""Judge a params change against a base revision: what CI runs on a pull request.

    python -m pipelines.check_params --base origin/main [--profile tiny|full] [--summary FILE]

1. params.yaml must validate (config.load); otherwise its one-line error, exit 2, nothing rerun.
2. The changed params: `dvc params diff <base>`.
3. The stages they make stale: every stage whose dvc.yaml `params:` names a changed key, or whose
   code deps differ from the base; plus the stages downstream of those that write metrics. Stages
   without metrics (the report) are left out: they cannot move a verdict, and in a clone without
   a DVC remote they would rebuild the whole DAG. `dvc status` is not used for this: a fresh clone
   reports every output missing, and the lock may already be up to date on the branch.
4. `dvc repro` of exactly those stages: `--profile tiny` (the default, CI's) in a temporary clone
   with the tiny profile of pipelines/profiles.py applied; `--profile full` here, on the params as they are.
5. A Markdown summary on stdout (also --summary FILE and $GITHUB_STEP_SUMMARY): params diff,
   accuracies against the base (`dvc metrics diff <base>`), a verdict line.

Verdict and exit status:
    0  OK: every metric of params.yaml `check.metrics` that was rerun is within
       `check.tolerance_pp` percentage points of the base (or better).
    1  FAIL: a checked metric dropped by more than the tolerance or went missing; a stage failed;
       or the branch claims to be reproduced while dvc.lock is stale for changed params.
    2  INVALID: params.yaml (or its `check:` section) does not validate; or bad arguments.

"Claims to be reproduced": CLAIMS_REPRODUCED=1 in the environment, or "[reproduced]" in the
head commit's message (for a merge commit, as CI checks out a pull request, also its second parent's). Such a branch must carry a dvc.lock that matches its params: `dvc status`
in the working tree may list no params change for any stage.

The baseline: with --profile full, the base's committed metrics. With --profile tiny, the same when
the base is itself committed on the tiny profile (its params.yaml is unchanged by the shrink);
otherwise the base is first reproduced on the tiny profile in the same temporary clone, because
full-size numbers say nothing about tiny ones. The gate's settings come from the base's `check:`
section when it has one, so a pull request cannot loosen its own gate.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from pipelines import config, profiles

CLAIM_TAG = "[reproduced]"


from pipelines.errors import CheckError  # noqa: E402  (re-exported)


def _env() -> dict:
    # GIT_OPTIONAL_LOCKS=0: our `git status`/`diff` must not take the index lock of a repository
    # someone is committing to.
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_OPTIONAL_LOCKS": "0"}


def _run(cmd: list[str], cwd: Path, check: bool = True) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise CheckError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): "
                         f"{(r.stderr or r.stdout).strip().splitlines()[-1:] or ''}")
    return r.stdout


def _git(args: list[str], cwd: Path, check: bool = True) -> str:
    return _run(["git", *args], cwd, check)


def _commit(cwd: Path, message: str) -> None:
    _git(["-c", "user.email=check-params@localhost", "-c", "user.name=check-params",
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


def _path_hits(changed: str, dep: str) -> bool:
    return changed == dep or changed.startswith(dep.rstrip("/") + "/")


def stale_stages(stages: dict[str, Stage], changed_keys: list[str], changed_files: list[str]
                 ) -> tuple[dict[str, list[str]], list[str]]:
    """({stage: why}, downstream stages left out) for the given changes."""
    why: dict[str, list[str]] = {}
    for st in stages.values():
        keys = [k for k in changed_keys if any(_key_hits(k, p) for p in st.params)]
        files = [f for f in changed_files if any(_path_hits(f, d) for d in st.files)]
        if keys or files:
            why[st.name] = keys + files
    left_out: set[str] = set()
    for name in list(why):
        for down in stages[name].downstream:
            if down in why:
                continue
            if stages[down].metrics:
                why[down] = [f"downstream of {name}"]
            else:
                left_out.add(down)
    return why, sorted(left_out - set(why))


# ------------------------------------------------------------------------- dvc queries
def params_diff(base: str, cwd: Path) -> dict[str, dict]:
    out = json.loads(_run(["dvc", "params", "diff", base, "--json"], cwd) or "{}")
    return {k: v for per_file in out.values() for k, v in per_file.items()}


def changed_files(base: str, cwd: Path) -> list[str]:
    tracked = _git(["diff", "--name-only", base, "--"], cwd).split("\n")
    untracked = _git(["ls-files", "-o", "--exclude-standard"], cwd).split("\n")
    return sorted({f for f in tracked + untracked if f and f != "params.yaml"})


def stale_lock(cwd: Path) -> dict[str, list[str]]:
    """Stages whose dvc.lock records other params than params.yaml holds."""
    out = json.loads(_run(["dvc", "status", "--json"], cwd) or "{}")
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
    out = json.loads(_run(["dvc", "metrics", "diff", rev, "--all", "--json"], cwd) or "{}")
    return {f"{path}:{key}": v for path, per in out.items() for key, v in per.items()}


def claims_reproduced(cwd: Path) -> Optional[str]:
    if os.environ.get("CLAIMS_REPRODUCED") == "1":
        return "CLAIMS_REPRODUCED=1"
    # On a pull request CI checks out GitHub's merge commit: the branch tip is its second parent.
    msg = _git(["log", "-1", "--format=%B", "HEAD"], cwd, check=False)
    if _git(["rev-parse", "-q", "--verify", "HEAD^2"], cwd, check=False).strip():
        msg += _git(["log", "-1", "--format=%B", "HEAD^2"], cwd, check=False)
    return f"{CLAIM_TAG} in the head commit message" if CLAIM_TAG in msg.lower() else None


# --------------------------------------------------------------------------- profiles
def _write_tiny(path: Path, raw: dict) -> None:
    path.write_text(yaml.safe_dump(profiles.tiny(copy.deepcopy(raw)), sort_keys=False))


def repro(stages: list[str], cwd: Path) -> int:
    print(f"$ dvc repro {' '.join(stages)}   (in {cwd})", file=sys.stderr, flush=True)
    # The stages' own output goes to stderr: stdout carries only the summary.
    return subprocess.call(["dvc", "repro", *stages], cwd=cwd, env=_env(), stdout=sys.stderr, stderr=sys.stderr)


def _overlay_worktree(src: Path, dst: Path, outs: list[str]) -> None:
    """Make dst's files those of src's working tree (uncommitted edits included, outputs not)."""
    def is_out(f: str) -> bool:
        return any(_path_hits(f, o) for o in outs)

    for f in _git(["ls-files", "-co", "--exclude-standard"], src).split("\n"):
        if f and not is_out(f) and (src / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / f, dst / f)
    for f in _git(["ls-files", "-d"], src).split("\n"):
        if f and (dst / f).is_file():
            (dst / f).unlink()


@dataclass
class Outcome:
    ran: list[str]
    compare_rev: str
    cwd: Path
    baseline: str
    failed: Optional[str] = None


def run_tiny(root: Path, base_sha: str, head_sha: str, base_raw: dict, stages: list[str],
             outs: list[str], work: Path) -> Outcome:
    clone = work / "repo"
    # --shared borrows the objects: no copy of the history, nothing written to this repository.
    _git(["clone", "-q", "--shared", "--no-checkout", str(root), str(clone)], root)
    compare, baseline = base_sha, "the base's committed metrics (the base is on the tiny profile)"
    try:
        tiny_base = profiles.tiny(copy.deepcopy(base_raw))
    except (KeyError, TypeError, AttributeError) as e:
        # The tiny profile follows today's params.yaml; an older base may lack a section it shrinks.
        return Outcome([], compare, clone, baseline,
                       failed=f"the tiny profile cannot shrink the base's params.yaml ({type(e).__name__}: {e})")
    if tiny_base != base_raw:
        baseline = "the base reproduced on the tiny profile here (its committed metrics are full-size)"
        _git(["checkout", "-q", "--detach", base_sha], clone)
        _write_tiny(clone / "params.yaml", base_raw)
        in_base = [s for s in stages if s in read_dag(clone)]
        if in_base and repro(in_base, clone) != 0:
            return Outcome([], compare, clone, baseline, failed="the base does not reproduce on the tiny profile")
        _git(["add", "-f", "-A", "params.yaml", "dvc.lock"] + (["metrics"] if (clone / "metrics").exists() else []),
             clone)
        _commit(clone, "check-params: tiny-profile baseline")
        compare = _git(["rev-parse", "HEAD"], clone).strip()
    _git(["checkout", "-q", "-f", "--detach", head_sha], clone)
    _overlay_worktree(root, clone, outs)
    _write_tiny(clone / "params.yaml", yaml.safe_load((root / "params.yaml").read_text()))
    # The stale stages were found in the full-size DAG; the tiny one fans out over fewer
    # replicates, and `dvc repro` refuses a stage that does not exist.
    tiny_dag = read_dag(clone)
    stages = [s for s in stages if s in tiny_dag]
    if repro(stages, clone) != 0:
        return Outcome(stages, compare, clone, baseline, failed="`dvc repro` failed on the tiny profile")
    return Outcome(stages, compare, clone, baseline)


# ----------------------------------------------------------------------------- verdict
def _num(x) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _val(x) -> str:
    return "—" if x is None else json.dumps(x)


def _load_check(root: Path, base_sha: str, head: config.Params) -> tuple[Optional[config.Check], str]:
    try:
        base_raw = yaml.safe_load(_git(["show", f"{base_sha}:params.yaml"], root)) or {}
    except CheckError:
        base_raw = {}
    if isinstance(base_raw, dict) and base_raw.get("check") is not None:
        try:
            return config.Check.model_validate(base_raw["check"]), "the base's params.yaml"
        except Exception as e:  # a broken gate on the base must not silently pass everything
            raise config.ParamsError(f"base params.yaml: check: {str(e).splitlines()[-2].strip()}") from None
    return head.check, "params.yaml"


def judge(gate: Optional[config.Check], diff: dict[str, dict], rerun_metrics: set[str],
          declared_metrics: set[str]) -> tuple[list[tuple], list[str], list[str]]:
    """(rows, failures, notes) for the gated metrics."""
    rows, failures, notes = [], [], []
    if gate is None:
        notes.append("no `check:` section: no metric is gated")
        return rows, failures, notes
    for m in gate.metrics:
        path = m.split(":", 1)[0]
        if path not in declared_metrics:
            failures.append(f"{m}: no stage writes {path} (fix params.yaml check.metrics)")
            continue
        if path not in rerun_metrics:
            continue
        d = diff.get(m, {})
        old, new = d.get("old"), d.get("new")
        if new is None:
            failures.append(f"{m} is missing after the rerun")
            rows.append((m, old, new, None, "FAIL"))
        elif old is None:
            notes.append(f"{m}: the base has no committed value; not judged")
            rows.append((m, old, new, None, "no base"))
        else:
            change = new - old
            bad = -change > gate.tolerance_pp + 1e-9
            if bad:
                failures.append(f"{m} dropped {-change:.2f} pp ({old:.2f} -> {new:.2f}), "
                                f"beyond the {gate.tolerance_pp:g} pp tolerance")
            rows.append((m, old, new, change, "FAIL" if bad else "ok"))
    return rows, failures, notes


def summary_md(base: str, base_sha: str, profile: str, pdiff: dict, why: dict, left_out: list[str],
               outcome: Optional[Outcome], acc_rows: list[tuple], gate_rows: list[tuple], gate_from: str,
               gate: Optional[config.Check], verdict: str, notes: list[str]) -> str:
    L = [f"## Params check against `{base}` ({base_sha[:8]}), {profile} profile", ""]
    if pdiff:
        L += ["| param | base | head |", "|---|---|---|"]
        L += [f"| `{k}` | {_val(v.get('old'))} | {_val(v.get('new'))} |" for k, v in sorted(pdiff.items())]
    else:
        L.append("No params changed.")
    L.append("")
    if why:
        L.append("Rerun: " + ", ".join(f"`{s}` ({'; '.join(r)})" for s, r in why.items()))
        if left_out:
            L.append(f"Not rerun (write no metrics): {', '.join(f'`{s}`' for s in left_out)}")
    else:
        L.append("Rerun: nothing (no stage reads a changed param or file)")
    if outcome:
        L.append(f"Baseline: {outcome.baseline}.")
    L.append("")
    if acc_rows:
        L += ["| metric | base | head | change (pp) |", "|---|---|---|---|"]
        L += [f"| `{m}` | {_num(o)} | {_num(n)} | {_num(c) if c is None else f'{c:+.2f}'} |"
              for m, o, n, c in acc_rows]
        L.append("")
    if gate_rows:
        L.append(f"Gate (from {gate_from}): no drop beyond {gate.tolerance_pp:g} pp")
        L += ["", "| gated metric | base | head | change (pp) | |", "|---|---|---|---|---|"]
        L += [f"| `{m}` | {_num(o)} | {_num(n)} | {'—' if c is None else f'{c:+.2f}'} | {s} |"
              for m, o, n, c, s in gate_rows]
        L.append("")
    L += [f"- {n}" for n in notes]
    if notes:
        L.append("")
    L.append(verdict)
    return "\n".join(L) + "\n"


def _emit(text: str, summary: Optional[Path]) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    if summary:
        summary.write_text(text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a") as f:
            f.write(text)


def check(root: Path, base: str, profile: str, summary: Optional[Path], keep: bool = False) -> int:
    try:
        head = config.load(root / "params.yaml")
    except config.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        _emit(f"## Params check against `{base}`\n\n**Verdict: INVALID** — {e}\n", summary)
        return 2
    try:
        base_sha = _git(["rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], root).strip()
    except CheckError:
        print(f"error: --base {base!r} is not a commit here (CI: fetch with fetch-depth: 0)", file=sys.stderr)
        return 2
    try:
        gate, gate_from = _load_check(root, base_sha, head)
    except config.ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        _emit(f"## Params check against `{base}`\n\n**Verdict: INVALID** — {e}\n", summary)
        return 2

    pdiff = params_diff(base_sha, root)
    files = changed_files(base_sha, root)
    stages = read_dag(root)
    why, left_out = stale_stages(stages, list(pdiff), files)
    failures: list[str] = []
    notes: list[str] = []
    claim = claims_reproduced(root)
    if claim:
        stale = stale_lock(root)
        if stale:
            failures.append(f"claims to be reproduced ({claim}) but dvc.lock is stale for changed params: "
                            + "; ".join(f"{s}: {', '.join(k)}" for s, k in stale.items()))
        else:
            notes.append(f"claims to be reproduced ({claim}): dvc.lock matches params.yaml")

    outcome: Optional[Outcome] = None
    work: Optional[Path] = None
    order = [s for s in stages if s in why]  # dvc.yaml order, upstream first
    try:
        if order:
            if profile == "tiny":
                work = Path(tempfile.mkdtemp(prefix="check-params-"))
                base_raw = yaml.safe_load(_git(["show", f"{base_sha}:params.yaml"], root)) or {}
                outs = sorted({o for s in stages.values() for o in s.outs})
                outcome = run_tiny(root, base_sha, _git(["rev-parse", "HEAD"], root).strip(), base_raw,
                                   order, outs, work)
            else:
                rc = repro(order, root)
                outcome = Outcome(order, base_sha, root, "the base's committed metrics",
                                  failed=None if rc == 0 else "`dvc repro` failed")
        acc_rows, gate_rows = [], []
        if outcome and not outcome.failed:
            diff = metrics_diff(outcome.compare_rev, outcome.cwd)
            rerun_metrics = {m for s in outcome.ran for m in stages[s].metrics}
            for k, v in sorted(diff.items()):
                path, key = k.split(":", 1)
                if path in rerun_metrics and "acc" in key.lower():
                    acc_rows.append((k, v.get("old"), v.get("new"), v.get("diff")))
            gate_rows, gfail, gnotes = judge(gate, diff, rerun_metrics,
                                             {m for s in stages.values() for m in s.metrics})
            failures += gfail
            notes += gnotes
        elif outcome:
            failures.append(outcome.failed)
    except CheckError as e:
        failures.append(str(e))
        acc_rows, gate_rows = [], []
    finally:
        if work and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work:
            notes.append(f"temporary clone kept: {work / 'repo'}")

    if failures:
        verdict = "**Verdict: FAIL** — " + "; ".join(failures)
    else:
        verdict = ("**Verdict: OK** — " + (f"every gated metric within {gate.tolerance_pp:g} pp of the base"
                                           if gate_rows else "no gated metric was affected"))
    _emit(summary_md(base, base_sha, profile, pdiff, why, left_out, outcome, acc_rows, gate_rows, gate_from,
                     gate, verdict, notes), summary)
    return 1 if failures else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.check_params", description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with, e.g. origin/main")
    ap.add_argument("--profile", choices=["tiny", "full"], default="tiny",
                    help="tiny: rerun in a temporary clone on pipelines/profiles.py's tiny profile (CI); full: rerun here")
    ap.add_argument("--summary", type=Path, help="also write the Markdown summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (tiny profile) for inspection")
    args = ap.parse_args(argv)
    return check(Path.cwd(), args.base, args.profile, args.summary, args.keep)


if __name__ == "__main__":
    sys.exit(main())
