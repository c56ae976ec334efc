"""`dvc repro` of the stale stages and the evidence the gate judges: here on the params as they are
(full profile), or in temporary clones (one a side) on a shrunk profile of pipelines/profiles.py,
where the base is reproduced on the same profile first (or taken from the cache of an earlier check
of the same base and profile) and both sides get the same number of training runs per gated variant. Where the
two sides' main runs of a gated variant were judged on different images (their split digests
differ), the extra runs of both sides redraw the data too (evidence.extra_run with redraw)."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import yaml

from pipelines.gate import evidence
from pipelines.gate.evidence import Runs
from pipelines.gate.repo import Stage, env, git, path_hits, read_dag, run


@dataclass
class Outcome:
    ran: list[str]
    cwd: Path
    baseline: str
    failed: Optional[str] = None
    # side ("base", "head") -> gated stage -> its runs; side -> "metrics file:key" -> value
    runs: dict[str, dict[str, Runs]] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    ran_base: list[str] = field(default_factory=list)


def repro(stages: list[str], cwd: Path, log: list[str]) -> int:
    print(f"$ dvc repro {' '.join(stages)}   (in {cwd})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    # The stages' own output goes to stderr: stdout carries only the summary.
    p = subprocess.run(["dvc", "repro", "--keep-going", *stages], cwd=cwd, env=env(), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    sys.stderr.write(p.stdout)
    log.append(f"$ dvc repro {' '.join(stages)}   ({time.perf_counter() - t0:.0f} s, exit {p.returncode})")
    log += [line for line in p.stdout.splitlines() if line.startswith(("Running stage", "Stage '", "ERROR: "))]
    return p.returncode


def read_metrics(cwd: Path, stages: list[Stage]) -> dict[str, float]:
    """Every number of the given stages' metrics files in cwd, as "file:key" (nested keys dotted)."""
    out: dict[str, float] = {}

    def walk(path: str, prefix: str, x) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(path, f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            out[f"{path}:{prefix}"] = x

    for s in stages:
        for m in s.metrics:
            if (cwd / m).is_file():
                walk(m, "", json.loads((cwd / m).read_text()))
    return out


def main_runs(cwd: Path, gated: list[Stage], seed: int) -> dict[str, Runs]:
    """The DVC stage's own run of each gated evaluate stage in cwd (validation, and test where there is
    a test split), under the global seed; stages without per-image results are left out."""
    found: dict[str, Runs] = {}
    for st in gated:
        main = evidence.read_run(cwd, st)
        if main is not None:
            found[st.name] = Runs(seeds=[seed], correct=[main[0]], images=main[1])
            test = evidence.read_run(cwd, st, "test")
            if test is not None:
                found[st.name].test = Runs(seeds=[seed], correct=[test[0]], images=test[1])
    return found


def add_extras(cwd: Path, dag: dict[str, Stage], found: dict[str, Runs], seed: int, seeds: int, cache: Path,
               work: Path, log: list[str], jobs: int = 1, redraw: Optional[dict[str, bool]] = None) -> None:
    """Add seeds - 1 more runs (cached by content) to each gated stage's runs in `found` (its main
    run), `jobs` at a time; a stage that `redraw` names with True redraws the data in each of them
    (its Runs then say `redrawn`). A deterministic variant on the same data gets none: every seed would
    fit the same model again (its Runs then say `deterministic`). Raises RuntimeError when a run fails."""
    redraw = redraw or {}
    fixed = set()
    for name in found:
        if redraw.get(name):
            found[name].redrawn = True
            if found[name].test is not None:
                found[name].test.redrawn = True
        elif evidence.deterministic(cwd, evidence.variant_of(dag[name])):
            fixed.add(name)
            for runs in (found[name], found[name].test):
                if runs is not None:
                    runs.deterministic = True
            if seeds > 1:
                log.append(f"{evidence.variant_of(dag[name])}: every seed gives the same model on the same data "
                           f"(a linear SVM on frozen features), so its one run stands for all {seeds}")
    todo = [(dag[name], s) for name in found if name not in fixed for s in evidence.extra_seeds(seed, seeds)]

    def one(job: tuple[Stage, int]) -> tuple[Stage, int, object, object, bool, float]:
        st, s = job
        t0 = time.perf_counter()
        again = bool(redraw.get(st.name))
        val, test, cached = evidence.extra_run(cwd, st, s, cache, work, evidence.code_of(dag, st, again), again)
        return st, s, val, test, cached, time.perf_counter() - t0

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for st, s, correct, test, cached, took in pool.map(one, todo):
            found[st.name].seeds.append(s)
            found[st.name].correct.append(correct)
            if found[st.name].test is not None and test is not None:
                found[st.name].test.seeds.append(s)
                found[st.name].test.correct.append(test)
            log.append(f"{evidence.variant_of(st)} seed {s}" + (" (its own draw of the data)" if redraw.get(st.name) else "")
                       + ": " + ("from the cache" if cached else f"trained and evaluated ({took:.0f} s)"))


def collect(cwd: Path, dag: dict[str, Stage], gated: list[Stage], seed: int, seeds: int, cache: Path, work: Path,
            log: list[str], jobs: int = 1) -> dict[str, Runs]:
    """The runs of each gated evaluate stage in cwd: its own, then seeds - 1 more on the same data
    (cached by content), `jobs` of those at a time."""
    found = main_runs(cwd, gated, seed)
    add_extras(cwd, dag, found, seed, seeds, cache, work, log, jobs)
    return found


def redraws(base: dict[str, Runs], head: dict[str, Runs], splits: dict[str, set[str]]) -> dict[str, bool]:
    """Per gated stage both sides' main runs are known: whether the images of a split it is judged on
    (`splits`: "val", "test") differ between the two sides (their digests), so that its extra runs
    must redraw the data."""
    out = {}
    for name in sorted(base.keys() & head.keys()):
        differ = False
        for split in splits.get(name) or {"val"}:
            b, h = (base[name], head[name]) if split == "val" else (base[name].test, head[name].test)
            differ |= b is not None and h is not None and b.images != h.images
        out[name] = differ
    return out


def here(stages: list[str], root: Path, dag: dict[str, Stage], gated: list[Stage], base_runs: Callable,
         seeds: int, cache: Path, work: Path) -> Outcome:
    """The full profile: the stages rerun in this working tree (and the gated variants `seeds` - 1
    more times, into work), judged against the base's committed metrics and its per-image results
    where DVC's cache still holds them (`base_runs`)."""
    out = Outcome(stages, root, "the base's committed metrics")
    if repro(stages, root, out.log) != 0:
        out.failed = "`dvc repro` failed"
        return out
    seed = yaml.safe_load((root / "params.yaml").read_text()).get("seed", 0)
    try:
        out.runs["head"] = collect(root, dag, gated, seed, seeds, cache, work, out.log)
    except RuntimeError as e:
        out.failed = str(e)
        return out
    out.runs["base"] = base_runs(gated)
    out.metrics["head"] = read_metrics(root, [dag[s] for s in stages])
    return out


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


def jobs(params: dict) -> int:
    """Extra runs at a time: one per core when each run keeps to one thread (params `threads: 1`)."""
    return (os.cpu_count() or 1) if params.get("threads") == 1 else 1


@dataclass
class Side:
    """What one side of a profiled check needs: its commit, its params as shrunk, how many runs."""
    sha: str
    params: dict
    seeds: int


def _clear_outputs(clone: Path, stages: list[Stage]) -> None:
    """Remove the stages' outputs in the head's clone before its `dvc repro`, so that a stage that
    fails leaves nothing behind (restored from DVC's cache, or an earlier side's) to be read as the head's."""
    for st in stages:
        for o in st.outs:
            path = clone / o
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _clone(root: Path, dst: Path, sha: str) -> Path:
    # --shared borrows the objects: no copy of the history, nothing written to this repository.
    if not dst.exists():
        git(["clone", "-q", "--shared", "--no-checkout", str(root), str(dst)], root)
    git(["checkout", "-q", "-f", "--detach", sha], dst)
    return dst


def _repro_side(clone: Path, side: Side, stages: list[str], cache: Path, out: Outcome,
                clear: bool = False) -> tuple[dict[str, Stage], list[str], Optional[str]]:
    """(the DAG, the stages run, what failed or None) of `dvc repro` of one side's stages in its clone.
    A stage that fails does not stop the others (`dvc repro --keep-going`)."""
    (clone / "params.yaml").write_text(yaml.safe_dump(side.params, sort_keys=False))
    # One DVC cache for every check (.dvc/config.local, git-ignored): stages whose inputs an earlier
    # check already ran come back from DVC's run cache instead of running again.
    run(["dvc", "cache", "dir", "--local", str((cache / "dvc").resolve())], clone)
    dag = read_dag(clone)
    # The stale stages were found in the full-size DAG; the shrunk one may fan out over fewer
    # replicates, and `dvc repro` refuses a stage that does not exist.
    todo = [s for s in stages if s in dag]
    if clear:
        _clear_outputs(clone, [dag[s] for s in todo])
    failed = None
    if todo and repro(todo, clone, out.log) != 0:
        bad = [line.split("'")[1] for line in out.log if line.startswith("ERROR: failed to reproduce '")]
        failed = "`dvc repro` failed" + (f" ({', '.join(sorted(set(bad)))})" if bad else "")
    return dag, todo, failed


def _base_dir(cache: Path, base: Side) -> Path:
    """The base's cache folder: its commit, its shrunk params and the runs per variant; one file per stage."""
    # "main+extras": each stage's file holds its main run and its extra runs by kind (_base_to_cache).
    blob = json.dumps([base.sha, base.params, base.seeds, "main+extras"], sort_keys=True, default=str)
    return cache / "base" / hashlib.sha256(blob.encode()).hexdigest()[:32]


def _base_from_cache(folder: Path, stages: list[str]) -> Optional[dict[str, dict]]:
    """{stage: what _base_to_cache kept of it} when every stage of `stages` the base has is there, else None."""
    names = [s for s in stages if (folder / f"{s}.pkl").is_file()]
    listed = folder / "stages.json"
    if not listed.is_file() or set(stages) & set(json.loads(listed.read_text())) - set(names):
        return None
    return {s: pickle.loads((folder / f"{s}.pkl").read_bytes()) for s in names}


def _base_to_cache(folder: Path, saved: dict[str, dict], dag_names: Optional[list[str]] = None) -> None:
    """Keep the base's stages: per stage its metrics, its main run ("main", None where it has no
    per-image results) and its runs with extra seeds by kind ("extras": "same data" or "redrawn",
    each a Runs of the main run and the extras); `dag_names`, the base's whole DAG, when known."""
    folder.mkdir(parents=True, exist_ok=True)
    for s, entry in saved.items():
        tmp = folder / f".{s}.tmp"
        tmp.write_bytes(pickle.dumps(entry))
        tmp.replace(folder / f"{s}.pkl")
    if dag_names is not None:
        tmp = folder / ".stages.tmp"
        tmp.write_text(json.dumps(sorted(dag_names)))   # the base's whole DAG: a stage it lacks needs no run
        tmp.replace(folder / "stages.json")


def _kind(redrawn: bool) -> str:
    return "redrawn" if redrawn else "same data"


# long: one sequence, base then head then each side's extra runs, each step's failure reported as it happens
def profiled(root: Path, base: Side, head: Side, stages: list[str], outs: list[str], gated: dict[str, set[str]],
             work: Path, cache: Path, note: str) -> Outcome:
    """A shrunk profile in clones under work: the base (from the cache when an earlier check of the
    same base and profile ran these stages), then the head's working tree; then, per gated variant
    (`gated`: evaluate stage -> the splits it is judged on), `seeds` runs a side, which redraw the
    data where the two sides' main runs were judged on different images. `note` names the profile
    for the summary."""
    out = Outcome([], work / "repo", f"the base reproduced on the {note} here")
    cache.mkdir(parents=True, exist_ok=True)
    folder = _base_dir(cache, base)
    saved = _base_from_cache(folder, stages)
    base_clone: Optional[Path] = None
    base_dag: dict[str, Stage] = {}
    if saved is not None:
        out.baseline = f"the base on the {note}, from the cache of an earlier check of the same base"
        out.log.append(f"base: from the cache ({folder})")
        out.ran_base = sorted(saved)
    else:
        base_clone = _clone(root, work / "base", base.sha)
        base_dag, todo, failed = _repro_side(base_clone, base, stages, cache, out)
        out.ran_base = todo
        if failed:
            out.failed = f"the base does not reproduce on the {note}: {failed}"
            return out
        found = main_runs(base_clone, [base_dag[s] for s in todo if s in gated], base.params.get("seed", 0))
        saved = {s: {"metrics": read_metrics(base_clone, [base_dag[s]]), "main": found.get(s), "extras": {}}
                 for s in todo}
        _base_to_cache(folder, saved, list(base_dag))
    out.metrics["base"] = {k: v for e in saved.values() for k, v in e["metrics"].items()}
    base_main = {s: copy.deepcopy(e["main"]) for s, e in saved.items() if e["main"] is not None}

    head_clone = _clone(root, work / "repo", head.sha)
    _overlay_worktree(root, head_clone, outs)
    dag, out.ran, failed = _repro_side(head_clone, head, stages, cache, out, clear=True)
    if failed:
        out.failed = f"on the {note}: {failed}"
    found = main_runs(head_clone, [dag[s] for s in out.ran if s in gated], head.params.get("seed", 0))
    out.metrics["head"] = read_metrics(head_clone, [dag[s] for s in out.ran])
    redraw = {s: r and evidence.can_redraw(head_clone, dag[s])
              for s, r in redraws(base_main, found, gated).items()}
    try:
        add_extras(head_clone, dag, found, head.params.get("seed", 0), head.seeds, cache, work / "head", out.log,
                   jobs(head.params), redraw)
    except RuntimeError as e:
        out.log.append(str(e))
        out.failed = out.failed or f"on the {note}: {e}"
        return out
    out.runs["head"] = found

    # The base's extra runs of the kind each variant needs: from the cache, else made in its clone
    # (reproduced again where the base came from the cache: DVC's run cache restores its outputs).
    out.runs["base"] = {}
    missing = []
    for s, main in base_main.items():
        if s not in found:   # the head has no per-image results to judge it on
            out.runs["base"][s] = main
            continue
        kept = saved[s]["extras"].get(_kind(redraw.get(s, False)))
        if kept is not None:
            out.runs["base"][s] = copy.deepcopy(kept)
        else:
            missing.append(s)
    if missing:
        if base_clone is None:
            base_clone = _clone(root, work / "base", base.sha)
            base_dag, _, failed = _repro_side(base_clone, base, stages, cache, out)
            if failed:
                out.failed = out.failed or f"the base does not reproduce on the {note}: {failed}"
                return out
        todo = {s: base_main[s] for s in missing}
        try:
            add_extras(base_clone, base_dag, todo, base.params.get("seed", 0), base.seeds, cache, work / "base-runs",
                       out.log, jobs(base.params), {s: redraw.get(s, False) for s in missing})
        except RuntimeError as e:
            out.log.append(str(e))
            out.failed = out.failed or f"the base's extra runs on the {note}: {e}"
            del out.runs["base"]
            return out
        for s, runs in todo.items():
            out.runs["base"][s] = runs
            saved[s]["extras"][_kind(redraw.get(s, False))] = copy.deepcopy(runs)
        _base_to_cache(folder, {s: saved[s] for s in missing})
    return out


def shrink(fn: Callable[[dict], dict], raw: dict) -> Optional[dict]:
    """raw params through a profile; None when the profile cannot shrink them (an older params.yaml
    may lack a section the profile follows)."""
    try:
        return fn(copy.deepcopy(raw))
    except (KeyError, TypeError, AttributeError):
        return None
