"""What a stage process costs before its first useful line: the interpreter, then each stage's imports.

    python -m benchmarks.startup [--rounds 5] [--tree OTHER_CHECKOUT ...]

Each round starts one fresh interpreter per measurement, in turn, so a machine's changing load
falls on every measurement alike: `python -c pass` (the interpreter), the big libraries alone
(torch, mlflow, pydantic through pipelines.config, matplotlib, openTSNE, sklearn), and
`import stages.<s>` for every stage entry module (the variant stages also seed themselves, as they
do first thing), in this checkout and in each --tree (another checkout of the project, e.g. an
older commit unpacked with `git archive`), which makes before/after figures side by side.
Prints the median wall seconds of each (process start to exit) and the median CPU seconds (user +
system): on a machine other work shares, CPU time moves much less than wall time.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("download", "preprocess", "train", "evaluate", "embed", "report")
# The variant stages seed themselves first thing (pipelines/compute.py:seed_everything), which
# may import more of torch: that belongs to their fixed cost.
STAGE_CODE = {s: "import stages.{s}\nfrom pipelines import compute\ncompute.seed_everything(0)"
              for s in ("train", "evaluate", "embed")}
LIBRARIES = {"interpreter": "pass", "torch": "import torch", "mlflow": "import mlflow",
             "pydantic (pipelines.config)": "import pipelines.config", "matplotlib": "import matplotlib.figure",
             "openTSNE": "import openTSNE", "sklearn (LinearSVC)": "import sklearn.svm"}


def seconds(code: str, cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + system) of one fresh interpreter running `code`."""
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{code!r} in {cwd} failed with exit {p.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tree", type=Path, action="append", default=[], help="another checkout to measure beside this one")
    a = ap.parse_args(argv)
    here = Path(__file__).resolve().parents[1]
    trees = {"here": here, **{str(t): t.resolve() for t in a.tree}}
    cases = {name: (code, here) for name, code in LIBRARIES.items()}
    for label, root in trees.items():
        cases.update({f"stages.{s} ({label})": (STAGE_CODE.get(s, "import stages.{s}").format(s=s), root)
                      for s in STAGES})
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    for r in range(a.rounds):
        for name, (code, root) in cases.items():
            got[name].append(seconds(code, root))
        print(f"round {r + 1} of {a.rounds} done", file=sys.stderr, flush=True)
    width = max(map(len, got))
    print(f"{'':<{width}}  wall s (median, min-max)   CPU s (median, min-max)")
    for name, vals in got.items():
        wall, cpu = [v[0] for v in vals], [v[1] for v in vals]
        print(f"{name:<{width}}  {statistics.median(wall):6.2f} ({min(wall):.2f}-{max(wall):.2f})"
              f"     {statistics.median(cpu):6.2f} ({min(cpu):.2f}-{max(cpu):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
