"""What the tests build their params and subprocesses from, instead of the checkout's state.

Params come from the committed params.yaml and reference.yaml (`git show HEAD:params.yaml`), never
from the working files: `make run` rewrites `protocol:` in params.yaml and a user may edit any value,
while the committed files are the ones the code was reviewed and tested with. A copy under tests/
would be a second file to keep in step with them by hand. An uncommitted change to either is
therefore tested once it is committed (commit it, or run the tests in a scratch clone)."""
from __future__ import annotations

import copy
import functools
import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).resolve().parent / "netguard"  # its sitecustomize.py guards subprocesses


PARAMS_FILES = ("params.yaml", "reference.yaml")   # the knobs, and what the results are judged against


@functools.lru_cache(maxsize=None)
def committed_text(name: str) -> str:
    """One of PARAMS_FILES as committed."""
    r = subprocess.run(["git", "show", f"HEAD:{name}"], cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"the tests read {name} as committed (git show HEAD:{name} in {REPO}): "
                           f"{r.stderr.strip()}")
    return r.stdout


def committed_params_text() -> str:
    return committed_text("params.yaml")


def committed_params() -> dict:
    """A fresh copy of the committed params.yaml, to change at will."""
    return copy.deepcopy(_parsed("params.yaml"))


def committed_reference() -> dict:
    """A fresh copy of the committed reference.yaml, to change at will."""
    return copy.deepcopy(_parsed("reference.yaml"))


@functools.lru_cache(maxsize=None)
def _parsed(name: str) -> dict:
    return yaml.safe_load(committed_text(name))


def pythonpath(*extra) -> str:
    """PYTHONPATH for a subprocess: the network guard first, then the given folders."""
    return os.pathsep.join([str(NETGUARD), *map(str, extra)])


def copy_checkout(dst: Path, skip=("dvc.lock",), skip_prefixes: tuple[str, ...] = ()) -> None:
    """The checkout's files (tracked and untracked, not ignored) into dst, PARAMS_FILES as committed."""
    import shutil

    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for f in files:
        if f and f not in skip and not f.startswith(skip_prefixes) and (REPO / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dst / f)
    for name in PARAMS_FILES:
        (dst / name).write_text(committed_text(name))
