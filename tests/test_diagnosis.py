"""The curve rule on the lab's own AlexNet log and on synthetic shapes."""
from pipelines.train.diagnosis import diagnose

# The lab report's per-epoch AlexNet log (train loss, val loss, val acc), epochs 1..15.
LAB_ALEXNET = [(2.302293, 2.300810, 10.00), (2.272070, 2.109978, 18.45), (1.916227, 1.751657, 30.79),
               (1.691202, 1.535392, 41.89), (1.511061, 1.396724, 47.73), (1.339784, 1.528726, 44.37),
               (1.189249, 1.174518, 58.02), (1.069891, 1.126314, 60.49), (0.972650, 0.987152, 64.17),
               (0.878938, 0.931056, 67.07), (0.801410, 0.943449, 67.57), (0.740898, 0.951947, 66.86),
               (0.660681, 0.958129, 68.93), (0.607995, 0.874286, 70.97), (0.547257, 0.916623, 71.27)]


def _rows(triples):
    return [{"epoch": i + 1, "train_loss": t, "train_acc": 0.0, "val_loss": v, "val_acc": a}
            for i, (t, v, a) in enumerate(triples)]


def test_lab_alexnet_log_reads_as_still_improving_in_accuracy():
    # Validation loss bottoms at epoch 14 of 15: by the stated rule this is not yet overfitting,
    # whatever the lab's author concluded by eye.
    d = diagnose(_rows(LAB_ALEXNET), 10000)
    assert d["min_val_loss_epoch"] == 14 and d["best_acc_epoch"] == 15
    assert d["verdict"].startswith("still improving")


def test_rising_validation_loss_is_overfitting_from_the_epoch_after_its_minimum():
    triples = [(1.0 - 0.08 * i, 0.9 - 0.1 * i if i < 5 else 0.5 + 0.05 * (i - 4), 80 + i) for i in range(12)]
    d = diagnose(_rows(triples), 10000)
    assert d["min_val_loss_epoch"] == 5
    assert d["verdict"].startswith("overfitting from epoch 6")


def test_flat_curves_are_a_plateau():
    triples = [(0.5 - 0.01 * i, 0.40 - (0.01 * i if i < 6 else 0.05), 90.0) for i in range(12)]
    triples[5] = (triples[5][0], 0.349, 90.0)
    d = diagnose(_rows(triples), 1000)
    assert d["verdict"].startswith("plateau"), d["verdict"]


def test_single_fit_has_no_curve():
    d = diagnose([{"epoch": 1, "train_loss": float("nan"), "train_acc": 90, "val_loss": float("nan"), "val_acc": 88}], 200)
    assert d["verdict"].startswith("single fit")
