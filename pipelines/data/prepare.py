"""Decode a dataset's raw files once into the prepared format of docs/outputs.md.

The source may stand in for the dataset's own (offline protocol): Fashion-MNIST plays MNIST
as is, plays CIFAR-10 resized and repeated to three channels, and plays the two-class
transfer set as two of its classes. Those conversions happen here so that training code sees
one format whatever the protocol.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torchvision.datasets import FashionMNIST, MNIST

from pipelines.config import Dataset, Params
from pipelines.data import folder, imagenet_weights, readers
from pipelines.data.sources import CHECKSUMS, HYMENOPTERA_ZIP, WEIGHTS_DIR, files_for, read_source
from pipelines.errors import DataError
from pipelines.io import atomic_dir, save_npz, sha256_file, verify_digest, write_csv, write_json
from pipelines.outputs import Meta, SizesRow

TITLES = {
    "mnist": "MNIST handwritten digits (LeCun, Cortes, Burges)",
    "fashion_mnist": "Fashion-MNIST (Xiao, Rasul, Vollgraf; Zalando Research)",
    "cifar10": "CIFAR-10 (Krizhevsky, 2009)",
    "hymenoptera": "Hymenoptera ants/bees (PyTorch transfer-learning tutorial)",
    "image_folder": "your own images",
}
RESIZE_CHUNK = 4096  # images per interpolate call: bounds the float32 working set


def verify_raw(name: str, params: Params, raw_dir: Path) -> dict:
    """Check SOURCE.json describes what params ask for and every file still has its digest."""
    record = read_source(raw_dir)
    ds = params.dataset(name)
    want = (name, ds.source(params.protocol), params.protocol)
    got = (record.get("dataset"), record.get("source"), record.get("protocol"))
    if got != want:
        raise DataError(f"{raw_dir}/SOURCE.json holds dataset/source/protocol {got}, params want {want}; "
                        f"rerun the download stage")
    if ds.own_folder and (not isinstance(record.get("folder"), dict)
                          or record["folder"].get("path") != str(Path(ds.own_folder).resolve())):
        raise DataError(f"{raw_dir}/SOURCE.json does not describe the folder {ds.own_folder} params name; "
                        "rerun the download stage")
    files = record.get("files", {})
    for _, rel in files_for(name, params):
        entry = files.get(rel)
        if not entry or "sha256" not in entry:
            raise DataError(f"{raw_dir}/SOURCE.json does not list {rel}; rerun the download stage")
        path = raw_dir / rel
        if not path.is_file():
            raise DataError(f"{path} is missing; rerun the download stage")
        verify_digest(path, {"sha256": entry["sha256"]},
                      "the file changed since SOURCE.json recorded it; rerun the download stage")
    return record


def _decode(source: str, ds: Dataset, raw_dir: Path) -> readers.Splits:
    if source == "mnist":
        # torchvision names them "0 - zero"; the digit alone reads better in confusion tables.
        return readers.read_idx_set(raw_dir, [c.split(" - ")[0] for c in MNIST.classes])
    if source == "fashion_mnist":
        return readers.read_idx_set(raw_dir, list(FashionMNIST.classes))
    if source == "cifar10":
        return readers.read_cifar10(raw_dir / next(iter(CHECKSUMS["cifar10"])))
    if source == "hymenoptera":
        return readers.read_image_folder_zip(raw_dir / HYMENOPTERA_ZIP, ds.image_size)
    raise DataError(f"no reader for source {source!r}")


def subset(y: np.ndarray, limit: int, rng: np.random.Generator, per_class: bool) -> np.ndarray:
    """Sorted indices of a seeded subset: `limit` in all, or per class; 0 keeps everything."""
    if limit <= 0:
        return np.arange(len(y))
    if not per_class:
        return np.sort(rng.choice(len(y), size=min(limit, len(y)), replace=False))
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        picked.append(idx if len(idx) <= limit else rng.choice(idx, size=limit, replace=False))
    return np.sort(np.concatenate(picked))


def split_pool(y: np.ndarray, val_limit: int, test_limit: Optional[int], rng: np.random.Generator,
               per_class: bool) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, disjoint validation and held-out test indices drawn from one pool (the official
    test/validation set). test_limit None: no test split; 0: every image the validation split
    leaves; N: at most N. When a pool (or class) is too small for both limits it is divided in
    proportion val_limit : test_limit; a val_limit of 0 means every sample."""
    if test_limit is None:
        return subset(y, val_limit, rng, per_class), np.array([], dtype=np.int64)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if per_class else [np.arange(len(y))]
    val, test = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        if test_limit == 0:
            v = min(val_limit, len(idx)) if val_limit > 0 else len(idx)
            val.append(idx[:v])
            test.append(idx[v:])
            continue
        v = val_limit if val_limit > 0 else max(len(idx) - test_limit, 0)
        if v + test_limit > len(idx):
            # Proportional, but neither split of a class with two or more images is left empty.
            v = int(round(len(idx) * v / (v + test_limit)))
            v = min(max(v, 1), len(idx) - 1) if len(idx) >= 2 else v
        val.append(idx[:v])
        test.append(idx[v:v + test_limit])
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def resize_images(x: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize square NHWC uint8 images to size x size (bilinear, antialiased) and match channels."""
    n, h, w, c = x.shape
    if c not in (1, channels):
        raise DataError(f"cannot turn {c}-channel images into {channels}-channel ones")
    if (h, w) != (size, size):
        out = np.empty((n, size, size, c), dtype=np.uint8)
        for i in range(0, n, RESIZE_CHUNK):
            t = torch.from_numpy(x[i:i + RESIZE_CHUNK]).permute(0, 3, 1, 2).float()
            t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear",
                                                align_corners=False, antialias=True)
            out[i:i + RESIZE_CHUNK] = t.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        x = out
    if x.shape[3] != channels:
        x = np.repeat(x, channels, axis=3)
    return np.ascontiguousarray(x)


def mean_std(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale, exact, from per-channel histograms of the uint8
    values (counted in chunks: a few MB of working memory whatever the array's size)."""
    c = x.shape[-1]
    hist = np.zeros((c, 256), dtype=np.int64)
    flat = x.reshape(-1, c)
    for i in range(0, len(flat), 1 << 22):
        block = flat[i:i + (1 << 22)]
        for k in range(c):
            hist[k] += np.bincount(block[:, k], minlength=256)
    levels = np.arange(256) / 255.0
    n = np.maximum(hist.sum(1), 1)
    mean = (hist * levels).sum(1) / n
    std = np.sqrt(np.maximum((hist * levels ** 2).sum(1) / n - mean * mean, 0.0))
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def _decode_folder(ds: Dataset, record: dict, log: Callable[[str], None]) -> tuple[dict[str, np.ndarray], list[str]]:
    """The splits SOURCE.json planned, decoded; each file re-checked against its listed sha256."""
    own = record["folder"]
    root, sha = Path(own["path"]), {f["path"]: f["sha256"] for f in own["files"]}
    arrays, skipped = {}, []
    for split, items in own["splits"].items():
        x, y, bad = folder.decode(root, [(rel, k) for rel, k in items], sha, ds.image_size, ds.channels,
                                  ds.skip_bad_images)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
        skipped += bad
        log(f"  decoded {split}: {x.shape}" + (f", skipped {len(bad)} unreadable" if bad else ""))
    for split in ("train", "val"):
        if not len(arrays.get(f"y_{split}", ())):
            raise DataError(f"{root}: no readable images left for the {split} split")
    own["decode_skipped"] = skipped
    return arrays, list(own["classes"])


def decode_splits(name: str, params: Params, raw_dir: Path, log: Callable[[str], None] = lambda msg: None,
          record: Optional[dict] = None, seed: Optional[int] = None) -> tuple[dict[str, np.ndarray], list[str]]:
    """The train/val arrays and class names of dataset `name` (raw files already verified). The seeded
    subsets (training, validation, test) are drawn with `seed`, params' `seed` when None."""
    ds = params.dataset(name)
    source = ds.source(params.protocol)
    seed = params.seed if seed is None else seed
    if source == "image_folder":
        if seed != params.seed:
            raise DataError(f"datasets.{name} is an image folder, whose splits the download stage drew with "
                            f"params' seed {params.seed} (SOURCE.json); another seed ({seed}) cannot redraw them here")
        return _decode_folder(ds, record if record is not None else read_source(raw_dir), log)
    data = _decode(source, ds, raw_dir)
    log(f"  decoded {source}: train {data.x_train.shape}, val {data.x_val.shape}")
    x_tr, y_tr, x_va, y_va, classes = data
    if source == "fashion_mnist" and ds.offline_classes:
        keep = list(ds.offline_classes)
        if any(not 0 <= k < len(classes) for k in keep) or len(set(keep)) != len(keep):
            raise DataError(f"datasets.{name}.offline_classes {keep}: need distinct indices in 0..{len(classes) - 1}")
        remap = np.full(len(classes), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        m_tr, m_va = remap[y_tr] >= 0, remap[y_va] >= 0
        x_tr, y_tr, x_va, y_va = x_tr[m_tr], remap[y_tr[m_tr]], x_va[m_va], remap[y_va[m_va]]
        classes = [classes[k] for k in keep]
    # A dataset with a backbone is the transfer role, whose limits count per class (balanced).
    per_class = ds.backbone(params.protocol) is not None
    i_tr = subset(y_tr, ds.train_limit, np.random.default_rng([seed, 0]), per_class)
    i_va, i_te = split_pool(y_va, ds.val_limit, ds.test_limit, np.random.default_rng([seed, 1]), per_class)
    if ds.test_limit is not None and not len(i_te):
        raise DataError(f"datasets.{name}.test_limit = {ds.test_limit}: no images left for a test split after "
                        f"val_limit = {ds.val_limit}; lower val_limit")
    x_te, y_te = x_va[i_te], y_va[i_te]
    x_tr, y_tr, x_va, y_va = x_tr[i_tr], y_tr[i_tr], x_va[i_va], y_va[i_va]
    arrays = {"x_train": resize_images(x_tr, ds.image_size, ds.channels), "y_train": y_tr.astype(np.int64),
              "x_val": resize_images(x_va, ds.image_size, ds.channels), "y_val": y_va.astype(np.int64)}
    if len(i_te):
        arrays.update(x_test=resize_images(x_te, ds.image_size, ds.channels), y_test=y_te.astype(np.int64))
    return arrays, classes


def _write_backbone(name: str, params: Params, raw_dir: Path, record: dict, tmp_out: Path) -> dict:
    backbone = params.dataset(name).backbone(params.protocol)
    filename, spec = next(iter(CHECKSUMS[backbone].items()))
    rel = f"{WEIGHTS_DIR}/{filename}"
    path = raw_dir / rel
    # verify_raw compared against SOURCE.json; that record could itself be edited, so the
    # published digest is checked again right before the unpickling it guards.
    verify_digest(path, spec, "not the published weights; refusing to load them")
    state = imagenet_weights.convert(backbone, imagenet_weights.load_weights(path))
    imagenet_weights.save(tmp_out / "backbone.pt", state)
    return {"name": backbone, "file": "backbone.pt", "sha256": sha256_file(tmp_out / "backbone.pt"),
            "weights": rel, "weights_sha256": sha256_file(path), "origin": record["files"][rel]["origin"]}


def prepare(name: str, params: Params, raw_dir: Path | str, out_dir: Path | str,
            log: Callable[[str], None] = lambda msg: None, seed: Optional[int] = None) -> dict:
    """Write train.npz, val.npz (test.npz), meta.json, sizes.csv (+ backbone.pt) to out_dir; return meta.
    `seed` draws the seeded subsets instead of params' `seed` (decode_splits)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    ds = params.dataset(name)
    record = verify_raw(name, params, raw_dir)
    log(f"  verified {len(record['files'])} raw file(s) against {raw_dir}/SOURCE.json")
    arrays, classes = decode_splits(name, params, raw_dir, log, record, seed)
    with atomic_dir(out_dir) as tmp:
        save_npz(tmp / "train.npz", x=arrays["x_train"], y=arrays["y_train"])
        save_npz(tmp / "val.npz", x=arrays["x_val"], y=arrays["y_val"])
        splits = ["train", "val"]
        if "y_test" in arrays:
            save_npz(tmp / "test.npz", x=arrays["x_test"], y=arrays["y_test"])
            splits.append("test")
        files = {f"{s}.npz": sha256_file(tmp / f"{s}.npz") for s in splits}
        backbone = None
        if ds.backbone(params.protocol):
            backbone = _write_backbone(name, params, raw_dir, record, tmp)
            files["backbone.pt"] = backbone["sha256"]
            log(f"  backbone {backbone['name']}: backbone.pt from {backbone['weights']}")
        mean, std = mean_std(arrays["x_train"])
        counts = {s: len(arrays[f"y_{s}"]) for s in splits}
        meta = {"dataset": name, "source": record["source"], "source_title": TITLES[record["source"]],
                "protocol": params.protocol, "classes": classes, "height": ds.image_size,
                "width": ds.image_size, "channels": ds.channels, "mean": mean, "std": std,
                "splits": counts, "files": files, "backbone": backbone}
        if "folder" in record:
            own = record["folder"]
            meta["source_title"] = f"your own images, {own['path']}"
            meta["folder"] = {"path": own["path"], "files": len(own["files"]), "digest": own["digest"],
                              "layout": own["layout"], "ignored": own["ignored"],
                              "skipped": own["skipped"] + own.get("decode_skipped", []),
                              "empty_folders": own.get("empty_folders", []), "skipped_classes": own.get("skipped_classes", [])}
        write_json(tmp / "meta.json", Meta.model_validate(meta).dump())
        write_csv(tmp / "sizes.csv", SizesRow.columns(),
                  [SizesRow(split=s, height=ds.image_size, width=ds.image_size, channels=ds.channels,
                            samples=counts[s]).cells() for s in splits])
    return meta
