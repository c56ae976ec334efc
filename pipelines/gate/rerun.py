"""`dvc repro` of the stale stages and the evidence the gate judges: here on the params as they are
(full profile), or in a temporary clone on a shrunk profile of pipelines/profiles.py, where the base
is reproduced on the same profile first (or taken from the cache of an earlier check of the same
base and profile) and both sides get the same number of training runs per gated variant."""
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


def collect(cwd: Path, dag: dict[str, Stage], gated: list[Stage], seed: int, seeds: int, cache: Path, work: Path,
            log: list[str], jobs: int = 1) -> dict[str, Runs]:
    """The runs of each gated evaluate stage in cwd: its own, then seeds - 1 more (cached by content),
    `jobs` of those at a time."""
    found: dict[str, Runs] = {}
    for st in gated:
        main = evidence.read_run(cwd, st)
        if main is not None:
            found[st.name] = Runs(seeds=[seed], correct=[main[0]], images=main[1])
            test = evidence.read_run(cwd, st, "test")
            if test is not None:
                found[st.name].test = Runs(seeds=[seed], correct=[test[0]], images=test[1])
    todo = [(st, s) for st in gated if st.name in found for s in evidence.extra_seeds(seed, seeds)]

    def one(job: tuple[Stage, int]) -> tuple[Stage, int, object, object, bool, float]:
        t0 = time.perf_counter()
        val, test, cached = evidence.extra_run(cwd, job[0], job[1], cache, work, evidence.code_of(dag, job[0]))
        return job[0], job[1], val, test, cached, time.perf_counter() - t0

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        for st, s, correct, test, cached, took in pool.map(one, todo):
            found[st.name].seeds.append(s)
            found[st.name].correct.append(correct)
            if found[st.name].test is not None and test is not None:
                found[st.name].test.seeds.append(s)
                found[st.name].test.correct.append(test)
            log.append(f"{evidence.variant_of(st)} seed {s}: "
                       + ("from the cache" if cached else f"trained and evaluated ({took:.0f} s)"))
    return found


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
    """Remove the stages' outputs (the base's, in the shared clone), so that a head stage that fails
    leaves nothing of the base's behind to be read as the head's."""
    for st in stages:
        for o in st.outs:
            path = clone / o
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _reproduce_side(clone: Path, side: Side, stages: list[str], gated_names: set[str], cache: Path,
                    work: Path, out: Outcome, name: str) -> Optional[str]:
    """Reproduce one side in the clone and collect its runs into out; what failed, or None. A stage
    that fails does not stop the others (`dvc repro --keep-going`): the gated metrics it does not
    feed are still judged."""
    (clone / "params.yaml").write_text(yaml.safe_dump(side.params, sort_keys=False))
    # One DVC cache for every check (.dvc/config.local, git-ignored): stages whose inputs an earlier
    # check already ran come back from DVC's run cache instead of running again.
    run(["dvc", "cache", "dir", "--local", str((cache / "dvc").resolve())], clone)
    dag = read_dag(clone)
    # The stale stages were found in the full-size DAG; the shrunk one may fan out over fewer
    # replicates, and `dvc repro` refuses a stage that does not exist.
    todo = [s for s in stages if s in dag]
    if name == "head":
        out.ran = todo
        _clear_outputs(clone, [dag[s] for s in todo])
    else:
        out.ran_base = todo
    failed = None
    if todo and repro(todo, clone, out.log) != 0:
        bad = [line.split("'")[1] for line in out.log if line.startswith("ERROR: failed to reproduce '")]
        failed = "`dvc repro` failed" + (f" ({', '.join(sorted(set(bad)))})" if bad else "")
    gated = [dag[s] for s in todo if s in gated_names]
    try:
        out.runs[name] = collect(clone, dag, gated, side.params.get("seed", 0), side.seeds, cache,
                                 work / name, out.log, jobs(side.params))
    except RuntimeError as e:
        out.log.append(str(e))
        return str(e)
    out.metrics[name] = read_metrics(clone, [dag[s] for s in todo])
    return failed


def _base_dir(cache: Path, base: Side) -> Path:
    """The base's cache folder: its commit, its shrunk params and the runs per variant; one file per stage."""
    blob = json.dumps([base.sha, base.params, base.seeds], sort_keys=True, default=str)
    return cache / "base" / hashlib.sha256(blob.encode()).hexdigest()[:32]


def _base_from_cache(folder: Path, stages: list[str], out: Outcome) -> bool:
    """Fill out's base side from the cache when every stage of `stages` the base has is there."""
    names = [s for s in stages if (folder / f"{s}.pkl").is_file()]
    listed = folder / "stages.json"
    if not listed.is_file() or set(stages) & set(json.loads(listed.read_text())) - set(names):
        return False
    out.runs["base"], out.metrics["base"] = {}, {}
    for s in names:
        saved = pickle.loads((folder / f"{s}.pkl").read_bytes())
        out.metrics["base"].update(saved["metrics"])
        if saved["runs"] is not None:
            out.runs["base"][s] = saved["runs"]
    return True


def _base_to_cache(folder: Path, clone: Path, out: Outcome) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dag = read_dag(clone)
    for s in out.ran_base:
        tmp = folder / f".{s}.tmp"
        tmp.write_bytes(pickle.dumps({"runs": out.runs["base"].get(s),
                                      "metrics": read_metrics(clone, [dag[s]])}))
        tmp.replace(folder / f"{s}.pkl")
    tmp = folder / ".stages.tmp"
    tmp.write_text(json.dumps(sorted(dag)))   # the base's whole DAG: a stage it lacks needs no run
    tmp.replace(folder / "stages.json")


# long: one sequence, base then head in one clone, each step's failure reported as it happens
def profiled(root: Path, base: Side, head: Side, stages: list[str], outs: list[str], gated_names: set[str],
             work: Path, cache: Path, note: str) -> Outcome:
    """A shrunk profile in a clone under work: the base (from the cache when an earlier check of the
    same base and profile ran these stages), then the head's working tree, each with `seeds` runs per
    gated variant. `note` names the profile for the summary."""
    clone = work / "repo"
    # --shared borrows the objects: no copy of the history, nothing written to this repository.
    git(["clone", "-q", "--shared", "--no-checkout", str(root), str(clone)], root)
    out = Outcome([], clone, f"the base reproduced on the {note} here")
    cache.mkdir(parents=True, exist_ok=True)
    folder = _base_dir(cache, base)
    if _base_from_cache(folder, stages, out):
        out.baseline = f"the base on the {note}, from the cache of an earlier check of the same base"
        out.log.append(f"base: from the cache ({folder})")
    else:
        git(["checkout", "-q", "--detach", base.sha], clone)
        failed = _reproduce_side(clone, base, stages, gated_names, cache, work, out, "base")
        if failed:
            out.failed = f"the base does not reproduce on the {note}: {failed}"
            return out
        _base_to_cache(folder, clone, out)
    git(["checkout", "-q", "-f", "--detach", head.sha], clone)
    _overlay_worktree(root, clone, outs)
    failed = _reproduce_side(clone, head, stages, gated_names, cache, work, out, "head")
    if failed:
        out.failed = f"on the {note}: {failed}"
    return out


def shrink(fn: Callable[[dict], dict], raw: dict) -> Optional[dict]:
    """raw params through a profile; None when the profile cannot shrink them (an older params.yaml
    may lack a section the profile follows)."""
    try:
        return fn(copy.deepcopy(raw))
    except (KeyError, TypeError, AttributeError):
        return None
