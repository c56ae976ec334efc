"""Decoders for the raw files as published: IDX (MNIST, Fashion-MNIST), the CIFAR-10 python
archive and the ants/bees image-folder zip. Each returns uint8 NHWC images and int64 labels.

Callers verify every file against SOURCE.json first: the CIFAR-10 batches are pickles, and
unpickling is only acceptable for bytes whose digest matches the published one.
"""
from __future__ import annotations

import gzip
import io
import pickle
import re
import tarfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from pipelines.data import pixels
from pipelines.errors import DataError

IDX_UBYTE = 0x08
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class Splits(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]


def read_idx(path: Path | str, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with `ndim` dimensions (3 images, 1 labels)."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: too short for an IDX header")
    zero, dtype, dims = int.from_bytes(data[0:2], "big"), data[2], data[3]
    if zero != 0 or dtype != IDX_UBYTE or dims != ndim:
        raise DataError(f"{path}: IDX magic {data[:4].hex()} is not unsigned-byte with {ndim} dimension(s) "
                        f"(expected 0000080{ndim})")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but the body holds {body.size} bytes")
    return body.reshape(shape)


def read_idx_set(raw_dir: Path, classes: list[str]) -> Splits:
    """The four torchvision-named IDX files: official train -> train, t10k -> val."""
    def pair(prefix: str) -> tuple[np.ndarray, np.ndarray]:
        x = read_idx(raw_dir / f"{prefix}-images-idx3-ubyte.gz", 3)
        y = read_idx(raw_dir / f"{prefix}-labels-idx1-ubyte.gz", 1)
        if len(x) != len(y):
            raise DataError(f"{raw_dir}: {prefix} has {len(x)} images but {len(y)} labels")
        if y.size and int(y.max()) >= len(classes):
            raise DataError(f"{raw_dir}: {prefix} label {int(y.max())} is outside 0..{len(classes) - 1}")
        return x[..., None], y.astype(np.int64)
    x_tr, y_tr = pair("train")
    x_va, y_va = pair("t10k")
    return Splits(x_tr, y_tr, x_va, y_va, list(classes))


def _unpickle(tar: tarfile.TarFile, member: str) -> dict:
    try:
        f = tar.extractfile(member)
    except KeyError:
        f = None
    if f is None:
        raise DataError(f"{tar.name}: {member} is missing from the archive")
    # encoding='bytes': the batches were pickled by Python 2, their str keys load as bytes.
    return pickle.load(f, encoding="bytes")


def _cifar_batch(tar: tarfile.TarFile, member: str) -> tuple[np.ndarray, np.ndarray]:
    d = _unpickle(tar, member)
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{tar.name}: {member} has data {data.shape} and {len(labels)} labels")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B), each plane row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def read_cifar10(path: Path | str) -> Splits:
    """cifar-10-python.tar.gz: data_batch_1..5 -> train, test_batch -> val, names from batches.meta."""
    root = "cifar-10-batches-py"
    with tarfile.open(path, "r:gz") as tar:
        meta = _unpickle(tar, f"{root}/batches.meta")
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
        train = [_cifar_batch(tar, f"{root}/data_batch_{i}") for i in range(1, 6)]
        x_va, y_va = _cifar_batch(tar, f"{root}/test_batch")
    x_tr = np.concatenate([x for x, _ in train])
    y_tr = np.concatenate([y for _, y in train])
    for y in (y_tr, y_va):
        if y.size and (y.min() < 0 or y.max() >= len(classes)):
            raise DataError(f"{path}: labels outside 0..{len(classes) - 1}")
    return Splits(np.ascontiguousarray(x_tr), y_tr, np.ascontiguousarray(x_va), y_va, classes)


def square_rgb(img: Image.Image, size: int, where: str = "image") -> np.ndarray:
    """8-bit RGB (pipelines/data/pixels.py), the shorter side resized to `size` (bilinear, antialiased),
    a centre-cropped square."""
    img = pixels.to_8bit(img, pixels.samples(img, where), where).convert("RGB")
    w, h = img.size
    if w <= h:
        nw, nh = size, max(size, int(size * h / w))
    else:
        nw, nh = max(size, int(size * w / h)), size
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = int(round((nw - size) / 2)), int(round((nh - size) / 2))
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def read_image_folder_zip(path: Path | str, size: int, root: str = "hymenoptera_data") -> Splits:
    """<root>/{train,val}/<class>/<image> inside a zip; classes sorted by name as ImageFolder does.

    Files without an image extension are skipped (the ants/bees archive ships a .gif
    placeholder that ImageFolder ignores too).
    """
    pattern = re.compile(rf"^{re.escape(root)}/(train|val)/([^/]+)/([^/]+)$")
    entries: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            m = pattern.match(name)
            if m and m.group(3).lower().endswith(IMAGE_EXTS) and not m.group(3).startswith("."):
                entries[m.group(1)].append((m.group(2), name))
        classes = sorted({c for split in entries.values() for c, _ in split})
        if not entries["train"] or not entries["val"]:
            raise DataError(f"{path}: no images under {root}/train/<class>/ and {root}/val/<class>/")
        out = []
        for split in ("train", "val"):
            xs, ys = [], []
            for cls, name in entries[split]:
                try:
                    with Image.open(io.BytesIO(zf.read(name))) as img:
                        xs.append(square_rgb(img, size, f"{path}: {name}"))
                except (OSError, SyntaxError) as err:
                    raise DataError(f"{path}: {name} is not a readable image ({err})") from None
                ys.append(classes.index(cls))
            out += [np.stack(xs), np.asarray(ys, dtype=np.int64)]
    return Splits(out[0], out[1], out[2], out[3], classes)
