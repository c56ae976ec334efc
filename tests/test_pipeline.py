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

import numpy as np
import pytest
import yaml

from pipelines import io

import tiny

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (.ci/setup installs it)"),
]


def _sh(cmd, cwd, **kw):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": ""}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout + r.stderr


def _ran(log: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", log))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file() and not f.startswith(("dvc.lock",)):
            (ws / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, ws / f)
    p = yaml.safe_load((ws / "params.yaml").read_text())
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny.shrink(p), sort_keys=False))
    _sh(["git", "init", "-q"], ws)
    _sh(["git", "-c", "user.email=t@localhost", "-c", "user.name=t", "add", "-A"], ws)
    _sh(["git", "-c", "user.email=t@localhost", "-c", "user.name=t", "commit", "-qm", "tiny"], ws)
    t0 = time.perf_counter()
    log = _sh([sys.executable, "-m", "pipelines.main", "--protocol", "offline"], ws, timeout=900)
    print(f"tiny-profile dvc repro of the whole DAG: {time.perf_counter() - t0:.0f} s")
    return ws, log


VARIANTS = list(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
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


def test_mlflow_has_one_run_per_variant_with_a_child_per_stage_a_model_and_a_champion(ws):
    root, _ = ws
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("cnn-lab")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    top = {r.info.run_name: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert set(VARIANTS) | {"report", "tl_svm@seed1", "tl_finetune@seed1"} == set(top)
    for v in VARIANTS:
        r = top[v]
        assert r.info.status == "FINISHED"
        assert r.data.tags["protocol"] == "offline" and r.data.tags["git_commit"] != "unknown"
        assert "val_accuracy" in r.data.metrics and r.data.params["data.source"] == "fashion_mnist"
        children = {c.info.run_name: c for c in runs if c.data.tags.get("mlflow.parentRunId") == r.info.run_id}
        assert set(children) == {"train", "evaluate", "embed"}, v
        assert all(c.info.status == "FINISHED" for c in children.values())
        assert r.info.end_time <= children["evaluate"].info.start_time  # never reopened
        assert {i.dataset.name for i in children["evaluate"].inputs.dataset_inputs} >= {f"{r.data.tags['dataset']}-val"}
        run_json = json.loads((root / f"models/{v}/run.json").read_text())
        assert run_json["run_id"] == r.info.run_id and run_json["train_run_id"] == children["train"].info.run_id
    transfer = [v for v in VARIANTS if top[v].data.tags["dataset"] == "transfer"]
    assert all("test_accuracy" in top[v].data.metrics for v in transfer)
    train = next(c for c in runs if c.data.tags.get("mlflow.parentRunId") == top["mnist_cnn"].info.run_id
                 and c.info.run_name == "train")
    assert [m.step for m in client.get_metric_history(train.info.run_id, "val_acc")] == [1, 2]
    assert any(k.startswith("system/") for k in train.data.metrics)
    assert "train/curves.png" in {a.path for a in client.list_artifacts(train.info.run_id, "train")}
    # The SVM option is one MLflow Model too: loaded by run URI it predicts what evaluate predicted.
    x = np.load(root / "data/prepared/transfer/val.npz")["x"]
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{top['tl_svm'].info.run_id}/model")
    got = model.predict(x)["class"].tolist()
    assert got == [row["predicted"] for row in io.read_csv(root / "results/tl_svm/eval/confusion.csv")]
    # One champion per part, chosen on held-out test accuracy where the part has it.
    for dataset, key in (("mnist", "accuracy"), ("cifar10", "accuracy"), ("transfer", "test_accuracy")):
        champ = client.get_model_version_by_alias(f"cnn-lab-{dataset}", "champion")
        cands = [v for v in VARIANTS if top[v].data.tags["dataset"] == dataset]
        scores = {v: json.loads((root / f"metrics/{v}/eval.json").read_text())[key] for v in cands}
        assert champ.tags["variant"] in cands and scores[champ.tags["variant"]] == max(scores.values())


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
