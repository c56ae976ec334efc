"""The recipes of docs/scaling.md, for real: a shared DVC remote (push from one clone, pull
into another that then reproduces nothing), and an MLflow tracking server backed by PostgreSQL."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import scratch_repo
from scratch_repo import CHEAP_CHAIN, FASHION, git, sh
from test_tracking import _free_port, _http_status

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- DVC remote
@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (.ci/setup installs it)")
def test_dvc_remote_push_pull(tmp_path_factory, tmp_path):
    base = scratch_repo.tiny_base(tmp_path_factory)
    first = tmp_path / "first"
    shutil.copytree(base, first, symlinks=True)  # a clone that ran the chain: its cache is full
    remote = tmp_path / "remote"
    sh(["dvc", "remote", "add", "-d", "local", str(remote)], first)
    git(["commit", "-qam", "shared DVC remote"], first)
    pushed = sh(["dvc", "push"], first).stdout
    assert "pushed" in pushed and any(remote.rglob("*")), pushed

    second = tmp_path / "second"
    git(["clone", "-q", str(first), str(second)], tmp_path)
    assert not (second / "data").exists() and not (second / "models").exists()
    # Only the cheap chain was ever reproduced: a plain `dvc pull` fails on the stages dvc.lock lacks.
    sh(["dvc", "pull", *CHEAP_CHAIN, "--with-deps"], second)
    status = sh(["dvc", "status", *CHEAP_CHAIN, "--with-deps"], second).stdout
    assert "Data and pipelines are up to date" in status, status
    log = sh(["dvc", "repro", *CHEAP_CHAIN], second).stdout
    assert "Running stage" not in log, log
    assert (second / "models/tl_svm/model.pt").is_file()


# ------------------------------------------------------------------- MLflow on PostgreSQL
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (free port, trust auth, database `mlflow`)."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries absent (.ci/setup installs Debian's postgresql)")
    import psycopg2  # noqa: F401  (required: requirements.txt; mlflow's postgresql+psycopg2 driver)
    # initdb refuses to run as root: run the cluster as the `postgres` user, in a folder it owns
    # outside pytest's root-only tmp tree.
    as_user: list[str] = []
    top = Path(tempfile.mkdtemp(prefix="pg-"))
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(top)
            pytest.skip("running as root and there is no `postgres` user to run the cluster as")
        os.chown(top, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = top / "data", _free_port()

    def pg(*cmd: str, **kw):
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120, **kw)

    r = pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
    assert r.returncode == 0, r.stderr
    r = pg(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(top / "pg.log"), "-w", "-t", "60",
           "-o", f"-h 127.0.0.1 -p {port} -k {top}", "start")
    assert r.returncode == 0, r.stdout + r.stderr + (top / "pg.log").read_text()
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE mlflow")
        conn.close()
        # The driver named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not psycopg2.
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def pg_server(postgres, tmp_path):
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    # The README's command: postgres for runs/params/metrics, a folder the server serves artifacts from.
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
           "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "wb") as out:
        # Own process group: the server's workers must go with it at teardown.
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90  # schema migrations on postgres plus a cold start on 2 busy cores
        while True:
            assert proc.poll() is None, f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                if _http_status(uri + "/health") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow server not healthy in 90 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


def test_mlflow_server_on_postgres(pg_server, make_params, monkeypatch, tmp_path):
    import mlflow

    from pipelines.tracking import Run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pg_server)
    monkeypatch.setenv("GIT_OPTIONAL_LOCKS", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    params = make_params({"tracking": {"experiment": "postgres-tests", "connect_timeout_s": 10}})
    art = tmp_path / "history.csv"
    art.write_text("epoch,loss\n1,0.9\n2,0.4\n")
    with Run(params, "train", "tl_svm", system_metrics=False) as run:
        run.log_params({"svm_c": 1.0})
        for step, loss in enumerate([0.9, 0.4], start=1):
            run.log_metrics({"loss": loss}, step=step)
        run.log_artifact(art, folder="tables")

    client = mlflow.MlflowClient(tracking_uri=pg_server)
    r = client.get_run(run.run_id)
    assert r.info.status == "FINISHED"
    assert r.data.params["svm_c"] == "1.0"
    assert r.data.tags["dvc_stage"] == "train@tl_svm" and r.data.tags["stage.train"] == "ran"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 0.9), (2, 0.4)]
    assert [a.path for a in client.list_artifacts(run.run_id, "tables")] == ["tables/history.csv"]
    got = Path(client.download_artifacts(run.run_id, "tables/history.csv", str(tmp_path / "dl")))
    assert got.read_text() == art.read_text()
    assert client.get_experiment(r.info.experiment_id).name == "postgres-tests"
    assert run.record()["tracking_uri"] == pg_server
    # The run lives in postgres, not in a file store next to the server.
    assert not list(tmp_path.glob("*.db"))
