"""MLflow, and nothing else, lives here: the only module that imports mlflow.

Default store: the embedded SQLite file `mlflow.db` at the repository root (git-ignored);
`MLFLOW_TRACKING_URI` points every stage at a tracking server instead. A store that cannot be
reached fails the stage within `tracking.connect_timeout_s` with the URI in the message,
before any work is done, so results are never computed and then silently not recorded.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from pipelines import io
from pipelines.config import Params

REPO = Path(__file__).resolve().parents[1]


class TrackingError(RuntimeError):
    pass


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO / 'mlflow.db'}"


def artifact_location(uri: str) -> Optional[str]:
    """Where a new experiment keeps its artifacts: beside a SQLite store's file (mlflow.db -> mlruns/),
    so a store outside the repository (tests, a scratch folder) never writes into it; None lets a
    tracking server choose (its --artifacts-destination)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlruns").as_uri()
    return None


def _check_reachable(uri: str, timeout_s: float) -> None:
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


def git_commit() -> str:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock from a concurrent commit.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10, env=env).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


@contextlib.contextmanager
def _store_lock(uri: str):
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


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so the run is closed as KILLED instead of left RUNNING."""


def _on_sigterm(signum, frame):
    raise _Terminated()


class Run:
    """One MLflow run for a stage of a variant; resumes the variant's train run when it exists.

    with Run(params, stage="train", name="mnist_cnn", resume=None) as run:
        run.log_params({...}); run.log_metrics({...}, step=1); run.log_artifact(path)
    """

    def __init__(self, params: Params, stage: str, name: str, resume: Optional[Path] = None,
                 tags: Optional[dict] = None, system_metrics: bool = True):
        self.params, self.stage, self.name = params, stage, name
        self.resume, self.extra_tags, self.system_metrics = resume, dict(tags or {}), system_metrics
        self.run_id: Optional[str] = None

    def __enter__(self) -> "Run":
        timeout = self.params.tracking.connect_timeout_s
        # A dead server must cost seconds, not mlflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout, 1))))
        uri = tracking_uri()
        _check_reachable(uri, timeout)
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        try:
            with _store_lock(uri):
                name = self.params.tracking.experiment
                if mlflow.get_experiment_by_name(name) is None:
                    mlflow.create_experiment(name, artifact_location=artifact_location(uri))
                exp = mlflow.set_experiment(name)
            run_id = self._resumable_run_id(mlflow)
            if self.system_metrics:
                mlflow.set_system_metrics_sampling_interval(self.params.tracking.system_metrics_interval_s)
                mlflow.set_system_metrics_samples_before_logging(1)
            tags = {
                "git_commit": git_commit(),
                "protocol": self.params.protocol,
                "dvc_stage": f"{self.stage}@{self.name}" if self.stage != "report" else "report",
                **self.extra_tags,
            }
            active = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else exp.experiment_id,
                                      run_name=None if run_id else self.name,
                                      log_system_metrics=self.system_metrics)
            mlflow.set_tags({**tags, f"stage.{self.stage}": "ran"})
        except Exception as e:  # any store failure: say where, stop the stage
            raise TrackingError(f"MLflow store {uri}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        self.run_id = active.info.run_id
        self.experiment_id = active.info.experiment_id
        self.uri = uri
        self._old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def _resumable_run_id(self, mlflow) -> Optional[str]:
        if self.resume is None or not self.resume.exists():
            return None
        run_id = io.read_json(self.resume).get("run_id")
        try:
            mlflow.get_run(run_id)
            return run_id
        except Exception:
            # Run-cache restores and other stores: the train run is not in this store; start anew.
            self.extra_tags["train_run_missing"] = str(run_id)
            return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        signal.signal(signal.SIGTERM, self._old_handler)
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, _Terminated)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            self._mlflow.end_run(status=status)
        except Exception as e:
            if exc_type is None:
                raise self._error(e) from None
            # Already failing (often for the same reason: the store went away): keep that error.
            print(f"warning: could not close MLflow run {self.run_id} as {status} on {self.uri}: "
                  f"{str(e).splitlines()[0][:200]}", file=sys.stderr)
        if exc_type is _Terminated:
            raise SystemExit(143)
        return False

    def _error(self, e: Exception) -> TrackingError:
        return TrackingError(f"MLflow store {self.uri} failed during run {self.run_id}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0][:300]}; the per-epoch checkpoint "
                             "lets `LAB_RESUME=1 dvc repro` continue once the store is back")

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # a store that goes away mid-run: one line naming it, not a traceback
            raise self._error(e) from None

    def record(self) -> dict:
        return {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}

    def log_params(self, params: dict) -> None:
        self._call(self._mlflow.log_params, {k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        self._call(self._mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: Path | str, folder: Optional[str] = None) -> None:
        self._call(self._mlflow.log_artifact, str(path), artifact_path=folder)

    def log_artifacts(self, path: Path | str, folder: Optional[str] = None) -> None:
        self._call(self._mlflow.log_artifacts, str(path), artifact_path=folder)

    def log_table(self, header, rows, artifact_file: str) -> None:
        """A table artifact MLflow's UI shows (Artifacts, or Evaluation for run-level comparison); cells as text."""
        data = {h: [str(r[i]) for r in rows] for i, h in enumerate(header)}
        self._call(self._mlflow.log_table, data=data, artifact_file=artifact_file)

    def set_tags(self, tags: dict) -> None:
        self._call(self._mlflow.set_tags, {k: str(v) for k, v in tags.items()})


def flat_params(prefix: str, obj) -> dict:
    """Flatten a pydantic model / dict into dotted MLflow params."""
    data = obj.model_dump() if hasattr(obj, "model_dump") else obj
    out = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flat_params(key, v))
        else:
            out[key] = v
    return out
