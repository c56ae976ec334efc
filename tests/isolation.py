"""What the tests build their params and subprocesses from, instead of the checkout's state.

Params come from the committed params.yaml (`git show HEAD:params.yaml`), never from the working
file: `make run` rewrites `protocol:` there and a user may edit any value, while the committed
file is the one the code was reviewed and tested with. A copy under tests/ would be a second file
to keep in step with it by hand. An uncommitted params.yaml change is therefore tested once it is
committed (commit it, or run the tests in a scratch clone)."""
from __future__ import annotations

import copy
import functools
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"  # its sitecustomize.py guards subprocesses


@functools.lru_cache(maxsize=None)
def committed_params_text() -> str:
    r = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the tests read params.yaml as committed (git show HEAD:params.yaml in {REPO}): "
                           f"{r.stderr.strip()}")
    return r.stdout


def committed_params() -> dict:
    """A fresh copy of the committed params.yaml, to change at will."""
    return copy.deepcopy(_parsed())


@functools.lru_cache(maxsize=None)
def _parsed() -> dict:
    return yaml.safe_load(committed_params_text())


def pythonpath(*extra) -> str:
    """PYTHONPATH for a subprocess: the network guard first, then the given folders."""
    return os.pathsep.join([str(NETGUARD), *map(str, extra)])


def copy_checkout(dst: Path, skip=("dvc.lock",), skip_prefixes: tuple[str, ...] = ()) -> None:
    """The checkout's files (tracked and untracked, not ignored) into dst, params.yaml as committed."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for f in files:
        if f and f not in skip and not f.startswith(skip_prefixes) and (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    (dst / "params.yaml").write_text(committed_params_text())
