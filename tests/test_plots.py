"""Every plot function renders headless to a valid PNG of a sensible size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines import plots

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def _png(fig, path):
    plots.save_figure(fig, path)
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert 250 <= w <= 3000 and 200 <= h <= 3000, (w, h)
    assert not list(path.parent.glob(".*.tmp")), "atomic write left a temporary file"
    return w, h


def _history(n):
    # Synthetic curves: string values, as read_csv returns them.
    return [{"epoch": str(e), "train_loss": f"{1 / e:.4f}", "val_loss": f"{1 / e + 0.01 * e:.4f}",
             "train_acc": f"{80 + e:.2f}", "val_acc": f"{78 + e / 2:.2f}", "lr": "0.001", "seconds": "1.0"}
            for e in range(1, n + 1)]


def test_curves(tmp_path):
    _png(plots.curves(_history(15), 12, "synthetic curves"), tmp_path / "curves.png")


def test_curves_single_epoch_without_loss(tmp_path):
    # The SVM variant: one row, no loss recorded.
    rows = [{"epoch": "1", "train_loss": "", "val_loss": "", "train_acc": "99.0", "val_acc": "88.5"}]
    _png(plots.curves(rows, 1, "svm"), tmp_path / "svm.png")
    with pytest.raises(ValueError):
        plots.curves([], None, "empty")


@pytest.mark.parametrize("k", [10, 2])
def test_confusion(tmp_path, k):
    rng = np.random.default_rng(0)
    m = rng.integers(0, 20, (k, k))
    np.fill_diagonal(m, 900)
    w, h = _png(plots.confusion(m, FASHION[:k], f"{k} classes"), tmp_path / f"c{k}.png")
    if k == 10:
        assert w >= 700 and h >= 600  # ten classes' counts need room to be legible
    with pytest.raises(ValueError):
        plots.confusion(m, FASHION[: k - 1], "wrong")


@pytest.mark.parametrize("channels", [1, 3])
def test_examples(tmp_path, channels):
    imgs = np.random.default_rng(1).integers(0, 256, (10, 28, 28, channels), dtype=np.uint8)
    caps = [f"true Coat → pred Shirt #{i}" for i in range(10)]
    _png(plots.examples(imgs, caps, "examples", ncols=5), tmp_path / f"e{channels}.png")
    _png(plots.examples(imgs[:0], [], "none", ncols=5), tmp_path / f"empty{channels}.png")
    with pytest.raises(ValueError):
        plots.examples(imgs, caps[:3], "mismatch")
    with pytest.raises(ValueError):
        plots.examples(imgs.astype(np.float32), caps, "float")


def test_tsne(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, 2000)
    xy = rng.normal(size=(2000, 2)) + labels[:, None] * 3
    w, h = _png(plots.tsne([("intermediate", xy, labels), ("final", xy * 2, labels)], FASHION, "t-SNE"),
                tmp_path / "t.png")
    assert w > h  # two panels side by side
    two = rng.integers(0, 2, 200)
    _png(plots.tsne([("pooled", rng.normal(size=(200, 2)), two)], ["T-shirt/top", "Shirt"], "one"),
         tmp_path / "t2.png")
    with pytest.raises(ValueError):
        plots.tsne([("bad", xy, labels + 5)], FASHION, "labels out of range")
