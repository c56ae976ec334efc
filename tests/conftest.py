"""Shared fixtures: params built from the committed params.yaml with overrides, a local HTTP
server that misbehaves on request (the download code runs unpatched against it), and the
isolation of every test from the checkout's state: its environment (DVC_*, MLFLOW_*), its
params.yaml, and the network beyond loopback."""
from __future__ import annotations

import copy
import importlib.util
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from pipelines.config import REFERENCE_KEYS, Params, parse
from pipelines.data import sources

import fakedata
import isolation

REPO = Path(__file__).resolve().parents[1]
# Variables that change what the code under test does; a test that wants one sets it itself.
ENV_PREFIXES = ("DVC_", "MLFLOW_")
ENV_NAMES = ("LAB_RESUME", "CLAIMS_REPRODUCED", "GITHUB_STEP_SUMMARY")


def _netguard():
    spec = importlib.util.spec_from_file_location("netguard", isolation.NETGUARD / "sitecustomize.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 10 s")
    _netguard().install()  # this process; subprocesses load it through PYTHONPATH


def _netguard_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture(scope="session", autouse=True)
def _isolated_environment(tmp_path_factory):
    """For the whole run: no DVC_*/MLFLOW_* variable of the caller's shell, analytics off, and
    every Python subprocess guarded against non-loopback connections."""
    log = tmp_path_factory.getbasetemp() / "netguard.log"
    with pytest.MonkeyPatch.context() as mp:
        for k in list(os.environ):
            if k.startswith(ENV_PREFIXES) or k in ENV_NAMES:
                mp.delenv(k)
        mp.setenv("DVC_NO_ANALYTICS", "1")
        # The guard's folder alone: a caller's PYTHONPATH could shadow the code under test.
        mp.setenv("PYTHONPATH", isolation.pythonpath())
        mp.setenv("NETGUARD_LOG", str(log))
        yield log
    lines = _netguard_lines(log)
    assert not lines, "connections beyond loopback during the test run:\n" + "\n".join(lines)


@pytest.fixture(autouse=True)
def _private_tracking_store(tmp_path, monkeypatch, _isolated_environment):
    """Every test logs to its own SQLite store, never to the repository's mlflow.db; and fails if
    it (or a process it started) tried to connect beyond loopback.

    Tests that want another store (a server, a dead URI) set MLFLOW_TRACKING_URI themselves.
    """
    for k in list(os.environ):  # also what an earlier test's code set in this process (mlflow does)
        if (k.startswith(ENV_PREFIXES) and k != "DVC_NO_ANALYTICS") or k in ENV_NAMES:
            monkeypatch.delenv(k)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'test-mlflow.db'}")
    before = len(_netguard_lines(_isolated_environment))
    yield
    new = _netguard_lines(_isolated_environment)[before:]
    assert not new, "connections beyond loopback (only 127.0.0.1 is allowed in tests):\n" + "\n".join(new)


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


@pytest.fixture(scope="session")
def params_raw() -> dict:
    """params.yaml as committed (tests/isolation.py says why); copy it before changing it
    (make_params does)."""
    return isolation.committed_params()


@pytest.fixture(scope="session")
def reference_raw() -> dict:
    """reference.yaml as committed; copy it before changing it (make_params does)."""
    return isolation.committed_reference()


@pytest.fixture
def make_params(params_raw, reference_raw) -> Callable[..., Params]:
    """make_params({"sources": {...}, "datasets": {"mnist": {...}}, "lab": {...}}) -> validated Params.

    Nested mappings merge into the committed params, or into the committed reference data for
    reference.yaml's sections (lab, recipes, check); anything else replaces.
    """
    def make(overrides: dict | None = None) -> Params:
        over = copy.deepcopy(overrides or {})
        ref_over = {k: over.pop(k) for k in REFERENCE_KEYS if k in over}
        return parse(_merge(copy.deepcopy(params_raw), over), _merge(copy.deepcopy(reference_raw), ref_over))
    return make


@pytest.fixture
def fake_idx(tmp_path, monkeypatch) -> Path:
    """A folder of fake IDX files whose md5s replace the published ones of mnist and fashion_mnist."""
    folder = tmp_path / "idx"
    fakedata.write_idx_set(folder)
    for key in ("mnist", "fashion_mnist"):
        for name, entry in fakedata.idx_md5s(folder).items():
            monkeypatch.setitem(sources.CHECKSUMS[key], name, entry)
    return folder


class FakeServer:
    """Routes map a path (no leading slash) to a list of steps, one consumed per request; the
    last step repeats. Steps: ("ok", body), ("status", code), ("truncated", body) (declares
    more bytes than it sends), ("stall", seconds) (says nothing for that long)."""

    def __init__(self):
        self.routes: dict[str, list[tuple]] = {}
        self.hits: Counter = Counter()
        self.release = threading.Event()  # ends stalls at teardown
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                with server._lock:
                    server.hits[path] += 1
                    steps = server.routes.get(path, [("status", 404)])
                    step = steps.pop(0) if len(steps) > 1 else steps[0]
                kind = step[0]
                if kind == "stall":
                    server.release.wait(step[1])
                    return
                if kind == "status":
                    self.send_error(step[1])
                    return
                body = step[1]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body) + (1000 if kind == "truncated" else 0)))
                self.end_headers()
                self.wfile.write(body if kind == "ok" else body[: len(body) // 2])
                self.close_connection = True

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request, client_address):
                pass  # clients that time out and hang up are part of the tests

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)  # short poll: shutdown() waits one interval

    def base(self, prefix: str) -> str:
        """A base URL (ending in '/') standing for one mirror."""
        return f"{self.url}{prefix}/"

    def add(self, path: str, *steps: tuple) -> None:
        with self._lock:
            self.routes[path] = list(steps)

    def serve_dir(self, prefix: str, folder: Path) -> str:
        """Serve every file of folder under prefix/; return that base URL."""
        for f in sorted(Path(folder).iterdir()):
            if f.is_file():
                self.add(f"{prefix}/{f.name}", ("ok", f.read_bytes()))
        return self.base(prefix)


@pytest.fixture
def http_server():
    srv = FakeServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.httpd.shutdown()
        srv.httpd.server_close()


# ------------------------------------------------------------------------------------ skips
# Under CI=true a skipped test fails the run, unless its skip reason matches one of these
# (pattern, why the skip is acceptable). Keep it short: a skip elsewhere hides a broken setup.
ALLOWED_SKIPS = [
    (r"cannot mount a tmpfs here",
     "the tmpfs variant of the full-disk tests needs the privilege to mount; the RLIMIT_FSIZE "
     "variant runs the same checks unprivileged"),
]


_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped:
        lr = report.longrepr
        _SKIPPED.append((report.nodeid, lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() != "true":
        return
    import re

    bad = [(n, why) for n, why in _SKIPPED if not any(re.search(p, why) for p, _ in ALLOWED_SKIPS)]
    if bad:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.section("a skipped test fails the run under CI=true (tests/conftest.py ALLOWED_SKIPS)", red=True)
            for nodeid, why in bad:
                tr.write_line(f"SKIPPED {nodeid}: {why}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
