"""Interrupted training: a real `python -m stages.train` process killed mid-epoch resumes from
its last complete epoch and ends with the same numbers as a run that was never interrupted."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipelines import io
import isolation

REPO = Path(__file__).resolve().parents[1]


def write_prepared(folder: Path, n_train=1500, n_val=200, size=28, seed=0):
    """A prepared dataset in the on-disk contract (docs/outputs.md), with learnable labels."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    files = {}
    for split, n in (("train", n_train), ("val", n_val)):
        y = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, size, size, 1)) + (y * 19)[:, None, None, None]
        io.save_npz(folder / f"{split}.npz", x=x.astype(np.uint8), y=y.astype(np.int64))
        files[f"{split}.npz"] = io.sha256_file(folder / f"{split}.npz")
    io.write_json(folder / "meta.json", {
        "dataset": "mnist", "source": "synthetic", "protocol": "offline", "classes": [str(i) for i in range(10)],
        "height": size, "width": size, "channels": 1, "mean": [0.3], "std": [0.2],
        "splits": {"train": n_train, "val": n_val}, "files": files, "backbone": None})


@pytest.fixture
def workdir(tmp_path, params_raw):
    p = json.loads(json.dumps(params_raw))
    p["variants"] = {"mnist_cnn": {**p["variants"]["mnist_cnn"], "epochs": 3, "batch_size": 32}}
    p["lab"], p["recipes"] = {}, {}
    p["replicates"] = None
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    write_prepared(tmp_path / "data")
    return tmp_path


def _cmd(out: str):
    return [sys.executable, "-m", "stages.train", "--variant", "mnist_cnn", "--data", "data",
            "--model", f"{out}/model", "--out", f"{out}/res", "--metrics", f"{out}/train.json",
            "--checkpoint", f"{out}/ck/last.pt"]


def _env(workdir):
    return {**os.environ, "PYTHONPATH": isolation.pythonpath(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_numbers(workdir):
    env = _env(workdir)
    subprocess.run(_cmd("full"), cwd=workdir, env=env, check=True, capture_output=True)
    full = json.loads((workdir / "full/train.json").read_text())
    assert not (workdir / "full/ck/last.pt").exists()  # finished runs leave no checkpoint behind

    proc = subprocess.Popen(_cmd("cut"), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    ck = workdir / "cut/ck/last.pt"
    deadline = time.time() + 240
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ck.exists(), proc.communicate()[0]
    time.sleep(0.3)  # now inside epoch 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not (workdir / "cut/train.json").exists() and not (workdir / "cut/model/model.pt").exists()

    resumed = subprocess.run(_cmd("cut") + ["--resume"], cwd=workdir, env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stdout
    cut = json.loads((workdir / "cut/train.json").read_text())
    for key in ("best_val_acc", "best_epoch", "final_val_acc", "min_val_loss_epoch", "epochs"):
        assert cut[key] == full[key], key
    assert io.read_csv(workdir / "cut/res/history.csv")[-1]["train_loss"] == \
        io.read_csv(workdir / "full/res/history.csv")[-1]["train_loss"]

    import mlflow
    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    statuses = sorted(r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("cnn-lab").experiment_id]))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]


def test_checkpoint_of_other_params_is_not_resumed(workdir):
    env = _env(workdir)
    (workdir / "x/ck").mkdir(parents=True)
    import torch
    torch.save({"fingerprint": {"other": 1}, "state": {}}, workdir / "x/ck/last.pt")
    p = yaml.safe_load((workdir / "params.yaml").read_text())
    p["variants"]["mnist_cnn"]["epochs"] = 1
    (workdir / "params.yaml").write_text(yaml.safe_dump(p))
    r = subprocess.run(_cmd("x") + ["--resume"], cwd=workdir, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "made with other params or data; starting afresh" in r.stdout
