"""A scratch git repository of this project on the tiny profile, with the cheap chain reproduced
(tl_svm's train/evaluate/embed and the transfer data they need) and committed with its dvc.lock
and metrics, as a base revision. Built once per pytest session and shared by the test modules
that need it: the chain costs about a minute of CPU."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

import isolation
from pipelines import profiles

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
CHEAP_CHAIN = ["evaluate@tl_svm", "embed@tl_svm"]
# Stage outputs of the real repository: a real run may be writing them; never copy them.
OUTPUT_DIRS = ("data/", "models/", "metrics/", "results/", "reports/", "mlruns/", "mlartifacts/")
GIT_ID = ["-c", "user.email=t@localhost", "-c", "user.name=t"]


def env() -> dict:
    e = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": isolation.pythonpath(), "GIT_OPTIONAL_LOCKS": "0"}
    for k in ("MLFLOW_TRACKING_URI", "CLAIMS_REPRODUCED", "GITHUB_STEP_SUMMARY"):
        e.pop(k, None)
    return e


def sh(cmd: list[str], cwd: Path, ok: bool = True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, **kw)
    if ok:
        assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def git(args: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    return sh(["git", *GIT_ID, *args], cwd, **kw)


def _build(dst: Path) -> None:
    isolation.copy_checkout(dst, skip_prefixes=OUTPUT_DIRS)
    p = isolation.committed_params()
    p["protocol"] = "offline"  # Debian's Fashion-MNIST: no network, whatever the committed protocol
    (dst / "params.yaml").write_text(yaml.safe_dump(profiles.tiny(p), sort_keys=False))
    git(["init", "-q", "-b", "main"], dst)
    git(["add", "-A"], dst)
    git(["commit", "-qm", "tiny profile"], dst)
    sh(["dvc", "repro", *CHEAP_CHAIN], dst, timeout=600)
    # metrics/ is git-ignored in this project; a base that CI compares with must commit them.
    git(["add", "-f", "dvc.lock", "metrics"], dst)
    git(["add", "-A"], dst)
    git(["commit", "-qm", "cheap chain reproduced"], dst)


def tiny_base(tmp_path_factory) -> Path:
    """The session's base repository (build it on first use). Clone or copy it; never edit it."""
    root = tmp_path_factory.getbasetemp() / "tiny-base"
    done = root.with_suffix(".built")  # outside the repository: an untracked file would show in diffs
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        _build(root)
        done.write_text("")
    return root
