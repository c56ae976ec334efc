"""Where a `dvc repro` is: one line per stage as it starts (stage k of n, time elapsed, an estimate of
what is left), and a last line with the whole run's time against its floor.

The plan comes from `dvc repro --dry` with the same arguments: the stages that will run, in DVC's
order. The estimate adds up the stages' last recorded times, the `seconds` each wrote to its
metrics file (metrics/<v>/{train,evaluate,embed}.json, metrics/replicates/<v>-<seed>.json) when it
last ran, scaled by how this run's finished stages compared with their records (which brings in
process starts, DVC's bookkeeping and the machine's speed today). Stages with no record (download,
preprocess, report, or a first run) count as nothing, and the line says how many had one.

`dvc repro` runs with its stdout piped through here, line by line, so the stages' own lines (the
epoch lines) print as before; stderr (progress bars, errors) is left alone.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from pipelines.io import read_json

RUNNING = re.compile(r"^Running stage '([^']+)':")
FROM_CACHE = re.compile(r"^Stage '([^']+)' is cached")
TRAINING = ("train", "replicate")   # the stages whose metrics carry floor_seconds


def metrics_file(stage: str, root: Path) -> Optional[Path]:
    """The metrics file where `stage` records its time (None for stages that record none)."""
    kind, _, key = stage.partition("@")
    if not key:
        return None
    if kind == "replicate":
        return root / "metrics" / "replicates" / f"{key}.json"
    if kind in ("train", "evaluate", "embed"):
        return root / "metrics" / key / f"{kind}.json"
    return None


def recorded(stage: str, root: Path, key: str = "seconds") -> Optional[float]:
    """A number the stage's metrics file recorded when it last ran, or None (no file, no such number)."""
    path = metrics_file(stage, root)
    try:
        value = read_json(path).get(key) if path is not None else None
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value >= 0 else None


def plan(repro_args: list[str], root: Path, env: dict) -> tuple[list[str], set[str]]:
    """(the stages `dvc repro <args>` will run, in order; those of them DVC's run cache will restore)."""
    out = subprocess.run(["dvc", "repro", "--dry", *repro_args], cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        # A dry run stops at the first stage whose inputs an earlier stage has yet to write (a fresh
        # clone): a whole-lab run then runs every stage, in the order DVC plans them.
        whole = not any(a for a in repro_args if not a.startswith("-"))
        return (dag_order(root) if whole else []), set()
    stages, cached = [], set()
    for line in out.stdout.splitlines():
        if m := RUNNING.match(line):
            stages.append(m.group(1))
        elif m := FROM_CACHE.match(line):
            cached.add(m.group(1))
    return stages, cached


def dag_order(root: Path) -> list[str]:
    """Every stage of the project's dvc.yaml by the name `dvc repro` prints, in the order it runs them;
    [] if DVC cannot say."""
    try:
        from dvc.repo import Repo
        from dvc.repo.reproduce import plan_repro

        with Repo(str(root)) as repo:
            return [stage.name for stage in plan_repro(repo.index.graph)]
    except Exception:   # noqa: BLE001 -- the progress lines then count the stages as they come
        return []


def clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Progress:
    """The run so far: which planned stages have started, and how long each finished one took."""
    stages: list[str]
    cached: set[str]
    root: Path
    start: float = field(default_factory=time.monotonic)
    walls: dict[str, float] = field(default_factory=dict)   # finished stage -> wall seconds
    current: Optional[str] = None
    since: float = 0.0
    # Each planned stage's time as recorded by its previous run, read before this run overwrites it.
    last: dict[str, Optional[float]] = field(init=False)

    def __post_init__(self) -> None:
        self.last = {s: recorded(s, self.root) for s in self.stages}

    def started(self, stage: str, now: float) -> str:
        """Record that `stage` started at `now` (the previous one finished then); its progress line."""
        self.finish(now)
        self.current, self.since = stage, now
        k = self.stages.index(stage) + 1 if stage in self.stages else len(self.walls) + 1
        n = max(len(self.stages), k)
        line = f"[run] stage {k} of {n}: {stage} | elapsed {clock(now - self.start)}"
        left, known, remaining = self.left(stage)
        if known:
            line += f" | about {clock(left)} left (recorded times of {known} of the {remaining} stages to go)"
        return line

    def finish(self, now: float) -> None:
        if self.current is not None:
            self.walls[self.current] = now - self.since
            self.current = None

    def left(self, stage: str) -> tuple[float, int, int]:
        """(seconds left from `stage` on, estimated; stages with a record among them; stages to go)."""
        to_go = self.stages[self.stages.index(stage):] if stage in self.stages else [stage]
        known = {s: self.last[s] for s in to_go if s not in self.cached and self.last.get(s) is not None}
        done = [(w, self.last.get(s)) for s, w in self.walls.items() if self.last.get(s)]
        # Finished stages against their records: the share of a stage's wall time its body reports.
        scale = sum(w for w, _ in done) / sum(r for _, r in done) if done else 1.0
        return sum(known.values()) * scale, len(known), len(to_go)


def repro(repro_args: list[str], root: Path = Path("."), out: Callable[[str], None] = print) -> tuple[int, Progress]:
    """`dvc repro <args>` in `root` with a progress line before each stage; (exit status, the progress)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": os.environ.get("DVC_NO_ANALYTICS", "1")}
    stages, cached = plan(repro_args, root, env)
    progress = Progress(stages, cached, root)
    out(f"[run] {len(stages)} stage(s) to run" + (f", {len(cached)} of them restored from DVC's run cache" if cached else ""))
    proc = subprocess.Popen(["dvc", "repro", *repro_args], cwd=root, env=env, stdout=subprocess.PIPE, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        if m := RUNNING.match(line):
            out(progress.started(m.group(1), time.monotonic()))
        sys.stdout.write(line)
        sys.stdout.flush()
    rc = proc.wait()
    progress.finish(time.monotonic())
    return rc, progress


def clock_of(stage: str, root: Path) -> Optional[dict]:
    """The clock (process start, body start, end) the stage's metrics file recorded, or None."""
    path = metrics_file(stage, root)
    try:
        clock = read_json(path).get("clock") if path is not None else None
    except (OSError, ValueError, AttributeError):
        return None
    return clock if isinstance(clock, dict) else None


def outside_line(progress: Progress, seconds: float) -> Optional[str]:
    """How much of the whole run the stages' bodies took, and what was left to everything else."""
    clocks = [c for c in (clock_of(s, progress.root) for s in progress.walls if s not in progress.cached) if c]
    if not clocks:
        return None
    body = sum(c["end_epoch_seconds"] - c["body_start_epoch_seconds"] for c in clocks)
    startup = sum(c["body_start_epoch_seconds"] - c["process_start_epoch_seconds"] for c in clocks)
    rest = seconds - body - startup
    return (f"of which the bodies of the {len(clocks)} clocked stages {clock(body)}, their process start-up "
            f"{clock(startup)}, and the rest {clock(rest)} (DVC's bookkeeping, process exits, the data stages, "
            f"the report); the report's \"Where the time went\" has each stage")


def floor_line(progress: Progress, seconds: float) -> str:
    """The whole run's time against its floor: the sum of floor_seconds of the training stages that ran."""
    ran = [s for s in progress.walls if s.partition("@")[0] in TRAINING and s not in progress.cached]
    floors = [f for f in (recorded(s, progress.root, "floor_seconds") for s in ran) if f]
    if not floors:
        return f"whole run {clock(seconds)}; no training stage ran, so there is no arithmetic floor to compare with"
    floor = sum(floors)
    return (f"whole run {clock(seconds)} against a floor of {clock(floor)} (the arithmetic of the {len(floors)} "
            f"training stages that ran, at the measured GEMM peak): {seconds / floor:.1f}x")
