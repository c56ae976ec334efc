"""`make gpu-check`'s script on the CPU fallback (no GPU here): tiny learnable Fashion-MNIST-format
files, the pipeline's own prepare, every lab variant trained and evaluated, figures that agree."""
import gzip
import json

import numpy as np
import pytest
import yaml

import fakedata
from benchmarks import gpu_check
from pipelines import io
from pipelines.data.sources import files_for


def _raw_folder(folder, params):
    """The four IDX files of the offline protocol, with labels readable off the pixels, and SOURCE.json."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, n in (("train", 400), ("t10k", 200)):
        y = np.arange(n) % 10
        x = rng.integers(0, 60, (n, 28, 28)) + (y * 19)[:, None, None]
        images, labels = fakedata.IDX_NAMES[split]
        (folder / images).write_bytes(gzip.compress(fakedata.idx_bytes(x), mtime=0))
        (folder / labels).write_bytes(gzip.compress(fakedata.idx_bytes(y), mtime=0))
    files = {rel: {"sha256": io.sha256_file(folder / rel)} for _k, rel in files_for("mnist", params)}
    io.write_json(folder / "SOURCE.json", {"dataset": "mnist", "source": "fashion_mnist", "protocol": "offline",
                                           "files": files})


@pytest.mark.slow
def test_cpu_fallback_trains_every_lab_variant_and_writes_the_report(tmp_path, params_raw, make_params):
    p = json.loads(json.dumps(params_raw))
    p["protocol"], p["precision"] = "offline", "fp32"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(p))
    _raw_folder(tmp_path / "raw", make_params({"protocol": "offline"}))
    assert gpu_check.main(["--raw", str(tmp_path / "raw"), "--params", str(tmp_path / "params.yaml"),
                           "--out", str(tmp_path / "out")]) == 0
    [js] = list((tmp_path / "out").glob("results-*-gpu-check-cpu.json"))
    res = json.loads(js.read_text())
    assert res["device"] == "cpu" and res["tiny"] and res["bf16_peak_flops"] > 0
    rows = {r["variant"]: r for r in res["variants"]}
    assert list(rows) == gpu_check.VARIANTS
    for r in rows.values():
        assert r["train_n"] == 128 and r["train_img_per_s"] > 0 and r["eval_img_per_s"] > 0
        assert r["train_pct_of_bf16_peak"] > 0 and r["flops_per_image"] > 0
    assert rows["mnist_cnn"]["best_val_acc"] > 30 and rows["cifar_alexnet"]["final_eval_acc"] >= 0
    # The continuation reuses mnist_cnn's two epochs and trains one.
    assert rows["mnist_cnn_20ep"]["epochs"] == 3 and rows["mnist_cnn_20ep"]["epochs_reused"] == 2
    d = res["determinism"]
    assert d["deterministic_seconds"] > 0 and d["cost"] == d["deterministic_seconds"] / d["nondeterministic_seconds"]
    assert res["mlflow"]["status"] == "ok" and res["mlflow"]["gpu_utilization_logged"] is False
    md = js.with_suffix(".md").read_text()
    assert "| mnist_cnn_20ep | 3 (2) |" in md and "Deterministic algorithms" in md and "MLflow system metrics: ok" in md


def test_missing_raw_folder_is_one_line_error(tmp_path, capsys):
    assert gpu_check.main(["--raw", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope/SOURCE.json not found" in err[0]
    assert not (tmp_path / "out").exists()
