"""Threads per process: params `threads`, LAB_THREADS, or the process's share of the cores when
several pipeline processes (DVC queue workers, pytest-xdist workers) run side by side."""
import subprocess
import sys
import time

import pytest
import torch

from pipelines import hardware
from pipelines.errors import ParamsError
from pipelines import compute


def _fake_proc(tmp_path, *argvs):
    """A /proc with one numbered folder per process, its cmdline NUL-separated as Linux writes it."""
    for pid, argv in enumerate(argvs, start=100):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (tmp_path / "self").mkdir()   # not a number: never read
    return tmp_path


def test_queue_workers_share_the_cores(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cores", lambda: 4)
    worker = ["/usr/bin/python3", "/usr/bin/dvc", "exp", "queue-worker", "dvc-exp-abc123-{}@localhost"]
    proc = _fake_proc(tmp_path, [a.format(1) for a in worker], [a.format(2) for a in worker],
                      ["/usr/bin/python3", "-m", "stages.train", "--variant", "queue-worker"],  # not a worker
                      ["bash"])
    assert hardware.dvc_queue_workers(proc) == 2
    assert hardware.thread_share(0, {}, proc) == (2, "4 cores / 2 DVC queue workers")
    # More workers than cores: one thread each, never zero.
    monkeypatch.setattr(hardware, "cores", lambda: 1)
    assert hardware.thread_share(0, {}, proc)[0] == 1


def test_explicit_settings_win_and_one_process_keeps_torchs_default(tmp_path, monkeypatch):
    monkeypatch.setattr(hardware, "cores", lambda: 8)
    alone = _fake_proc(tmp_path, ["bash"])
    assert hardware.thread_share(0, {}, alone) == (0, "torch's default")
    assert hardware.thread_share(3, {"LAB_THREADS": "5"}, alone) == (3, "params threads")
    assert hardware.thread_share(0, {"LAB_THREADS": " 5 "}, alone) == (5, "LAB_THREADS")
    assert hardware.thread_share(0, {"PYTEST_XDIST_WORKER_COUNT": "4"}, alone) == (2, "8 cores / 4 pytest-xdist workers")


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_a_bad_lab_threads_names_the_value_and_what_is_allowed(bad, tmp_path):
    with pytest.raises(ParamsError, match=rf"LAB_THREADS='{bad}': expected a whole number of threads >= 1"):
        hardware.thread_share(0, {"LAB_THREADS": bad}, tmp_path)


def test_a_real_queue_worker_process_is_counted():
    # A process whose command line reads like DVC's worker (`dvc exp queue-worker NAME`).
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exp", "queue-worker", "n@localhost"])
    try:
        deadline = time.monotonic() + 10
        while hardware.dvc_queue_workers() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hardware.dvc_queue_workers() >= 1
    finally:
        p.kill()
        p.wait()


def test_seed_everything_sets_the_share(monkeypatch, capsys):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("LAB_THREADS", "1")
        compute.seed_everything(0)
        assert torch.get_num_threads() == 1
        assert "threads: 1 (LAB_THREADS)" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
