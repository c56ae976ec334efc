"""Every trained variant is an MLflow Model: loaded by run URI in a new process, it predicts what the
evaluate stage predicted; runs carry their datasets; the experiment opens on its training runs;
the report stage registers a champion per part without duplicate versions; `mlflow models serve`
answers on 127.0.0.1."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines import io, tracking
from pipelines.evaluate.stage import evaluate
from pipelines.runtime import StagePaths
from pipelines.train.stage import train
from test_train_resume import write_prepared

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # trains a variant (about 25 s on 2 cores)

LOAD_AND_PREDICT = """
import json, sys
import numpy as np
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
x = np.load(sys.argv[2])["x"]
out = model.predict(x)
print(json.dumps({"classes": out["class"].tolist(), "probability": out["probability"].tolist(),
                  "modules": sorted(m for m in sys.modules if m.startswith("pipelines")),
                  "models_file": sys.modules["pipelines.models"].__file__}))
"""


VARIANTS = ("mnist_cnn", "mnist_cnn_small")


def _stage_paths(root: Path, v: str, stage: str) -> StagePaths:
    return StagePaths(root / "data/prepared/mnist", root / f"models/{v}", root / f"results/{v}/{stage}",
                      root / f"metrics/{v}/{stage}.json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, params_raw):
    """Two tiny variants trained and evaluated through the stage functions, in their own store."""
    from pipelines.config import parse

    root = tmp_path_factory.mktemp("variant")
    raw = json.loads(json.dumps(params_raw))
    raw["precision"], raw["device"] = "fp32", "cpu"
    raw["tracking"].update(experiment="model-tests", system_metrics_interval_s=0.5)
    raw["variants"] = {"mnist_cnn": {**raw["variants"]["mnist_cnn"], "epochs": 2, "batch_size": 32},
                       "mnist_cnn_small": {**raw["variants"]["mnist_cnn_small"], "epochs": 1, "batch_size": 32}}
    raw["replicates"] = None
    (root / "params.yaml").write_text(json.dumps(raw))
    params = parse(raw)
    data = root / "data/prepared/mnist"
    write_prepared(data, n_train=400, n_val=120)
    io.write_json(data / "meta.json", {**io.read_json(data / "meta.json"), "source_title": "synthetic digits"})
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    out = {"root": root, "uri": uri, "params": params}
    try:
        for v in VARIANTS:
            out[v] = {"summary": train(params, v, _stage_paths(root, v, "train")),
                      "evaluate": evaluate(params, v, _stage_paths(root, v, "evaluate")),
                      "run": io.read_json(root / f"models/{v}/run.json")}
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    out.update(out["mnist_cnn"])
    return out


def _predict_in_new_process(model_uri: str, tracking_uri: str, cwd: Path) -> dict:
    # Not the repository's folder nor its PYTHONPATH: the model must bring its own code.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, model_uri, str(cwd / "data/prepared/mnist/val.npz")],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_by_run_uri_predicts_what_evaluate_predicted(trained):
    root = trained["root"]
    run_id = trained["run"]["run_id"]
    got = _predict_in_new_process(f"runs:/{run_id}/model", trained["uri"], root)
    expected = [row["predicted"] for row in io.read_csv(root / "results/mnist_cnn/evaluate/confusion.csv")]
    assert got["classes"] == expected
    assert trained["evaluate"]["accuracy"] > 30  # learnable synthetic data, 10 classes: well above chance
    assert all(0.1 <= p <= 1.0 for p in got["probability"])
    # The model's own copy of the code was imported, not the checkout's, and without the run machinery.
    assert not Path(got["models_file"]).resolve().is_relative_to(REPO), got["models_file"]
    assert "code" in Path(got["models_file"]).parts  # the model's code_paths copy
    assert "pipelines.tracking" not in got["modules"], got["modules"]


def test_model_has_signature_example_and_loads_weights_only(trained):
    import mlflow

    mlflow.set_tracking_uri(trained["uri"])
    info = mlflow.models.get_model_info(f"runs:/{trained['run']['run_id']}/model")
    (spec,) = info.signature.inputs.inputs
    assert spec.type == np.dtype(np.uint8) and tuple(spec.shape) == (-1, 28, 28, 1)
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["label", "class", "probability"]
    local = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained['run']['run_id']}/model",
                                                     dst_path=str(trained["root"] / "dl")))
    example = json.loads((local / "serving_input_example.json").read_text())
    assert np.array(example["inputs"]).shape == (2, 28, 28, 1)
    mlmodel = (local / "MLmodel").read_text()
    assert "python_model.pkl" not in mlmodel and "model_code_path: " in mlmodel
    assert not list(local.rglob("*.pkl"))
    assert (local / "code/pipelines/models.py").is_file()
    # The weights are a plain tensor file: torch refuses to run code from it.
    import torch

    weights = next(local.rglob("model.pt"))
    ckpt = torch.load(weights, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "config"}


def test_runs_layout_datasets_and_uniform_metrics(trained):
    import mlflow

    client = mlflow.MlflowClient(trained["uri"])
    exp = client.get_experiment_by_name("model-tests")
    assert exp.tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    variant = client.get_run(trained["run"]["run_id"])
    assert {r.info.run_name for r in client.search_runs([exp.experiment_id], "attributes.run_name != 'x'")
            if "mlflow.parentRunId" not in r.data.tags} == set(VARIANTS)
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{variant.info.run_id}'")}
    assert set(children) == {"train", "evaluate"}
    assert children["train"].info.run_id == trained["run"]["train_run_id"]
    for r in (variant, *children.values()):
        assert r.info.status == "FINISHED"
    # Durations are each stage's own: the variant run ended before evaluate began.
    assert variant.info.end_time <= children["evaluate"].info.start_time
    assert children["train"].info.end_time <= variant.info.end_time
    # One set of keys for every variant; the values agree with the stage's outputs.
    assert variant.data.metrics["val_accuracy"] == pytest.approx(trained["evaluate"]["accuracy"])
    assert variant.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(children["train"].info.run_id, "val_acc")] == [1, 2]
    # Datasets: name, digest of the exact file, shape, classes, context.
    meta = io.read_json(trained["root"] / "data/prepared/mnist/meta.json")
    for run, contexts in ((variant, {"training", "validation"}), (children["train"], {"training", "validation"}),
                          (children["evaluate"], {"validation"})):
        inputs = run.inputs.dataset_inputs
        got = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in inputs}
        assert set(got) == contexts
        val = got["validation"]
        assert val.dataset.name == "mnist-val"
        assert val.dataset.digest == meta["files"]["val.npz"][:36]
        assert json.loads(val.dataset.profile)["features_shape"] == [120, 28, 28, 1]
        assert dict((t.key, t.value) for t in val.tags)["classes"] == ", ".join(meta["classes"])
    # Logging the model is timed and recorded beside the stage's time.
    s = trained["summary"]
    assert 0 < s["model_log_seconds"] < s["seconds"]


def _report(root: Path, uri: str, monkeypatch) -> None:
    from stages import report as stage

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert stage.main(["--root", str(root), "--out", str(root / "reports"), "--params", str(root / "params.yaml")]) == 0


def test_report_registers_the_best_variant_as_champion_and_logs_tables(trained, monkeypatch, capsys):
    import mlflow

    root, uri = trained["root"], trained["uri"]
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    acc = {v: trained[v]["evaluate"]["accuracy"] for v in VARIANTS}
    best = max(VARIANTS, key=lambda v: acc[v])  # no test split here: chosen on validation accuracy
    other = next(v for v in VARIANTS if v != best)
    _report(root, uri, monkeypatch)
    name = "model-tests-mnist"
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.run_id == trained[best]["run"]["run_id"] and champ.tags["variant"] == best
    assert champ.tags["chosen_on"] == "val_accuracy"
    _report(root, uri, monkeypatch)  # same outputs again: same version, nothing added
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # The other variant rerun and now better: the alias moves to it.
    ev = root / f"metrics/{other}/evaluate.json"
    io.write_json(ev, {**io.read_json(ev), "accuracy": acc[best] + 1.0})
    _report(root, uri, monkeypatch)
    assert client.get_model_version_by_alias(name, "champion").run_id == trained[other]["run"]["run_id"]
    assert len(client.search_model_versions(f"name = '{name}'")) == 2
    assert "@champion" in capsys.readouterr().out

    # The report run: HTML report and the per-variant summary as an MLflow table.
    exp = client.get_experiment_by_name("model-tests")
    rep = client.search_runs([exp.experiment_id], "attributes.run_name = 'report'", order_by=["start_time DESC"])[0]
    arts = {a.path for a in client.list_artifacts(rep.info.run_id, "report")}
    assert "report/report.html" in arts
    mlflow.set_tracking_uri(uri)
    table = mlflow.load_table("tables/variant_summary.json", run_ids=[rep.info.run_id])
    assert sorted(table["variant"]) == sorted(VARIANTS)
    row = table.set_index("variant").loc[other]
    assert row["val_accuracy"] == pytest.approx(acc[best] + 1.0)
    assert row["mlflow_run_id"] == trained[other]["run"]["run_id"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mlflow_models_serve_of_the_champion_answers_one_request(trained, tmp_path):
    root, uri = trained["root"], trained["uri"]
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": uri}
    import mlflow

    mlflow.set_tracking_uri(uri)
    tracking.register_champion("model-tests-mnist", trained["run"]["run_id"], {})  # as the report stage does
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/model-tests-mnist@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"),
                            start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        x = np.load(root / "data/prepared/mnist/val.npz")["x"][:3]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     data=json.dumps({"inputs": x.tolist()}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            answer = json.loads(r.read())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    expected = [row["predicted"] for row in io.read_csv(root / "results/mnist_cnn/evaluate/confusion.csv")][:3]
    assert [p["class"] for p in answer["predictions"]] == expected


CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _text(dom: str) -> str:
    dom = re.sub(r"<(style|script)\b.*?</\1>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


def _page(url: str, profile: Path, *extra: str) -> str:
    out = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          "--window-size=1600,900", *extra, url], capture_output=True, text=True, timeout=180)
    errors = [ln for ln in out.stderr.splitlines() if "dbus" not in ln]
    assert out.returncode == 0 and (out.stdout or "--dump-dom" not in extra), f"chromium rc {out.returncode}: {errors[-10:]}"
    return out.stdout


def test_mlflow_ui_shows_the_runs_datasets_models_and_a_metric_column(trained, tmp_path):
    """`mlflow ui` on the tiny store, read by headless Chromium: the experiment's runs page lists every
    variant run with its datasets and registered model; the compare view lines up val_accuracy."""
    assert CHROMIUM, "headless Chromium not installed (Debian package `chromium`; .ci/setup-test installs it)"
    import mlflow

    uri = trained["uri"]
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("model-tests")
    mlflow.set_tracking_uri(uri)
    tracking.register_champion("model-tests-mnist", trained["run"]["run_id"], {})  # a version the UI lists
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "ui.log", "w"), start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
                time.sleep(0.5)
        # The README's link: the runs page, sorted by the headline metric.
        runs_url = (f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
                    "&orderByKey=metrics.%60val_accuracy%60&orderByAsc=false")
        page = _text(_page(runs_url, tmp_path / "p1", "--dump-dom"))
        assert "Sort: val_accuracy" in page
        for v in VARIANTS:
            assert re.search(rf"\b{v}\b", page), f"run {v} not on the runs page"
        assert page.count(" evaluate ") >= 2 and page.count(" train ") >= 2  # the stage child runs
        assert "mnist-train" in page and "mnist-val" in page  # the Dataset column
        assert "model-tests-mnist v" in page  # the Models column: the registered version
        ids = [trained[v]["run"]["run_id"] for v in VARIANTS]
        compare = (f"{base}/#/compare-runs?runs={urllib.parse.quote(json.dumps(ids))}"
                   f"&experiments={urllib.parse.quote(json.dumps([exp.experiment_id]))}")
        metrics = _text(_page(compare, tmp_path / "p2", "--dump-dom")).split(" Metrics Show diff only ", 1)[-1]
        assert re.search(r"\bval_accuracy\b", metrics) and "train_seconds" in metrics
        shot = (REPO / "reports-ci" if os.environ.get("CI") else tmp_path) / "mlflow-runs.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        _page(runs_url, tmp_path / "p3", f"--screenshot={shot}")
        from PIL import Image

        with Image.open(shot) as im:
            assert im.size == (1600, 900)
            assert len(im.convert("RGB").resize((160, 90)).getcolors(160 * 90) or ()) > 20
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
