"""Every trained variant is an MLflow Model: loaded by run URI in a new process, it predicts what the
evaluate stage predicted; runs carry their datasets; the experiment opens on its training runs;
the report stage registers a champion per part without duplicate versions; `mlflow models serve`
answers on 127.0.0.1."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipelines import experiment, io, tracking
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
                  "modules": sorted(m for m in sys.modules if m.startswith("pipelines"))}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, params_raw):
    """One tiny mnist_cnn trained and evaluated through the stage functions, in its own store."""
    from pipelines.config import parse

    root = tmp_path_factory.mktemp("variant")
    raw = json.loads(json.dumps(params_raw))
    raw["precision"], raw["device"] = "fp32", "cpu"
    raw["tracking"].update(experiment="model-tests", system_metrics_interval_s=0.5)
    raw["variants"] = {"mnist_cnn": {**raw["variants"]["mnist_cnn"], "epochs": 2, "batch_size": 32}}
    raw["lab"], raw["recipes"], raw["replicates"] = {}, {}, None
    params = parse(raw)
    write_prepared(root / "data", n_train=400, n_val=120)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        summary = experiment.train(params, "mnist_cnn", root / "data", root / "model", root / "res/train",
                                   root / "metrics/train.json")
        ev = experiment.evaluate(params, "mnist_cnn", root / "data", root / "model", root / "res/eval",
                                 root / "metrics/eval.json")
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
    return {"root": root, "uri": uri, "params": params, "summary": summary, "eval": ev,
            "run": io.read_json(root / "model/run.json")}


def _predict_in_new_process(model_uri: str, tracking_uri: str, cwd: Path) -> dict:
    # Not the repository's folder nor its PYTHONPATH: the model must bring its own code.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"MLFLOW_TRACKING_URI": tracking_uri}
    out = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, model_uri, str(cwd / "data/val.npz")],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_model_by_run_uri_predicts_what_evaluate_predicted(trained):
    root = trained["root"]
    run_id = trained["run"]["run_id"]
    got = _predict_in_new_process(f"runs:/{run_id}/model", trained["uri"], root)
    expected = [row["predicted"] for row in io.read_csv(root / "res/eval/confusion.csv")]
    assert got["classes"] == expected
    assert trained["eval"]["accuracy"] > 30  # learnable synthetic data, 10 classes: well above chance
    assert all(0.1 <= p <= 1.0 for p in got["probability"])
    # The model's own copy of the code was imported, not the checkout's.
    assert "pipelines.mlflow_model" in got["modules"] or "pipelines.models" in got["modules"]


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
    assert variant.data.metrics["val_accuracy"] == pytest.approx(trained["eval"]["accuracy"])
    assert variant.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(children["train"].info.run_id, "val_acc")] == [1, 2]
    # Datasets: name, digest of the exact file, shape, classes, context.
    meta = io.read_json(trained["root"] / "data/meta.json")
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
    assert 0 < s["model_log_seconds"] < s["stage_seconds"]
