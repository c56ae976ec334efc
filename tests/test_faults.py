"""A full disk leaves no partial output and is one line, not a traceback; two processes share one
MLflow store safely."""
import errno
import os
import resource
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from pipelines import io, plots
from pipelines.errors import FAILURE, StageError
import isolation

REPO = Path(__file__).resolve().parents[1]


LIMIT = 256 * 1024


@pytest.fixture(params=["tmpfs", "rlimit"])
def tiny_disk(request, tmp_path):
    """(folder, errno) where writes past 256 KiB fail as on a full disk. "tmpfs": a real 256 KiB
    tmpfs (ENOSPC; needs the privilege to mount, skipped without it). "rlimit": RLIMIT_FSIZE of
    this process (EFBIG once a file would grow past the limit; works unprivileged, in CI too)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if request.param == "tmpfs":
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={LIMIT // 1024}k", "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")
        try:
            yield mnt, errno.ENOSPC
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Without this the kernel's SIGXFSZ would kill pytest instead of failing the write.
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, hard))
    try:
        yield mnt, errno.EFBIG
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_leaves_old_output_intact_and_no_partial_file(tiny_disk):
    disk, code = tiny_disk
    target = disk / "train.npz"
    io.save_npz(target, x=np.zeros(100, np.uint8))
    before = target.read_bytes()
    with pytest.raises(StageError, match=f"{target}: cannot be written") as err:
        io.save_npz(target, x=np.zeros(1 << 20, np.uint8))  # 1 MiB does not fit
    assert err.value.__cause__.errno == code and err.value.exit_code == FAILURE
    assert target.read_bytes() == before
    assert sorted(p.name for p in disk.iterdir()) == ["train.npz"]


def test_full_disk_while_saving_a_figure(tiny_disk):
    disk, code = tiny_disk
    rng = np.random.default_rng(0)
    fig = plots.examples(rng.integers(0, 255, (64, 64, 64, 3), dtype=np.uint8), [""] * 64, "noise", ncols=8)
    with pytest.raises(StageError, match="grid.png: cannot be written") as err:
        plots.save_figure(fig, disk / "grid.png", dpi=300)
    assert err.value.__cause__.errno == code
    assert list(disk.iterdir()) == []


WRITER = textwrap.dedent("""
    import sys
    from pipelines import config
    from pipelines.tracking import Run
    params = config.load(sys.argv[1])
    with Run(params, "train", sys.argv[2], system_metrics=False) as run:
        for step in range(40):
            run.log_metrics({"val_acc": step}, step=step)
""")


def test_two_processes_log_to_one_sqlite_store(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO), "MLFLOW_TRACKING_URI": store}
    # Both start on an empty store: its schema creation must not race.
    names = [f"w{uuid.uuid4().hex[:6]}" for _ in range(2)]
    (tmp_path / "params.yaml").write_text(isolation.committed_params_text())
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "params.yaml"), n], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in names]
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
    import mlflow
    client = mlflow.MlflowClient(store)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("cnn-lab").experiment_id])}
    for n in names:
        assert runs[n].info.status == "FINISHED"
        assert len(client.get_metric_history(runs[n].info.run_id, "val_acc")) == 40


def test_prepared_arrays_are_byte_for_byte_reproducible(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4, 1)
    io.save_npz(tmp_path / "a.npz", x=x, y=np.array([0, 1]))
    import time
    time.sleep(2.1)  # zip timestamps have 2 s resolution
    io.save_npz(tmp_path / "b.npz", x=x, y=np.array([0, 1]))
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    back = io.load_npz(tmp_path / "a.npz")
    assert np.array_equal(back["x"], x) and back["y"].tolist() == [0, 1]


@pytest.mark.slow
def test_a_second_concurrent_repro_is_refused_and_the_first_completes(tmp_path):
    """Two `dvc repro` in one checkout: DVC's repository lock turns the second away at once,
    and the first finishes with intact, up-to-date outputs."""
    isolation.copy_checkout(tmp_path)
    # The offline transfer set is built from Debian's Fashion-MNIST: no network under either protocol.
    (tmp_path / "params.yaml").write_text(
        isolation.committed_params_text().replace("\nprotocol: lab", "\nprotocol: offline"))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    git = ["git", "-c", "user.email=t@localhost", "-c", "user.name=t"]
    for cmd in (["git", "init", "-q"], git + ["add", "-A"], git + ["commit", "-qm", "x"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    first = subprocess.Popen(["dvc", "repro", "download@transfer"], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time
    time.sleep(1.5)  # the first holds the lock while its stage imports torch
    second = subprocess.run(["dvc", "repro", "download@transfer"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    out, _ = first.communicate(timeout=300)
    assert first.returncode == 0, out
    assert second.returncode != 0
    assert "lock" in (second.stdout + second.stderr).lower()
    status = subprocess.run(["dvc", "status", "download@transfer"], cwd=tmp_path, env=env,
                            capture_output=True, text=True)
    assert "up to date" in status.stdout
    assert io.read_json(tmp_path / "data/raw/transfer/SOURCE.json")["dataset"] == "transfer"
