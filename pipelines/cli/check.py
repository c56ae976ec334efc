"""Judge a params change against a base revision: what CI runs on a pull request.

    python -m pipelines.cli.check --base origin/main [--profile gate|tiny|full] [--seeds N] [--base-seeds N]
                                  [--strict] [--cache DIR] [--summary FILE] [--json FILE]

1. params.yaml and reference.yaml must validate (config.load); otherwise its one-line error, exit 2,
   nothing rerun.
2. The changed params: `dvc params diff <base>`.
3. The stages to rerun (repo.stale_stages): those that write a gated metric (reference.yaml
   `check.metrics`) or feed one, where a change hits them (their dvc.yaml `params:` names a changed
   key, or a code dep differs from the base) or what they depend on; and a stage no gated metric
   needs only when a change hits it alone. Stages without metrics (the report) never rerun.
   `dvc status` is not used for this: a fresh clone reports every output missing, and the lock may
   already be up to date on the branch.
4. `dvc repro` of exactly those stages. `--profile gate` (the default, CI's) and `tiny`: in a
   temporary clone on that profile of pipelines/profiles.py, the base first (or from the cache of
   an earlier check of the same base and profile), then the head's working tree; each side trains
   every gated variant several times (the stage's own run and more seeds, cached by content): the
   head --seeds times, the base --base-seeds times (more: it is paid once per base). Where the two
   sides' main runs of a variant were judged on different images (a change of `seed` redraws the
   transfer set), the extra runs of both sides each prepare their own draw of the data too
   (`python -m stages.preprocess --seed S`).
   `--profile full`: here, on the params as they are, against the base's committed metrics.
5. Each gated accuracy judged on per-image results (pipelines/gate/verdict.py, pipelines/stats.py):
   paired on the same images, the seed-to-seed spread in the interval; where the runs redrew the
   data, Welch's t on the two sides' run accuracies; Holm over the gated metrics; better, worse, or
   no difference detectable, with the smallest detectable difference.
6. A Markdown summary on stdout (also --summary FILE and $GITHUB_STEP_SUMMARY): the gated metrics'
   table and the verdict, the params diff, the rerun log collapsed. docs/ci-gate.md explains it.

Verdict and exit status:
    0  OK: no gated metric got worse beyond noise and the tolerance, and each could have seen a drop
       of `check.tolerance_pp` (its smallest detectable difference is at most that).
    0  INCONCLUSIVE (1 with --strict): nothing failed, but some gated metric could not have seen a
       tolerance-sized drop; the summary says which and what it could see.
    1  FAIL: a gated metric dropped beyond noise and by more than the tolerance, or went missing; a
       stage failed; or the branch claims to be reproduced while dvc.lock is stale for changed params.
    2  INVALID: params.yaml or reference.yaml (or the base's `check:` section) does not validate;
       or bad arguments.

"Claims to be reproduced": CLAIMS_REPRODUCED=1 in the environment, or "[reproduced]" in the
head commit's message (for a merge commit, as CI checks out a pull request, also its second
parent's). Such a branch must carry a dvc.lock that matches its params: `dvc status` in the working
tree may list no params change for any stage.

The gate's settings come from the base's reference.yaml `check:` section when it has one, so a pull
request cannot loosen its own gate. The library behind it is pipelines/gate/: repo.py (git and DVC
queries), rerun.py (`dvc repro`, here or on a profile), evidence.py (per-image results and extra
seeds), verdict.py (the judgement), summary.py (the Markdown).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import yaml

from pipelines import config, io, profiles
from pipelines.errors import CheckError
from pipelines.gate import evidence, repo, rerun, verdict
from pipelines.gate.repo import Stage, git
from pipelines.gate.rerun import Outcome
from pipelines.gate.summary import summary_md


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


PROFILES = {"gate": profiles.gate, "tiny": profiles.tiny}
DEFAULT_CACHE = Path.home() / ".cache" / "cnn-lab" / "check-params"


@dataclass
class Options:
    base: str
    profile: str = "gate"
    seeds: Optional[int] = None
    base_seeds: Optional[int] = None
    strict: bool = False
    cache: Path = DEFAULT_CACHE
    summary: Optional[Path] = None
    keep: bool = False
    json: Optional[Path] = None


def judged_splits(dag: dict[str, Stage], gate) -> dict[str, set[str]]:
    """{stage that writes a gated metric: the splits its gated metrics are judged on}: "test" for a
    `test_accuracy`, "val" for anything else (verdict.PER_IMAGE)."""
    out: dict[str, set[str]] = {}
    for m in gate.metrics if gate else []:
        path, _, key = m.partition(":")
        for s in dag.values():
            if path in s.metrics:
                out.setdefault(s.name, set()).add("test" if key == "test_accuracy" else "val")
    return out


def _rerun(root: Path, base_sha: str, opt: Options, dag: dict[str, Stage], order: list[str],
           gated: dict[str, set[str]], work: Optional[Path]) -> Outcome:
    if opt.profile == "full":
        def base_runs(stages: list[Stage]) -> dict:
            found = {s.name: evidence.committed_run(root, base_sha, s) for s in stages}
            return {k: v for k, v in found.items() if v is not None}

        out = rerun.here(order, root, dag, [dag[s] for s in order if s in gated], base_runs,
                         opt.seeds or 1, opt.cache, work)
        if not out.failed:
            out.metrics["base"] = {k: v["old"] for k, v in repo.metrics_diff(base_sha, root).items()
                                   if v.get("old") is not None}
        return out
    shrink = PROFILES[opt.profile]
    seeds = opt.seeds or profiles.GATE_SEEDS
    base_seeds = opt.base_seeds or max(seeds, profiles.GATE_BASE_SEEDS)
    base_raw = yaml.safe_load(git(["show", f"{base_sha}:params.yaml"], root)) or {}
    base_p, head_p = rerun.shrink(shrink, base_raw), rerun.shrink(shrink, yaml.safe_load((root / "params.yaml").read_text()))
    if base_p is None:
        return Outcome([], root, "", failed=f"the {opt.profile} profile cannot shrink the base's params.yaml")
    outs = sorted({o for s in dag.values() for o in s.outs})
    return rerun.profiled(root, rerun.Side(base_sha, base_p, base_seeds),
                          rerun.Side(git(["rev-parse", "HEAD"], root).strip(), head_p, seeds),
                          order, outs, gated, work, opt.cache, f"{opt.profile} profile")


def check(root: Path, opt: Options) -> int:
    t0 = time.perf_counter()
    base, summary = opt.base, opt.summary
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
    dag = repo.read_dag(root)
    gated_paths = {m.split(":", 1)[0] for m in gate.metrics} if gate else set()
    why, left_out = repo.stale_stages(dag, list(pdiff), repo.changed_files(base_sha, root), gated_paths)
    gated = judged_splits(dag, gate)
    failures, notes = _claim(root)
    order = [s for s in dag if s in why]  # dvc.yaml order, upstream first
    work = Path(tempfile.mkdtemp(prefix="check-params-")) if order else None
    outcome, rows, blind = None, [], []
    try:
        if order:
            outcome = _rerun(root, base_sha, opt, dag, order, gated, work)
            if outcome.failed:
                failures.append(outcome.failed)
            if "head" in outcome.runs and "base" in outcome.runs:   # what did run is judged all the same
                rows, gfail, gnotes = verdict.judge(gate, outcome, dag)
                failures += gfail
                notes += gnotes
                blind = verdict.blind_spots(rows, gate.tolerance_pp) if gate else []
    except CheckError as e:
        failures.append(str(e))
    finally:
        if work and not opt.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif work:
            notes.append(f"temporary clone kept: {work / 'repo'}")
    line, rc = verdict.verdict_line(failures, blind, rows, opt.strict)
    seconds = time.perf_counter() - t0
    _emit(summary_md(base, base_sha, opt.profile, pdiff, why, left_out, outcome, rows, gate_from,
                     gate.tolerance_pp if gate else None, line, notes, seconds), summary)
    if opt.json:
        with io.atomic_path(opt.json) as tmp:
            tmp.write_text(json.dumps({"verdict": line.split("**")[1].removeprefix("Verdict: "), "exit": rc,
                                       "seconds": seconds, "rows": [asdict(r) for r in rows],
                                       "failures": failures, "notes": notes, "log": outcome.log if outcome else []},
                                      indent=1))
    return rc


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cli.check", description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare with, e.g. origin/main")
    ap.add_argument("--profile", choices=["gate", *sorted(set(PROFILES) - {"gate"}), "full"], default="gate",
                    help="gate (CI's) or tiny: rerun in a temporary clone on that profile of pipelines/profiles.py; "
                         "full: rerun here")
    ap.add_argument("--seeds", type=int, choices=range(1, 21), metavar="N",
                    help=f"the head's training runs per gated variant (default: {profiles.GATE_SEEDS} on a profile, 1 on full)")
    ap.add_argument("--base-seeds", type=int, choices=range(1, 41), metavar="N",
                    help=f"the base's (default: the larger of --seeds and {profiles.GATE_BASE_SEEDS}; cached across checks of the base)")
    ap.add_argument("--strict", action="store_true",
                    help="fail (exit 1) when a gated metric could not have seen a drop of the tolerance's size")
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("CHECK_CACHE") or DEFAULT_CACHE),
                    help="cache of the base's results and the extra seeds' runs across checks "
                         "(default: $CHECK_CACHE or ~/.cache/cnn-lab/check-params)")
    ap.add_argument("--summary", type=Path, help="also write the Markdown summary to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temporary clone for inspection")
    ap.add_argument("--json", type=Path, help="also write the verdict and each gated metric's numbers as JSON")
    a = ap.parse_args(argv)
    return check(Path.cwd(), Options(a.base, a.profile, a.seeds, a.base_seeds, a.strict, a.cache, a.summary, a.keep, a.json))


if __name__ == "__main__":
    sys.exit(main())
