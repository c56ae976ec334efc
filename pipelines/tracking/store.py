"""Where runs go: the store's URI, its artifact folder, whether it can be reached, and the lock that
serialises the first touch of an SQLite store.

Default store: the embedded SQLite file `mlflow.db` at the repository root (git-ignored);
`MLFLOW_TRACKING_URI` points every stage at a tracking server instead.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from pipelines.errors import TrackingError

REPO = Path(__file__).resolve().parents[2]


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file (mlflow.db -> mlruns/),
    so a store outside the repository (tests, a scratch folder) never writes into it; None lets a
    tracking server choose (its --artifacts-destination)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def check_reachable(uri: str, timeout_s: float) -> None:
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as r:
                r.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingError(
                f"MLflow tracking server {uri} unreachable ({reason}); start it, or unset "
                "MLFLOW_TRACKING_URI to use the local store mlflow.db") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {folder} is not writable")


@contextlib.contextmanager
def store_lock(uri: str):
    """Serialise the first touch of an SQLite store: two processes creating its schema at once
    (parallel stages, `dvc queue start -j 2`) fail with "table ... already exists"."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock = Path(uri.removeprefix("sqlite:///") + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
