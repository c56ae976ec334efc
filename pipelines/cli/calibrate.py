"""Calibrate the params gate: run it on changes that change nothing but the seed (each FAIL is a false
alarm) and on changes known to be bad (each FAIL is a detection), and print both counts with the
wall time of every check.

    python -m pipelines.cli.calibrate [--seed-changes 10] [--bad lr30,svm_c] [--bad-first] [--profile gate]
                                      [--seeds N] [--metrics mnist_cnn,cifar_alexnet,tl_svm] [--work DIR]

A scratch repository is made from this checkout's committed files (offline protocol, the gated
metrics of --metrics), committed as `main`; each change is a branch of a clone of it, judged with
`python -m pipelines.cli.check --base main` as CI would, all checks sharing one cache, so the base is
reproduced by the first check only (its wall time says so). Long: `make calibrate-gate`, not a test.
docs/ci-gate.md has measured results.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import yaml

from pipelines.gate.repo import commit, env, git


def _lr30(p: dict) -> None:
    # mnist_cnn_20ep continues mnist_cnn's training, so it must keep the same recipe (config.py).
    for v in ("mnist_cnn", "mnist_cnn_20ep"):
        p["variants"][v]["lr"] = 30 * p["variants"][v].get("lr", p["defaults"]["lr"])


def _svm_c(p: dict) -> None:
    p["variants"]["tl_svm"]["svm_c"] = 1e-6


def _alexnet_lr30(p: dict) -> None:
    p["variants"]["cifar_alexnet"]["lr"] = 30 * p["variants"]["cifar_alexnet"].get("lr", p["defaults"]["lr"])


def _cnn_small(p: dict) -> None:
    """The Simple CNN without its hidden layer (mnist_cnn_small's model), with the variants that must
    keep its model (its continuation, the stronger recipe judged against it)."""
    for v in ("mnist_cnn", "mnist_cnn_20ep", "mnist_cnn_plus"):
        p["variants"][v]["hidden"] = 0
        p["variants"][v]["layers"] = {"intermediate": "pool", "final": "logits"}


# Known-bad changes: name -> (what it does, the edit of params.yaml). The recipes have no vertical
# flip (augment: none | flip | crop_flip | crop | resized_crop_flip), so "digits upside down" is not
# among them.
BAD: dict[str, tuple[str, Callable[[dict], None]]] = {
    "lr30": ("Simple CNN learning rate 30x (0.03)", _lr30),
    "svm_c": ("SVM C = 1e-6", _svm_c),
    "alexnet_lr30": ("AlexNet learning rate 30x (0.03)", _alexnet_lr30),
    "cnn_small": ("Simple CNN without its 128-unit hidden layer", _cnn_small),
}


def scratch_base(root: Path, dst: Path, metrics: list[str]) -> None:
    """This checkout's committed files as a new repository in dst, on the offline protocol, gating
    the given variants' evaluate metric; committed as `main`."""
    dst.mkdir(parents=True)
    subprocess.run(f"git -C '{root}' archive HEAD | tar -x -C '{dst}'", shell=True, check=True)
    p = yaml.safe_load((dst / "params.yaml").read_text())
    p["protocol"] = "offline"
    (dst / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ref = yaml.safe_load((dst / "reference.yaml").read_text())
    # Each variant's gated metric as the checkout's gate names it (the transfer options' test_accuracy),
    # else its validation accuracy.
    gated = {m.split("/")[1]: m for m in ref["check"]["metrics"]}
    ref["check"]["metrics"] = [gated.get(v, f"metrics/{v}/evaluate.json:accuracy") for v in metrics]
    (dst / "reference.yaml").write_text(yaml.safe_dump(ref, sort_keys=False))
    git(["init", "-q", "-b", "main"], dst)
    git(["add", "-A"], dst)
    commit(dst, "calibration base")


def one_check(base: Path, work: Path, name: str, edit: Callable[[dict], None], args: list[str]) -> dict:
    """Branch `name` of a clone of base with edit applied to params.yaml, judged against main."""
    ws = work / name
    shutil.rmtree(ws, ignore_errors=True)
    git(["clone", "-q", str(base), str(ws)], work)
    git(["checkout", "-q", "-b", name], ws)
    p = yaml.safe_load((ws / "params.yaml").read_text())
    edit(p)
    (ws / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    commit(ws, name)
    t0 = time.perf_counter()
    with open(work / f"{name}.log", "w") as log:
        rc = subprocess.call([sys.executable, "-m", "pipelines.cli.check", "--base", "main", *args,
                              "--summary", str(work / f"{name}.md"), "--json", str(work / f"{name}.json")],
                             cwd=ws, env=env(), stdout=subprocess.DEVNULL, stderr=log)
    wall = time.perf_counter() - t0
    out = json.loads((work / f"{name}.json").read_text()) if (work / f"{name}.json").is_file() else {}
    return {"name": name, "exit": rc, "wall_s": wall, "verdict": out.get("verdict", "?"), "rows": out.get("rows", [])}


def _row(r: dict, expect: str) -> str:
    judged = "; ".join(f"{x['metric'].split('/')[1]} {x['diff']:+.2f} pp (detectable {x['detectable']:.2f}) "
                       f"{'FAIL' if x['fail'] else x['verdict']}" for x in r["rows"] if x.get("diff") is not None)
    return f"| {r['name']} | {expect} | {r['verdict']} | {r['exit']} | {r['wall_s']:.0f} | {judged} |"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.cli.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--seed-changes", type=int, default=10, help="seed-only changes (seed 43, 44, ...)")
    ap.add_argument("--bad-first", action="store_true", help="judge the known-bad changes before the seed-only ones")
    ap.add_argument("--bad", default="lr30,svm_c,alexnet_lr30", help=f"known-bad changes, of {','.join(BAD)}")
    ap.add_argument("--metrics", default="mnist_cnn,cifar_alexnet,tl_svm", help="variants whose accuracy is gated")
    ap.add_argument("--profile", default="gate", choices=["gate", "tiny"])
    ap.add_argument("--seeds", type=int, help="the head's runs per gated variant (the check's --seeds)")
    ap.add_argument("--base-seeds", type=int, help="the base's runs per gated variant (the check's --base-seeds)")
    ap.add_argument("--work", type=Path, help="folder for the scratch repositories, logs and cache (default: a new temporary one)")
    a = ap.parse_args(argv)
    bad = [b for b in a.bad.split(",") if b]
    unknown = [b for b in bad if b not in BAD]
    if unknown:
        print(f"error: --bad {','.join(unknown)}: unknown; known: {', '.join(BAD)}", file=sys.stderr)
        return 2
    work = a.work or Path(tempfile.mkdtemp(prefix="calibrate-gate-"))
    work.mkdir(parents=True, exist_ok=True)
    base = work / "base"
    if base.is_dir():   # an earlier calibration's: the same base commit, so its cached runs serve again
        print(f"reusing the scratch base {base} (its gated metrics are those it was made with)", flush=True)
    else:
        scratch_base(Path.cwd(), base, a.metrics.split(","))
    args = ["--profile", a.profile, "--cache", str(work / "cache")] + (["--seeds", str(a.seeds)] if a.seeds else []) \
        + (["--base-seeds", str(a.base_seeds)] if a.base_seeds else [])
    print(f"calibration in {work}; each check: python -m pipelines.cli.check --base main {' '.join(args)}", flush=True)
    print("| change | expected | verdict | exit | wall (s) | gated metrics |\n|---|---|---|---|---|---|", flush=True)
    changes = [(f"seed{43 + i}", "no change", lambda p, s=43 + i: p.update(seed=s)) for i in range(a.seed_changes)]
    wrong = [(b, "bad: " + BAD[b][0], BAD[b][1]) for b in bad]
    results = []
    for name, expect, edit in (wrong + changes if a.bad_first else changes + wrong):
        r = one_check(base, work, name, edit, args)
        results.append((expect, r))
        print(_row(r, expect), flush=True)
    same = [r for e, r in results if e == "no change"]
    worse = [r for e, r in results if e != "no change"]
    print(f"\nfalse alarms (FAIL on a seed-only change): {sum(r['exit'] == 1 for r in same)} of {len(same)}; "
          f"inconclusive: {sum(r['verdict'] == 'INCONCLUSIVE' for r in same)}")
    print(f"detections (FAIL on a known-bad change): {sum(r['exit'] == 1 for r in worse)} of {len(worse)}")
    walls = [r["wall_s"] for _, r in results]
    if walls:
        print(f"wall time per check: first (base reproduced) {walls[0]:.0f} s; others "
              + ", ".join(f"{w:.0f}" for w in walls[1:]) + " s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
