"""The tests are isolated from the checkout they run in: the network guard refuses and reports
connections beyond loopback (in this process and in the processes it starts), and the key
fixtures give the same verdicts in a checkout whose params.yaml says `protocol: lab` (and whose
reference.yaml holds other numbers than committed), whose workspace holds mlflow.db, data/ and reports/, and whose shell sets MLFLOW_* and DVC_* variables."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

import isolation

# TEST-NET-1 (RFC 5737): documentation-only, never routed; the guard refuses it before any packet.
FAR = ("192.0.2.1", 9)
CONNECT = ("import socket, sys\n"
           "s = socket.socket()\n"
           "try:\n    s.connect(('192.0.2.1', 9))\nexcept OSError as e:\n    print(type(e).__name__, e)\n")


def test_connections_beyond_loopback_are_refused_and_recorded(tmp_path, monkeypatch, http_server):
    log = tmp_path / "netguard.log"
    monkeypatch.setenv("NETGUARD_LOG", str(log))  # this test's attempts are its own, not a failure
    with socket.socket() as s, pytest.raises(ConnectionRefusedError, match="loopback only"):
        s.connect(FAR)
    with socket.socket() as s:
        assert s.connect_ex(FAR) != 0
    with pytest.raises(socket.gaierror, match="localhost only"):
        socket.getaddrinfo("ossci-datasets.s3.amazonaws.com", 443)
    r = subprocess.run([sys.executable, "-c", CONNECT], env={**os.environ}, capture_output=True, text=True,
                       timeout=60)
    assert "ConnectionRefusedError" in r.stdout, r.stdout + r.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 4, lines
    assert "192.0.2.1" in lines[0] + lines[1] and "ossci-datasets" in lines[2] and "192.0.2.1" in lines[3]
    assert f"pid {os.getpid()}" not in lines[3]  # the last came from the subprocess
    # Loopback stays open.
    http_server.add("x", ("ok", b"fine"))
    with urllib.request.urlopen(http_server.url + "x", timeout=10) as resp:
        assert resp.read() == b"fine"
    assert socket.getaddrinfo("localhost", 80) and socket.getaddrinfo("127.0.0.1", 80)
    assert len(log.read_text().splitlines()) == 4


def test_the_callers_environment_is_not_seen():
    assert not [k for k in os.environ if k.startswith("MLFLOW_") and k != "MLFLOW_TRACKING_URI"]
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:///")
    assert [k for k in os.environ if k.startswith("DVC_")] == ["DVC_NO_ANALYTICS"]
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(isolation.NETGUARD)


def test_params_fixture_is_the_committed_file(params_raw):
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=isolation.REPO, capture_output=True,
                               text=True, check=True).stdout
    assert params_raw == yaml.safe_load(committed)


def test_reference_fixture_is_the_committed_file(reference_raw):
    committed = subprocess.run(["git", "show", "HEAD:reference.yaml"], cwd=isolation.REPO, capture_output=True,
                               text=True, check=True).stdout
    assert reference_raw == yaml.safe_load(committed)


# The test files that use the key fixtures (params_raw, make_params, test_report's _params, the
# download server) and the stage CLIs; their fast tests run in the polluted clone.
KEY_TESTS = ["tests/test_report.py", "tests/test_main.py", "tests/test_download.py",
             "tests/test_params_validation.py", "tests/test_prepare.py", "tests/test_isolation.py"]


@pytest.mark.slow
def test_fast_tests_pass_in_a_polluted_checkout_under_the_lab_protocol(tmp_path):
    clone = tmp_path / "clone"
    isolation.copy_checkout(clone)
    p = isolation.committed_params()
    p["protocol"] = "lab"
    p["seed"] = 7
    p["variants"]["tl_svm"]["tsne_perplexity"] = 12.0
    (clone / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], git + ["add", "-A"], git + ["commit", "-qm", "lab protocol"]):
        subprocess.run(cmd, cwd=clone, check=True, capture_output=True)
    # After `make run`: a working params.yaml edited again, and the workspace's outputs.
    p["variants"]["tl_svm"]["svm_c"] = 0.25
    (clone / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    ref = isolation.committed_reference()
    ref["lab"]["tl_svm"]["val_acc"] = 12.5   # test_report checks the committed lab numbers
    (clone / "reference.yaml").write_text(yaml.safe_dump(ref, sort_keys=False))
    (clone / "mlflow.db").write_bytes(b"not a database")
    for d in ("data/raw/mnist", "data/prepared/mnist", "reports", "metrics/mnist_cnn"):
        (clone / d).mkdir(parents=True)
    (clone / "data/raw/mnist/SOURCE.json").write_text('{"source": "mnist"}')
    (clone / "reports/report.md").write_text("stale")
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://192.0.2.1:5000", "MLFLOW_EXPERIMENT_NAME": "elsewhere",
           "DVC_X": "1", "DVC_NO_ANALYTICS": "", "LAB_RESUME": "1"}
    # -m "not slow": this test is slow, so the inner run does not start it again.
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-m", "not slow", "-p", "no:cacheprovider",
                        f"--basetemp={tmp_path / 'inner'}", *KEY_TESTS], cwd=clone, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
