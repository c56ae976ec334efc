"""The curve rule on real histories: the lab's own AlexNet log, the golden tiny run's histories, and
short trainings of the real loop on tiny data made here, one per shape (rising, flat, falling,
collapsing, noisy). A fall in validation accuracy or a rise in validation loss beyond noise is
never a plateau and never "within noise"."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from golden_files import WORKSPACE
from pipelines import compute, models
from pipelines.train import diagnosis, engine
from pipelines.train.diagnosis import diagnose

# The lab report's per-epoch AlexNet log (train loss, val loss, val acc), epochs 1..15.
LAB_ALEXNET = [(2.302293, 2.300810, 10.00), (2.272070, 2.109978, 18.45), (1.916227, 1.751657, 30.79),
               (1.691202, 1.535392, 41.89), (1.511061, 1.396724, 47.73), (1.339784, 1.528726, 44.37),
               (1.189249, 1.174518, 58.02), (1.069891, 1.126314, 60.49), (0.972650, 0.987152, 64.17),
               (0.878938, 0.931056, 67.07), (0.801410, 0.943449, 67.57), (0.740898, 0.951947, 66.86),
               (0.660681, 0.958129, 68.93), (0.607995, 0.874286, 70.97), (0.547257, 0.916623, 71.27)]
N_VAL = 200   # validation images of the trainings below

# Short trainings of the real loop (engine.fit) on two classes of 8x8 images that differ in brightness by
# `signal` grey levels, a share `flip` of labels flipped; each gives its shape in about a second.
SHAPES = {
    "rising": dict(n_train=256, signal=6, flip=0.0, epochs=6, optimizer="adam", lr=3e-4, hidden=8),
    "flat": dict(n_train=256, signal=40, flip=0.1, epochs=10, optimizer="adam", lr=1e-3, hidden=8),
    "falling": dict(n_train=32, signal=10, flip=0.2, epochs=15, optimizer="adam", lr=3e-3, hidden=128),
    # A learning rate too high for the task: it learns, then diverges; the training loss rises too.
    "collapsing": dict(n_train=256, signal=20, flip=0.0, epochs=15, optimizer="sgd", lr=0.2, hidden=8),
    "noisy": dict(n_train=256, signal=6, flip=0.1, epochs=15, optimizer="adam", lr=1e-2, hidden=8),
    # Every validation image fitted to float precision: a minimum validation loss of exactly 0.
    "perfect": dict(n_train=64, signal=25, flip=0.0, epochs=15, optimizer="adam", lr=1e-2, hidden=64),
}


def _rows(triples):
    return [{"epoch": i + 1, "train_loss": t, "train_acc": 0.0, "val_loss": v, "val_acc": a}
            for i, (t, v, a) in enumerate(triples)]


def _data(n: int, seed: int, signal: float, flip: float) -> compute.DeviceData:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.clip(rng.normal(128, 40, (n, 8, 8, 1)) + signal * (2 * y[:, None, None, None] - 1), 0, 255)
    if flip:
        y = np.where(rng.random(n) < flip, 1 - y, y)
    return compute.DeviceData.from_arrays(x.astype(np.uint8), y, [0.5], [0.25], torch.device("cpu"))


@pytest.fixture(scope="module")
def trained() -> dict[str, list[dict]]:
    """The per-epoch history of each of SHAPES, trained here."""
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # the same summation order wherever the suite runs
    try:
        for name, s in SHAPES.items():
            compute.seed_everything(0)
            m = models.build(dict(model="simple_cnn", in_channels=1, image_size=8, n_classes=2, hidden=s["hidden"]))
            r = engine.Recipe(s["epochs"], 16, 512, s["optimizer"], s["lr"], 0.9, 0.0, "constant", 0.0, "none")
            res = engine.fit(m, _data(s["n_train"], 1, s["signal"], s["flip"]), _data(N_VAL, 2, s["signal"], s["flip"]),
                             r, torch.device("cpu"), "fp32", 0)
            out[name] = res.history
    finally:
        torch.set_num_threads(threads)
    return out


def _golden(variant: str) -> tuple[list[dict], int]:
    """A golden tiny run's history.csv and validation size, as the stage wrote them."""
    with open(WORKSPACE / "results" / variant / "train" / "history.csv") as f:
        rows = [{k: float(v) if v else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]
    for r in rows:
        r["epoch"] = int(r["epoch"])
    return rows, json.loads((WORKSPACE / "metrics" / variant / "train.json").read_text())["val_n"]


def _no_fall_called_noise(d: dict) -> None:
    assert not d["verdict"].startswith(("plateau", "still improving")), d["verdict"]
    assert "within noise" not in d["verdict"]


def test_lab_alexnet_log_reads_as_still_improving_in_accuracy():
    # Validation loss bottoms at epoch 14 of 15: by the stated rule this is not yet overfitting,
    # whatever the lab's author concluded by eye.
    d = diagnose(_rows(LAB_ALEXNET), 10000)
    assert d["min_val_loss_epoch"] == 14 and d["best_acc_epoch"] == 15
    assert d["verdict"].startswith("still improving")


def test_rising_curves_are_still_improving(trained):
    h = trained["rising"]
    assert h[-1]["val_acc"] > h[0]["val_acc"] and h[-1]["val_loss"] < h[0]["val_loss"]
    assert diagnose(h, N_VAL)["verdict"].startswith("still improving")
    golden, n = _golden("mnist_cnn_20ep")
    d = diagnose(golden, n)
    assert d["min_val_loss_epoch"] == len(golden) and d["verdict"].startswith("still improving")


def test_flat_curves_are_a_plateau(trained):
    h = trained["flat"]
    d = diagnose(h, N_VAL)
    assert d["verdict"].startswith("plateau"), d["verdict"]
    assert d["acc_drop_from_best"] <= d["acc_drop_noise_pp"] and d["val_loss_rise_pct"] < 10
    assert d["worse_from_epoch"] is None


def test_falling_accuracy_while_training_loss_falls_is_overfitting_and_names_the_fall(trained):
    h = trained["falling"]
    d = diagnose(h, N_VAL)
    assert d["verdict"].startswith(f"overfitting from epoch {d['min_val_loss_epoch'] + 1}:"), d["verdict"]
    assert d["acc_drop_from_best"] > d["acc_drop_noise_pp"]
    assert f"{d['acc_drop_from_best']:.2f} pp below its best" in d["verdict"]
    _no_fall_called_noise(d)
    # The golden tiny run's scratch option: validation loss up 6 % while the training loss fell.
    golden, n = _golden("tl_scratch")
    assert diagnose(golden, n)["verdict"].startswith("overfitting from epoch 2:")


def test_a_collapse_is_getting_worse_whatever_the_training_loss_did(trained):
    h = trained["collapsing"]
    d = diagnose(h, N_VAL)
    best = max(r["val_acc"] for r in h)
    last_best = max(r["epoch"] for r in h if r["val_acc"] == best)
    # The shape the earlier rule called a plateau "within noise": accuracy far down, and the
    # training loss at the end above its value at the validation-loss minimum.
    assert best - h[-1]["val_acc"] > 30
    assert h[-1]["train_loss"] > h[d["min_val_loss_epoch"] - 1]["train_loss"]
    assert d["verdict"].startswith(f"getting worse from epoch {last_best + 1}:"), d["verdict"]
    assert d["worse_from_epoch"] == last_best + 1
    assert "not the textbook overfitting shape" in d["verdict"]
    _no_fall_called_noise(d)


def test_noisy_curves_are_not_called_a_collapse(trained):
    h = trained["noisy"]
    accs = [r["val_acc"] for r in h]
    assert max(accs) - min(accs[2:]) > 10   # it does jump about, epoch to epoch
    d = diagnose(h, N_VAL)
    assert d["acc_drop_from_best"] <= d["acc_drop_noise_pp"]
    assert not d["verdict"].startswith("getting worse"), d["verdict"]


def test_a_validation_loss_of_zero_is_diagnosed(trained):
    h = trained["perfect"]
    assert min(r["val_loss"] for r in h) == 0.0
    d = diagnose(h, N_VAL)
    assert d["verdict"].startswith("plateau") and d["val_loss_rise_pct"] == 0.0


@pytest.mark.parametrize("val_acc, train_loss", [
    # Accuracy falls from 90 % to 67 % over the last epochs; the training loss at the end (0.0413) is
    # above its value at the validation minimum (0.0396), as in a real collapsing run on 200 images.
    ([60, 80, 90, 90, 88, 80, 75, 70, 67, 67], [0.5, 0.2, 0.0396, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.0413]),
    # The same fall, all of it before the last P epochs: flat since, yet still a fall.
    ([60, 80, 90, 90, 70, 68, 67, 67, 67, 67], [0.5, 0.2, 0.0396, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04, 0.0413]),
])
def test_a_fall_beyond_noise_is_never_a_plateau(val_acc, train_loss):
    # Validation loss from the accuracies (lower accuracy, higher loss), minimum at the best epoch.
    rows = [{"epoch": i + 1, "train_loss": t, "train_acc": 99.0, "val_loss": 1.2 - a / 100, "val_acc": float(a)}
            for i, (a, t) in enumerate(zip(val_acc, train_loss))]
    d = diagnose(rows, N_VAL)
    assert d["verdict"].startswith("getting worse from epoch"), d["verdict"]
    _no_fall_called_noise(d)


def test_the_rule_states_its_thresholds():
    assert f"{diagnosis.LOSS_RISE * 100:.0f} %" in diagnosis.RULE and f"{diagnosis.LOSS_RISE_ALONE * 100:.0f} %" in diagnosis.RULE
    assert "getting worse" in diagnosis.RULE.lower() and "whatever the training loss did" in diagnosis.RULE


def test_single_fit_has_no_curve():
    d = diagnose([{"epoch": 1, "train_loss": float("nan"), "train_acc": 90, "val_loss": float("nan"), "val_acc": 88}], 200)
    assert d["verdict"].startswith("single fit")
