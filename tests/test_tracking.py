"""pipelines.tracking against real MLflow stores: an embedded SQLite file and a local server.

Nothing here touches the repository's own mlflow.db: every test points MLFLOW_TRACKING_URI at
a temporary store first.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pipelines import io, tracking
from pipelines.tracking import Run, TrackingError

import isolation

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    # git_commit() runs `git status`; without this it may refresh the repository's index while
    # someone else commits.
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    # Run.__enter__ sets these with setdefault; keep them per test so none leaks into the next.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


@pytest.fixture(scope="module")
def sqlite_uri(tmp_path_factory) -> str:
    # One store for the module: creating the schema costs seconds.
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"


@pytest.fixture
def store(sqlite_uri, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    return mlflow.MlflowClient(tracking_uri=sqlite_uri)


@pytest.fixture
def params(make_params):
    return make_params({"tracking": {"experiment": "tracking-tests", "connect_timeout_s": 3}})


def test_default_store_is_the_repository_sqlite_file(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri() == f"sqlite:///{REPO / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"


# ------------------------------------------------------------------------- embedded SQLite
def test_run_logs_params_metrics_artifact_and_finishes(store, params, tmp_path):
    art = tmp_path / "history.csv"
    art.write_text("epoch,loss\n1,0.9\n2,0.4\n")
    with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
        run.log_params({"lr": 0.001, "layers": {"a": 1}})
        for step, loss in enumerate([0.9, 0.4, 0.2], start=1):
            run.log_metrics({"loss": loss, "skipped": float("nan"), "note": "text"}, step=step)
        run.log_artifact(art)
        run.log_artifact(art, folder="tables")
    r = store.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["lr"] == "0.001"
    assert r.data.tags["dvc_stage"] == "train@mnist_cnn"
    assert r.data.tags["protocol"] == params.protocol
    assert r.data.tags["stage.train"] == "ran"
    assert r.data.tags["git_commit"] and r.data.tags["git_commit"] != ""
    history = store.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.4), (3, 0.2)]
    # NaN and non-numbers are dropped rather than failing the stage.
    assert "skipped" not in r.data.metrics and "note" not in r.data.metrics
    assert {a.path for a in store.list_artifacts(run.run_id)} == {"history.csv", "tables"}
    assert run.record() == {"run_id": run.run_id, "experiment_id": r.info.experiment_id,
                            "tracking_uri": os.environ["MLFLOW_TRACKING_URI"]}
    assert store.get_experiment(r.info.experiment_id).name == "tracking-tests"
    # Artifacts live beside the store's file, not in the working directory.
    store_dir = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).parent
    assert r.info.artifact_uri.startswith((store_dir / "mlruns").as_uri())
    assert (store_dir / "mlruns" / run.run_id / "artifacts" / "tables" / "history.csv").is_file()


def test_variant_run_with_stage_children_keeps_each_duration(store, params, tmp_path):
    with Run(params, "train", "mnist_cnn", system_metrics=False, variant_run=True) as train:
        train.log_params({"lr": 0.001})
        train.log_metrics({"loss": 1.0}, step=1)
        train.finish_stage()
        train.log_metrics({"val_accuracy": 80.0})
    run_json = tmp_path / "run.json"
    io.write_json(run_json, train.record())
    assert train.record()["train_run_id"] == train.stage_run_id != train.run_id
    time.sleep(0.05)
    with Run(params, "evaluate", "mnist_cnn", resume=run_json, system_metrics=False) as ev:
        ev.log_metrics({"test_acc": 0.9})
        ev.log_variant_metrics({"test_accuracy": 90.0})
    variant, child_train, child_eval = (store.get_run(i) for i in (train.run_id, train.stage_run_id, ev.run_id))
    assert variant.info.run_name == "mnist_cnn" and child_train.info.run_name == "train"
    assert child_eval.info.run_name == "evaluate" and ev.variant_run_id == train.run_id
    for child in (child_train, child_eval):
        assert child.data.tags["mlflow.parentRunId"] == train.run_id
    assert all(r.info.status == "FINISHED" for r in (variant, child_train, child_eval))
    # The variant run is not reopened: its end is the train stage's, before evaluate began.
    assert variant.info.end_time <= child_eval.info.start_time
    assert variant.data.params == {"lr": "0.001"} and child_train.data.params == {}
    assert child_train.data.metrics == {"loss": 1.0} and child_eval.data.metrics == {"test_acc": 0.9}
    assert variant.data.metrics == {"val_accuracy": 80.0, "test_accuracy": 90.0}
    assert child_eval.data.tags["stage.evaluate"] == "ran" and "train_run_missing" not in child_eval.data.tags
    exp = store.get_experiment(variant.info.experiment_id)
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_a_failing_train_stage_ends_both_runs_failed(store, params):
    with pytest.raises(ZeroDivisionError):
        with Run(params, "train", "mnist_cnn", system_metrics=False, variant_run=True) as run:
            1 / 0
    assert store.get_run(run.run_id).info.status == "FAILED"
    assert store.get_run(run.stage_run_id).info.status == "FAILED"


def test_register_champion_moves_the_alias_without_duplicates(store, params, tmp_path, monkeypatch):
    import mlflow

    import numpy as np

    from pipelines import models

    cfg = {"model": "simple_cnn", "in_channels": 1, "image_size": 8, "n_classes": 2, "hidden": 0,
           "classes": ["a", "b"], "mean": [0.5], "std": [0.5]}
    models.save_checkpoint(tmp_path / "model.pt", models.build(cfg), cfg)
    ids = []
    for _ in range(2):
        with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
            run.log_model(tmp_path / "model.pt", np.zeros((1, 8, 8, 1), np.uint8), {"precision": "fp32"}, {})
        ids.append(run.run_id)
    name = f"champion-test-{tmp_path.name}"
    assert tracking.register_champion(name, ids[0], {"variant": "a"}) == "1"
    assert tracking.register_champion(name, ids[0], {"variant": "a"}) == "1"  # same run: same version
    assert tracking.register_champion(name, ids[1], {"variant": "b"}) == "2"
    assert store.get_model_version_by_alias(name, "champion").run_id == ids[1]
    assert tracking.register_champion(name, ids[0], {"variant": "a"}) == "1"  # back: alias moves, no v3
    assert str(store.get_model_version_by_alias(name, "champion").version) == "1"
    assert len(store.search_model_versions(f"name = '{name}'")) == 2


def test_resume_of_a_run_not_in_this_store_starts_a_new_run(store, params, tmp_path):
    # A run.json restored from the DVC run cache names a run of some other store.
    ghost = "0" * 32
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"run_id": ghost, "experiment_id": "1", "tracking_uri": "sqlite:///elsewhere"}))
    with Run(params, "embed", "mnist_cnn", resume=run_json, system_metrics=False) as run:
        pass
    assert run.run_id != ghost
    r = store.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.tags["train_run_missing"] == ghost
    assert r.data.tags["dvc_stage"] == "embed@mnist_cnn"


def test_resume_file_absent_starts_a_new_run(store, params, tmp_path):
    with Run(params, "evaluate", "mnist_cnn", resume=tmp_path / "none.json", system_metrics=False) as run:
        pass
    assert "train_run_missing" not in store.get_run(run.run_id).data.tags


def test_exception_ends_the_run_failed(store, params):
    with pytest.raises(ZeroDivisionError):
        with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
            1 / 0
    assert store.get_run(run.run_id).info.status == "FAILED"


def test_keyboard_interrupt_ends_the_run_killed(store, params):
    with pytest.raises(KeyboardInterrupt):
        with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
            raise KeyboardInterrupt
    assert store.get_run(run.run_id).info.status == "KILLED"


def test_sigterm_in_process_ends_killed_exits_143_and_restores_handler(store, params):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as info:
        with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this at once
    assert info.value.code == 143
    assert store.get_run(run.run_id).info.status == "KILLED"
    assert signal.getsignal(signal.SIGTERM) is before


_SLEEPER = """
import sys, time
from pipelines.config import load
from pipelines.tracking import Run
with Run(load(sys.argv[1]), "train", "mnist_cnn", system_metrics=False) as run:
    print(run.run_id, flush=True)
    time.sleep(60)
"""


def test_sigterm_to_a_stage_process_leaves_the_run_killed(store, sqlite_uri, tmp_path):
    # A real process, as DVC or a CI runner would terminate it.
    env = {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO), "MLFLOW_TRACKING_URI": sqlite_uri}
    (tmp_path / "params.yaml").write_text(isolation.committed_params_text())
    proc = subprocess.Popen([sys.executable, "-c", _SLEEPER, str(tmp_path / "params.yaml")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, proc.stderr.read()
        assert store.get_run(run_id).info.status == "RUNNING"
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 143
    assert store.get_run(run_id).info.status == "KILLED"


def test_sqlite_store_in_a_missing_folder_is_refused(params, tmp_path, monkeypatch):
    # Checked before the stage works, so a whole training is never computed and then not recorded.
    uri = f"sqlite:///{tmp_path / 'no' / 'such' / 'm.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(TrackingError, match="not writable") as info:
        with Run(params, "train", "mnist_cnn", system_metrics=False):
            pytest.fail("the block ran without a usable store")
    assert uri in str(info.value)


# ------------------------------------------------------------------------- tracking server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_status(url: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class Server:
    def __init__(self, tmp: Path):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        # The command docs/mlflow.md gives: loopback only, and only its own names as Host headers.
        self.cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
                    "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp / 's.db'}",
                    "--artifacts-destination", str(tmp / "art"),
                    "--allowed-hosts", f"127.0.0.1:{self.port},localhost:{self.port}"]
        with open(self.log, "wb") as log:
            # Own process group: uvicorn and the job runner are children and must go with it.
            self.proc = subprocess.Popen(self.cmd, cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_healthy(self, deadline_s: float) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < deadline_s:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                if _http_status(self.uri + "/health") == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        pytest.fail(f"mlflow server not healthy within {deadline_s} s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("server"))
    try:
        srv.wait_healthy(45)  # seconds: startup alone takes ~20 s on a busy 2-core machine
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_server_refuses_a_foreign_host_header(server):
    # DNS rebinding: a page on evil.example.com resolving to 127.0.0.1 must not read the UI or API.
    api = f"{server.uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _http_status(server.uri + "/") == 200
    assert _http_status(api) == 200
    assert _http_status(api, host=f"localhost:{server.port}") == 200
    for url in (server.uri + "/", api):
        status = _http_status(url, host="evil.example.com")
        assert 400 <= status < 500, (url, status)
    assert _http_status(api, host=f"evil.example.com:{server.port}") in range(400, 500)


@pytest.mark.slow
def test_server_run_then_server_gone_fails_fast(server, params, monkeypatch, tmp_path):
    # Runs after the host-header test (file order): it stops the shared server.
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    art = tmp_path / "confusion.json"
    art.write_text("[[1, 0], [0, 1]]")
    with Run(params, "train", "mnist_cnn", system_metrics=False) as run:
        run.log_params({"epochs": 1})
        run.log_metrics({"loss": 0.5}, step=1)
        run.log_artifact(art)
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED" and r.data.params["epochs"] == "1"
    assert r.data.tags["dvc_stage"] == "train@mnist_cnn"
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["confusion.json"]
    assert run.record()["tracking_uri"] == server.uri

    # The server dies in the middle of a run: the next logging call fails within seconds with one
    # line naming the store, and closing the run does not hang or hide that error.
    t0 = None
    with pytest.raises(TrackingError) as mid:
        with Run(params, "evaluate", "mnist_cnn", system_metrics=False) as r2:
            r2.log_metrics({"acc": 1.0}, step=1)
            server.stop()
            t0 = time.monotonic()
            r2.log_metrics({"acc": 2.0}, step=2)
    assert time.monotonic() - t0 < 30, time.monotonic() - t0
    assert server.uri in str(mid.value) and "\n" not in str(mid.value)
    assert "LAB_RESUME=1" in str(mid.value)

    t0 = time.monotonic()
    with pytest.raises(TrackingError) as info:
        with Run(params, "evaluate", "mnist_cnn", system_metrics=False):
            pytest.fail("the block ran against a dead server")
    elapsed = time.monotonic() - t0
    assert server.uri in str(info.value)
    assert "\n" not in str(info.value)
    assert elapsed < 15, elapsed


def test_server_that_accepts_but_never_answers_fails_within_the_timeout(params, monkeypatch):
    # Worse than a refused connection: the socket is open, nothing ever replies.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match="unreachable") as info:
            with Run(params, "train", "mnist_cnn", system_metrics=False):
                pytest.fail("the block ran against a silent server")
        elapsed = time.monotonic() - t0
    assert uri in str(info.value)
    timeout = params.tracking.connect_timeout_s
    assert timeout - 0.5 <= elapsed < timeout + 5, elapsed
