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
from pipelines.errors import DataError
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
    runs = client.search_runs([client.get_experiment_by_name("cnn-lab").experiment_id])
    # Three variant runs (full, killed, resumed), each with its `train` child, which ends as its parent did.
    variant = sorted(r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert variant == ["FINISHED", "FINISHED", "KILLED"]
    assert sorted(r.info.status for r in runs) == ["FINISHED"] * 4 + ["KILLED"] * 2


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


@pytest.mark.slow
def test_continued_variant_reuses_epochs_and_equals_a_straight_run(tmp_path, params_raw, monkeypatch):
    """mnist_cnn_20ep's way: train 2 epochs, continue that state to 4; the history equals a straight
    4-epoch run of the same seed, and the continuation trains only epochs 3 and 4."""
    from pipelines import config
    from pipelines.runtime import StagePaths
    from pipelines.train.stage import train

    p = json.loads(json.dumps(params_raw))
    base = {**p["variants"]["mnist_cnn"], "batch_size": 50}
    p["variants"] = {"short": {**base, "epochs": 2, "save_state": True},
                     "longer": {**base, "epochs": 4, "save_state": False, "start": "models/short/state.pt"},
                     "straight": {**base, "epochs": 4, "save_state": False}}
    p["replicates"], p["precision"] = None, "fp32"
    params = config.parse(p)
    write_prepared(tmp_path / "data", n_train=300, n_val=100)
    monkeypatch.chdir(tmp_path)  # `start` is a path relative to the repository root, as DVC runs it

    def run(name):
        m = train(params, name, StagePaths(Path("data"), Path(f"models/{name}"), Path(f"res/{name}"),
                                           Path(f"metrics/{name}.json")))
        h = io.read_csv(Path(f"res/{name}/history.csv"))
        return m, [{k: r[k] for k in r if k != "seconds"} for r in h]

    short, h_short = run("short")
    assert Path("models/short/state.pt").is_file() and not Path("models/straight/state.pt").exists()
    longer, h_longer = run("longer")
    straight, h_straight = run("straight")
    assert h_longer == h_straight and h_longer[:2] == h_short and len(h_longer) == 4
    assert longer["epochs_reused"] == 2 and straight["epochs_reused"] == 0
    assert longer["best_val_acc"] == straight["best_val_acc"] and longer["best_epoch"] == straight["best_epoch"]
    assert longer["best_val_acc"] > 30  # learnable labels: well above the 10 % of chance
    # The source retrained with other params: its old state must not be continued silently.
    changed = config.parse({**p, "seed": 7})
    with pytest.raises(DataError, match="made with other params, seed or data"):
        train(changed, "longer", StagePaths(Path("data"), Path("models/x"), Path("res/x"), Path("metrics/x.json")))
    assert not Path("models/x").exists()


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.002}, "lr 0.002 differs"),
    ({"epochs": 2}, "must exceed"),
    ({"start": "models/nope/state.pt"}, "'nope' is not another variant"),
    ({"start": "weights.pt"}, "allowed are"),
])
def test_bad_continuation_is_one_line_error(params_raw, change, message):
    from pipelines import config

    p = json.loads(json.dumps(params_raw))
    p["variants"]["mnist_cnn_20ep"].update(change)
    with pytest.raises(config.ParamsError, match=message):
        config.parse(p)
