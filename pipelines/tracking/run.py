"""The MLflow run of a stage (the package pipelines/tracking is the only code that imports mlflow).

Layout of an experiment: one run per variant (named after it; params, the model, its datasets, and
the headline metrics `val_accuracy`/`test_accuracy` under the same keys for every variant), with one
child run per stage (`train`, `evaluate`, `embed`) that holds that stage's metrics, artifacts and
system metrics. Each run starts and ends with the work it records, so its duration is that work's:
the variant run spans the train stage (training plus logging the model); the evaluate and embed
stages add child runs later without reopening it. The report stage has a run of its own.

The store (store.py): `mlflow.db` at the repository root, or `MLFLOW_TRACKING_URI`. A store that cannot be
reached fails the stage within `tracking.connect_timeout_s` with the URI in the message,
before any work is done, so results are never computed and then silently not recorded.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

from pipelines import io
from pipelines.config import Params
from pipelines.errors import TrackingError
from pipelines.tracking.registry import log_pyfunc
from pipelines.tracking.store import REPO, artifact_location, check_reachable, store_lock, tracking_uri


class _Terminated(BaseException):
    """Raised from the SIGTERM handler so the run is closed as KILLED instead of left RUNNING."""


def _on_sigterm(signum, frame):
    raise _Terminated()


# MLflow 3's record of what an experiment is for: model training, not GenAI (traces, token usage).
# MLflow 3.17.2's own UI follows its "GenAI / Model training" switch instead (docs/mlflow.md).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def _experiment(mlflow, name: str, uri: str) -> str:
    """The id of experiment `name`, created (artifacts beside an SQLite store) or retagged as needed."""
    exp = mlflow.get_experiment_by_name(name)
    if exp is None:
        mlflow.create_experiment(name, artifact_location=artifact_location(uri),
                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    elif exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        mlflow.MlflowClient().set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return mlflow.set_experiment(name).experiment_id


class Run:
    """One MLflow run for a stage of a variant.

    with Run(params, stage="train", name="mnist_cnn", variant_run=True) as run:
        run.log_params({...}); run.log_metrics({...}, step=1); run.log_artifact(path)
        run.finish_stage()            # the `train` child ends; later calls log to the variant run
        run.log_model(model_dir / "model.pt", example)

    variant_run=True opens the variant's run and, nested in it, a child run named after the stage.
    resume=<run.json written by the train stage>: the run is a child of that variant run (which is
    not reopened); when that run is not in this store, a stand-alone run named after the variant.
    """

    def __init__(self, params: Params, stage: str, name: str, resume: Optional[Path] = None,
                 tags: Optional[dict] = None, system_metrics: bool = True, variant_run: bool = False):
        self.params, self.stage, self.name = params, stage, name
        self.resume, self.extra_tags, self.system_metrics = resume, dict(tags or {}), system_metrics
        self.variant_run = variant_run
        self.run_id: Optional[str] = None
        self.variant_run_id: Optional[str] = None
        self.stage_run_id: Optional[str] = None
        self._open = 0

    def __enter__(self) -> "Run":
        timeout = self.params.tracking.connect_timeout_s
        # A dead server must cost seconds, not mlflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(timeout, 1))))
        uri = tracking_uri()
        check_reachable(uri, timeout)
        import mlflow

        self._mlflow = mlflow
        mlflow.set_tracking_uri(uri)
        try:
            with store_lock(uri):
                experiment_id = _experiment(mlflow, self.params.tracking.experiment, uri)
            if self.system_metrics:
                mlflow.set_system_metrics_sampling_interval(self.params.tracking.system_metrics_interval_s)
                mlflow.set_system_metrics_samples_before_logging(1)
            active = self._start_runs(mlflow, experiment_id)
        except Exception as e:  # any store failure: say where, stop the stage
            with contextlib.suppress(Exception):  # a run already opened is closed, if the store lets us
                self._end_open("FAILED")
            raise TrackingError(f"MLflow store {uri}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        self.stage_run_id = active.info.run_id
        self.run_id = self.variant_run_id if self.variant_run else active.info.run_id
        self.experiment_id = active.info.experiment_id
        self.uri = uri
        self._old_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        return self

    def _start_runs(self, mlflow, experiment_id: str):
        """Start the run(s) this stage logs to and return the active one (see the class docstring)."""
        parent_id = self._parent_run_id(mlflow)
        tags = {
            "git_commit": io.git_commit(REPO, mark_dirty=True) or "unknown",
            "protocol": self.params.protocol,
            "dvc_stage": f"{self.stage}@{self.name}" if self.stage != "report" else "report",
            **self.extra_tags,
        }
        stage_tags = {**tags, f"stage.{self.stage}": "ran"}
        if self.variant_run:
            variant = mlflow.start_run(experiment_id=experiment_id, run_name=self.name, tags=tags)
            self._open = 1
            self.variant_run_id = variant.info.run_id
            active = mlflow.start_run(run_name=self.stage, nested=True, tags=stage_tags,
                                      log_system_metrics=self.system_metrics)
        elif parent_id:
            self.variant_run_id = parent_id
            active = mlflow.start_run(experiment_id=experiment_id, run_name=self.stage,
                                      tags={**stage_tags, "mlflow.parentRunId": parent_id},
                                      log_system_metrics=self.system_metrics)
        else:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=self.name, tags=stage_tags,
                                      log_system_metrics=self.system_metrics)
        self._open += 1
        return active

    def _parent_run_id(self, mlflow) -> Optional[str]:
        if self.resume is None or not self.resume.exists():
            return None
        run_id = io.read_json(self.resume).get("run_id")
        try:
            mlflow.get_run(run_id)
            return run_id
        except Exception:
            # Run-cache restores and other stores: the variant run is not in this store; start anew.
            self.extra_tags["train_run_missing"] = str(run_id)
            return None

    def _end_open(self, status: str) -> None:
        while self._open:
            self._open -= 1
            self._mlflow.end_run(status=status)

    def finish_stage(self) -> None:
        """End the stage's child run (variant_run=True); later calls log to the variant run."""
        if self.variant_run and self._open == 2:
            self._open -= 1
            self._call(self._mlflow.end_run, status="FINISHED")

    def __exit__(self, exc_type, exc, tb) -> bool:
        signal.signal(signal.SIGTERM, self._old_handler)
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, (KeyboardInterrupt, _Terminated)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            self._end_open(status)
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
        rec = {"run_id": self.run_id, "experiment_id": self.experiment_id, "tracking_uri": self.uri}
        if self.variant_run:
            rec[f"{self.stage}_run_id"] = self.stage_run_id
        return rec

    def log_variant_metrics(self, metrics: dict) -> None:
        """Metrics on the variant run (the keys every variant shares), without reopening it."""
        if self.variant_run_id is None:  # a stand-alone run stands for the variant
            return self.log_metrics(metrics)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v]
        self._call(self._mlflow.MlflowClient().log_batch, self.variant_run_id, metrics=batch)

    def log_datasets(self, datasets: list[dict], variant_too: bool = False) -> None:
        """Dataset inputs of the active run (and the variant run): each dict has name, x, y, source
        (the file), digest, context (training/validation/test), classes, data_source."""
        from mlflow.entities import DatasetInput, InputTag

        inputs = []
        for d in datasets:
            with warnings.catch_warnings():
                # A local path matches two equivalent local-artifact source classes; MLflow warns, then picks one.
                warnings.simplefilter("ignore", UserWarning)
                ds = self._mlflow.data.from_numpy(d["x"], targets=d["y"], source=str(d["source"]), name=d["name"],
                                                  digest=d["digest"][:36])
            tags = {"mlflow.data.context": d["context"], "classes": ", ".join(d["classes"])[:500],
                    "data_source": str(d["data_source"])}
            inputs.append(DatasetInput(ds._to_mlflow_entity(), [InputTag(k, v) for k, v in tags.items()]))
        client = self._mlflow.MlflowClient()
        targets = [self.stage_run_id] + ([self.variant_run_id] if variant_too and self.variant_run_id else [])
        for run_id in targets:
            self._call(client.log_inputs, run_id, datasets=inputs)

    def log_model(self, weights: Path, example, options: dict, metadata: dict) -> dict:
        """The variant as an MLflow Model named `model` in the active run (see pipelines/tracking/model.py).
        Returns {"model_uri", "seconds"}."""
        t0 = time.perf_counter()
        info = self._call(log_pyfunc, self._mlflow, weights, example, options, metadata)
        return {"model_uri": f"runs:/{self._mlflow.active_run().info.run_id}/model",
                "model_id": getattr(info, "model_id", None), "seconds": time.perf_counter() - t0}

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """A list of row dicts as an MLflow table (shown in the run's artifacts and the UI's evaluation view)."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = {c: [r.get(c) for r in rows] for c in columns}
        self._call(self._mlflow.log_table, data=data, artifact_file=artifact_file)

    def log_params(self, params: dict) -> None:
        """Params of the run; with variant_run=True, of the variant run (the one variants are compared by)."""
        clean = {k: str(v)[:6000] for k, v in params.items()}
        if self.variant_run:
            from mlflow.entities import Param

            self._call(self._mlflow.MlflowClient().log_batch, self.variant_run_id,
                       params=[Param(k, v) for k, v in clean.items()])
        else:
            self._call(self._mlflow.log_params, clean)

    def log_metrics(self, metrics: dict, step: Optional[int] = None) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
        self._call(self._mlflow.log_metrics, clean, step=step)

    def log_artifact(self, path: Path | str, folder: Optional[str] = None) -> None:
        self._call(self._mlflow.log_artifact, str(path), artifact_path=folder)

    def log_artifacts(self, path: Path | str, folder: Optional[str] = None) -> None:
        self._call(self._mlflow.log_artifacts, str(path), artifact_path=folder)

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
