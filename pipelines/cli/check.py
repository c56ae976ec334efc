"""Judge a params change against a base revision: what CI runs on a pull request.

    python -m pipelines.cli.check --base origin/main [--profile tiny|full] [--summary FILE]

1. params.yaml and reference.yaml must validate (config.load); otherwise its one-line error, exit 2,
   nothing rerun.
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
    0  OK: every metric of reference.yaml `check.metrics` that was rerun is within
       `check.tolerance_pp` percentage points of the base (or better).
    1  FAIL: a checked metric dropped by more than the tolerance or went missing; a stage failed;
       or the branch claims to be reproduced while dvc.lock is stale for changed params.
    2  INVALID: params.yaml or reference.yaml (or the base's `check:` section) does not validate;
       or bad arguments.

"Claims to be reproduced": CLAIMS_REPRODUCED=1 in the environment, or "[reproduced]" in the
head commit's message (for a merge commit, as CI checks out a pull request, also its second
parent's). Such a branch must carry a dvc.lock that matches its params: `dvc status` in the working
tree may list no params change for any stage.

The baseline: with --profile full, the base's committed metrics. With --profile tiny, the same when
the base is itself committed on the tiny profile (its params.yaml is unchanged by the shrink);
otherwise the base is first reproduced on the tiny profile in the same temporary clone, because
full-size numbers say nothing about tiny ones. The gate's settings come from the base's
reference.yaml `check:` section when it has one, so a pull request cannot loosen its own gate.

The library behind it is pipelines/gate/: repo.py (git and DVC queries), rerun.py (`dvc repro`,
here or on the tiny profile), verdict.py (the judgement and the summary).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from pipelines import config
from pipelines.errors import CheckError
from pipelines.gate import repo, rerun, verdict
from pipelines.gate.repo import Stage, git
from pipelines.gate.rerun import Outcome
from pipelines.reference import Check


def _emit(text: str, summary: Optional[Path]) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    if summary:
        summary.write_text(text)
    step = os.environ.get("GITHUB_STEP_SUMMARY")
    if step:
        with open(step, "a") as f:
            f.write(text)


def _invalid(base: str, err: Exception, summary: Optional[Path]) -> int:
    print(f"error: {err}", file=sys.stderr)
    _emit(f"## Params check against `{base}`\n\n**Verdict: INVALID** — {err}\n", summary)
    return 2


def _claim(root: Path) -> tuple[list[str], list[str]]:
    """(failures, notes) of a branch that claims to be reproduced: its dvc.lock must match its params."""
    claim = repo.claims_reproduced(root)
    if not claim:
        return [], []
    stale = repo.stale_lock(root)
    if stale:
        return [f"claims to be reproduced ({claim}) but dvc.lock is stale for changed params: "
                + "; ".join(f"{s}: {', '.join(k)}" for s, k in stale.items())], []
    return [], [f"claims to be reproduced ({claim}): dvc.lock matches params.yaml"]


def _rerun_and_judge(root: Path, base_sha: str, profile: str, stages: dict[str, Stage], order: list[str],
                     gate: Optional[Check], work: Optional[Path], failures: list[str], notes: list[str]
                     ) -> tuple[Optional[Outcome], list[tuple], list[tuple]]:
    """(outcome, accuracy rows, gated rows) of rerunning `order`; failures and notes are appended to."""
    outcome: Optional[Outcome] = None
    try:
        if order and profile == "tiny":
            base_raw = yaml.safe_load(git(["show", f"{base_sha}:params.yaml"], root)) or {}
            outs = sorted({o for s in stages.values() for o in s.outs})
            outcome = rerun.tiny(root, base_sha, git(["rev-parse", "HEAD"], root).strip(), base_raw,
                                 order, outs, work)
        elif order:
            outcome = rerun.here(order, root, base_sha)
        if outcome and outcome.failed:
            failures.append(outcome.failed)
        elif outcome:
            diff = repo.metrics_diff(outcome.compare_rev, outcome.cwd)
            acc_rows, gate_rows, gfail, gnotes = verdict.compare(outcome, stages, gate, diff)
            failures += gfail
            notes += gnotes
            return outcome, acc_rows, gate_rows
    except CheckError as e:
        failures.append(str(e))
    return outcome, [], []


def check(root: Path, base: str, profile: str, summary: Optional[Path], keep: bool = False) -> int:
    try:
        head = config.load(root / "params.yaml")
    except config.ParamsError as e:
        return _invalid(base, e, summary)
    try:
        base_sha = git(["rev-parse", "--verify", "--quiet", f"{base}^{{commit}}"], root).strip()
    except CheckError:
        print(f"error: --base {base!r} is not a commit here (CI: fetch with fetch-depth: 0)", file=sys.stderr)
        return 2
    try:
        gate, gate_from = verdict.load_gate(root, base_sha, head)
    except config.ParamsError as e:
        return _invalid(base, e, summary)

    pdiff = repo.params_diff(base_sha, root)
    stages = repo.read_dag(root)
    why, left_out = repo.stale_stages(stages, list(pdiff), repo.changed_files(base_sha, root))
    failures, notes = _claim(root)
    order = [s for s in stages if s in why]  # dvc.yaml order, upstream first
    work = Path(tempfile.mkdtemp(prefix="check-params-")) if order and profile == "tiny" else None
    try:
        outcome, acc_rows, gate_rows = _rerun_and_judge(root, base_sha, profile, stages, order, gate, work,
                                                        failures, notes)
    finally:
        if work and not keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work:
            notes.append(f"temporary clone kept: {work / 'repo'}")
    _emit(verdict.summary_md(base, base_sha, profile, pdiff, why, left_out, outcome, acc_rows, gate_rows, gate_from,
                             gate, verdict.verdict_line(failures, gate, gate_rows), notes), summary)
    return 1 if failures else 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cli.check", description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with, e.g. origin/main")
    ap.add_argument("--profile", choices=["tiny", "full"], default="tiny",
                    help="tiny: rerun in a temporary clone on pipelines/profiles.py's tiny profile (CI); full: rerun here")
    ap.add_argument("--summary", type=Path, help="also write the Markdown summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone (tiny profile) for inspection")
    args = ap.parse_args(argv)
    return check(Path.cwd(), args.base, args.profile, args.summary, args.keep)


if __name__ == "__main__":
    sys.exit(main())
