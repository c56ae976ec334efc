"""The whole DAG through `dvc repro` on the tiny profile, in a scratch copy of the repository:
every stage's outputs, MLflow runs, a no-op second repro, and a params change that reruns
only its own chain."""
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import isolation
import tiny
from scratch_repo import OUTPUT_DIRS

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (.ci/setup installs it)"),
]


def _sh(cmd, cwd, **kw):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": isolation.pythonpath()}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    isolation.copy_checkout(ws, skip_prefixes=OUTPUT_DIRS)
    p = isolation.committed_params()
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny.shrink(p), sort_keys=False))
    _sh(["git", "init", "-q"], ws)
    _sh(["git", "-c", "user.email=t@localhost", "-c", "user.name=t", "add", "-A"], ws)
    _sh(["git", "-c", "user.email=t@localhost", "-c", "user.name=t", "commit", "-qm", "tiny"], ws)
    t0 = time.perf_counter()
    log = _sh([sys.executable, "-m", "pipelines.main", "--protocol", "offline"], ws, timeout=900)
    print(f"tiny-profile dvc repro of the whole DAG: {time.perf_counter() - t0:.0f} s")
    return ws, log


VARIANTS = list(isolation.committed_params()["variants"])
REPLICATES = ["replicate@tl_svm-1", "replicate@tl_finetune-1"]


def test_every_stage_ran_and_wrote_its_outputs(ws):
    root, log = ws
    assert log.startswith("protocol: offline (forced with --protocol)")
    stages = {f"{s}@{d}" for s in ("download", "preprocess") for d in ("mnist", "cifar10", "transfer")}
    stages |= {f"{s}@{v}" for s in ("train", "evaluate", "embed") for v in VARIANTS} | {"report"}
    stages |= set(REPLICATES)
    assert _ran(log) == stages
    for d in ("mnist", "cifar10", "transfer"):
        for f in ("train.npz", "val.npz", "meta.json", "sizes.csv"):
            assert (root / "data/prepared" / d / f).is_file()
    for v in VARIANTS:
        for f in ("models/{v}/model.pt", "models/{v}/run.json", "results/{v}/train/history.csv",
                  "results/{v}/train/params.csv", "results/{v}/train/curves.png", "metrics/{v}/train.json",
                  "results/{v}/eval/confusion.csv", "results/{v}/eval/confusion.png", "metrics/{v}/eval.json",
                  "results/{v}/embed/tsne.csv", "results/{v}/embed/tsne.png", "metrics/{v}/embed.json"):
            assert (root / f.format(v=v)).is_file(), f.format(v=v)
    train = json.loads((root / "metrics/mnist_cnn/train.json").read_text())
    assert train["params_total"] == 813_802 and train["protocol"] == "offline"
    assert json.loads((root / "metrics/cifar_alexnet/train.json").read_text())["params_total"] == 6_199_498
    rep = json.loads((root / "metrics/replicates/tl_finetune-1.json").read_text())
    assert rep["seed"] == 1 and "test_acc" in rep
    # Same seed, same numbers: the 20-epoch run repeats the 10-epoch run's epochs exactly.
    h10 = (root / "results/mnist_cnn/train/history.csv").read_text().splitlines()
    h20 = (root / "results/mnist_cnn_20ep/train/history.csv").read_text().splitlines()
    cols = h10[0].split(",").index("seconds")
    strip = lambda line: [c for i, c in enumerate(line.split(",")) if i != cols]
    assert [strip(x) for x in h10[1:]] == [strip(x) for x in h20[1:len(h10)]]
    md = (root / "reports/report.md").read_text()
    for heading in ("Part 1.1", "Part 1.2", "Part 1.3"):
        assert heading in md
    assert "not run" not in md.lower()


def test_mlflow_has_one_run_per_variant_with_history_and_system_metrics(ws):
    root, _ = ws
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cnn-lab")
    runs = client.search_runs([exp.experiment_id])
    by_name = {r.info.run_name: r for r in runs}
    assert set(VARIANTS) | {"report", "tl_svm@seed1", "tl_finetune@seed1"} == set(by_name)
    for v in VARIANTS:
        r = by_name[v]
        assert r.info.status == "FINISHED"
        assert r.data.tags["protocol"] == "offline" and r.data.tags["git_commit"] != "unknown"
        assert {"stage.train", "stage.evaluate", "stage.embed"} <= set(r.data.tags)
        assert "eval_accuracy" in r.data.metrics and "best_val_acc" in r.data.metrics
        assert r.data.params["data.source"] == "fashion_mnist"
        run_json = json.loads((root / f"models/{v}/run.json").read_text())
        assert run_json["run_id"] == r.info.run_id
    hist = client.get_metric_history(by_name["mnist_cnn"].info.run_id, "val_acc")
    assert [m.step for m in hist] == [1, 2]
    assert any(k.startswith("system/") for k in by_name["mnist_cnn"].data.metrics)
    arts = {a.path for a in client.list_artifacts(by_name["mnist_cnn"].info.run_id, "train")}
    assert "train/model.pt" in arts and "train/curves.png" in arts


def test_second_repro_does_nothing(ws):
    root, _ = ws
    t0 = time.perf_counter()
    log = _sh(["dvc", "repro"], root)
    print(f"no-op dvc repro: {time.perf_counter() - t0:.1f} s")
    assert _ran(log) == set()


def test_changing_one_variant_reruns_only_its_chain_and_the_report(ws):
    root, _ = ws
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["variants"]["tl_svm"]["svm_c"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    log = _sh(["dvc", "repro"], root)
    assert _ran(log) == {"train@tl_svm", "evaluate@tl_svm", "embed@tl_svm", "replicate@tl_svm-1", "report"}


def test_adding_a_replicate_seed_runs_only_the_new_stages(ws):
    root, _ = ws
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["replicates"]["seeds"] = [1, 2]
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    log = _sh(["dvc", "repro"], root)
    assert _ran(log) == {"replicate@tl_svm-2", "replicate@tl_finetune-2", "report"}


def test_bad_params_stop_the_stage_with_one_line(ws):
    root, _ = ws
    p = yaml.safe_load((root / "params.yaml").read_text())
    p["variants"]["tl_svm"]["epochs"] = "abc"
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(["dvc", "repro", "train@tl_svm"], cwd=root, env=env, capture_output=True, text=True)
    assert r.returncode != 0
    assert "error: train tl_svm: params.yaml: variants.tl_svm.epochs = 'abc'" in r.stderr + r.stdout
