"""Tiny data in the real published formats, so the real decoders run on them.

Every writer returns what a test needs to check the decoded result (the arrays written).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX: two zero bytes, type 0x08 (unsigned byte), the number of dimensions, big-endian sizes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.tobytes()


def write_idx_set(folder: Path, n_train: int = 60, n_test: int = 30, size: int = 28,
                  classes: int = 10, seed: int = 0) -> dict[str, np.ndarray]:
    """The four torchvision-named .gz files; labels cycle through the classes (balanced)."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        images, labels = IDX_NAMES[split]
        (folder / images).write_bytes(gzip.compress(idx_bytes(x), mtime=0))
        (folder / labels).write_bytes(gzip.compress(idx_bytes(y), mtime=0))
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def idx_md5s(folder: Path) -> dict[str, dict[str, str]]:
    """CHECKSUMS-style entries for the IDX files in folder."""
    return {name: {"md5": md5(Path(folder) / name)} for pair in IDX_NAMES.values() for name in pair}


def _cifar_batch(rng: np.random.Generator, n: int, label: str) -> tuple[dict, np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=n)
    # The published layout: one row per image, channel planes one after another.
    rows = x.transpose(0, 3, 1, 2).reshape(n, 3072)
    batch = {b"batch_label": label.encode(), b"labels": [int(v) for v in y], b"data": rows,
             b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
    return batch, x, y


def write_cifar_tar(path: Path, per_batch: int = 4, n_test: int = 5, seed: int = 0) -> dict:
    """cifar-10-python.tar.gz: data_batch_1..5, test_batch, batches.meta (bytes keys, as published)."""
    rng = np.random.default_rng(seed)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members, xs, ys = {}, [], []
    for i in range(1, 6):
        batch, x, y = _cifar_batch(rng, per_batch, f"training batch {i} of 5")
        members[f"data_batch_{i}"] = batch
        xs.append(x)
        ys.append(y)
    test, x_val, y_val = _cifar_batch(rng, n_test, "testing batch 1 of 1")
    members["test_batch"] = test
    members["batches.meta"] = {b"label_names": [n.encode() for n in names],
                               b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_val": x_val,
            "y_val": y_val, "classes": names}


def jpeg_bytes(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_hymenoptera_zip(path: Path, train_per_class: int = 3, val_per_class: int = 2) -> dict:
    """hymenoptera_data/{train,val}/{ants,bees}/*.jpg of odd, non-square sizes, plus the kind of
    non-image file the real archive carries (a .gif placeholder), which readers must skip."""
    colours = {"ants": (200, 40, 40), "bees": (40, 40, 200)}
    counts = {"train": train_per_class, "val": val_per_class}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hymenoptera_data/", b"")
        for split, n in counts.items():
            for cls, colour in colours.items():
                for i in range(n):
                    w, h = (48 + 8 * i, 36) if i % 2 == 0 else (30, 52 + 4 * i)
                    zf.writestr(f"hymenoptera_data/{split}/{cls}/{cls}_{i}.jpg", jpeg_bytes(w, h, colour))
        zf.writestr("hymenoptera_data/train/ants/imageNotFound.gif", b"GIF89a not really")
    return {"classes": sorted(colours), "colours": colours, "counts": counts}


class _Payload:
    """Unpickling this creates `marker`: the stand-in for code a tampered weights file would run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_planted_weights(path: Path, marker: Path) -> None:
    """A .pth-looking pickle whose loading by plain pickle would create `marker`."""
    import torch
    torch.save({"conv.weight": torch.zeros(1), "payload": _Payload(marker)}, path)
