"""Figures of the lab: training curves, confusion matrices, example grids, t-SNE scatters.

Every function returns a `matplotlib.figure.Figure` built with the object API and never touches
pyplot, so stages running in one process cannot leak figures or state into each other, and tests
can render them headless. `save_figure` writes a figure to PNG atomically.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: stages run under DVC, on servers, in CI

import numpy as np
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from pipelines.io import atomic_path

DPI = 110


def save_figure(fig: Figure, path: Path | str, dpi: int = DPI) -> None:
    """Write `fig` to `path` as PNG, atomically (a reader never sees half an image)."""
    with atomic_path(path) as tmp:
        # The temporary name ends in .tmp, so the format must be named explicitly.
        fig.savefig(tmp, format="png", dpi=dpi)


def _column(rows: Sequence[Mapping[str, object]], key: str) -> np.ndarray:
    """One numeric column of history rows; missing or empty cells become NaN (e.g. an SVM has no loss)."""
    out = []
    for row in rows:
        v = row.get(key, "")
        out.append(float("nan") if v is None or v == "" else float(v))
    return np.asarray(out, dtype=float)


def curves(history_rows: Sequence[Mapping[str, object]], best_epoch: int | None, title: str) -> Figure:
    """Loss and accuracy per epoch, training against validation, with the best epoch marked.

    history_rows: the rows of results/<variant>/train/history.csv as dicts (strings or numbers),
        keys `epoch`, `train_loss`, `val_loss`, `train_acc`, `val_acc` (accuracies in %).
    best_epoch: the epoch whose checkpoint was kept (vertical line), or None.
    """
    if not history_rows:
        raise ValueError("curves: no history rows to plot")
    epoch = _column(history_rows, "epoch")
    # A single epoch (the SVM) draws no line, so show markers.
    style = dict(marker="o", markersize=3 if len(epoch) > 1 else 6)
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, kind, unit in ((ax_loss, "loss", ""), (ax_acc, "acc", " (%)")):
        ax.plot(epoch, _column(history_rows, f"train_{kind}"), label="train", color="tab:blue", **style)
        ax.plot(epoch, _column(history_rows, f"val_{kind}"), label="validation", color="tab:orange", **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(("loss" if kind == "loss" else "accuracy") + unit)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        # Half an epoch of margin keeps a one-epoch run (the SVM) from getting fractional ticks.
        ax.set_xlim(np.nanmin(epoch) - 0.5, np.nanmax(epoch) + 0.5)
        ax.grid(alpha=0.3)
        if kind == "loss" and np.isnan(_column(history_rows, "val_loss")).all() \
                and np.isnan(_column(history_rows, "train_loss")).all():
            ax.text(0.5, 0.5, "no loss recorded", transform=ax.transAxes, ha="center", va="center", color="0.4")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.legend(fontsize=8)
    ax_loss.set_title("loss")
    ax_acc.set_title("accuracy")
    if best_epoch is not None:
        val_acc = _column(history_rows, "val_acc")
        hit = np.flatnonzero(epoch == best_epoch)
        if hit.size and math.isfinite(val_acc[hit[0]]):
            y = val_acc[hit[0]]
            ax_acc.plot([best_epoch], [y], marker="*", markersize=14, color="tab:red", zorder=5)
            ax_acc.annotate(f"{y:.2f} %", (best_epoch, y), textcoords="offset points", xytext=(-10, 6),
                            ha="right", fontsize=9, color="tab:red")
    fig.suptitle(title)
    return fig


def confusion(matrix: np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Confusion matrix, rows = true class, columns = predicted class, every count written in its cell.

    matrix: (K, K) integer counts; classes: K names. Readable from 2 to about 20 classes.
    """
    m = np.asarray(matrix)
    k = len(classes)
    if m.shape != (k, k):
        raise ValueError(f"confusion: matrix shape {m.shape} does not match {k} classes")
    side = min(max(3.2 + 0.55 * k, 4.0), 12.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    # A square-root colour scale so the few off-diagonal errors are tinted, not lost beside the diagonal.
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=max(int(m.max()), 1))
    im = ax.imshow(m, cmap="Blues", norm=norm)
    fig.colorbar(im, ax=ax, shrink=0.8, label="count")
    font = 11 if k <= 4 else 8 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            v = int(m[i, j])
            dark = norm(v) > 0.6
            colour = "white" if dark else ("0.6" if v == 0 else "black")
            ax.text(j, i, str(v), ha="center", va="center", fontsize=font, color=colour)
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center")
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def examples(images: np.ndarray, captions: Sequence[str], title: str, ncols: int = 8) -> Figure:
    """A grid of images with a caption under each.

    images: uint8 (N, H, W, C) with C = 1 (drawn in grey) or 3 (RGB); captions: N strings.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"examples: images must be (N, H, W, 1|3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"examples: images must be uint8, got {images.dtype}")
    n = len(images)
    if len(captions) != n:
        raise ValueError(f"examples: {n} images but {len(captions)} captions")
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(max(1.6 * ncols + 0.4, 3.5), 1.9 * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    if n == 0:
        axes[0].text(0.5, 0.5, "no examples", ha="center", va="center")
    for ax, img, cap in zip(axes, images, captions):
        if img.shape[-1] == 1:
            ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        ax.set_title(textwrap.fill(str(cap), 22), fontsize=8)
    fig.suptitle(title)
    return fig


def _palette(k: int) -> list:
    cmap = matplotlib.colormaps["tab10" if k <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(k)]


def tsne(panels: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str], title: str) -> Figure:
    """t-SNE scatters side by side (e.g. the intermediate and the final layer), one colour per class.

    panels: (panel title, xy float (N, 2), labels int (N,) indexing `classes`) per scatter.
    One legend serves all panels, since the colours mean the same classes in each.
    """
    if not panels:
        raise ValueError("tsne: no panels to plot")
    colours = _palette(len(classes))
    fig = Figure(figsize=(5.0 * len(panels) + 1.8, 5.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, (name, xy, labels) in zip(axes, panels):
        xy = np.asarray(xy, dtype=float)
        labels = np.asarray(labels)
        if xy.ndim != 2 or xy.shape[1] != 2 or len(labels) != len(xy):
            raise ValueError(f"tsne: panel {name!r} needs xy (N, 2) and N labels, got {xy.shape} and {labels.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"tsne: panel {name!r} has labels outside 0..{len(classes) - 1}")
        # Smaller, fainter points as N grows, so 10,000 points show density instead of a blot.
        size = float(np.clip(4000 / max(len(xy), 1), 1.5, 25))
        alpha = 0.9 if len(xy) < 1000 else 0.6
        for c in range(len(classes)):
            pick = labels == c
            if pick.any():
                ax.scatter(xy[pick, 0], xy[pick, 1], s=size, color=colours[c], alpha=alpha, linewidths=0)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    handles = [Line2D([], [], marker="o", linestyle="", color=colours[c], label=str(name))
               for c, name in enumerate(classes)]
    fig.legend(handles=handles, loc="outside right center", fontsize=9, title="class")
    fig.suptitle(title)
    return fig
