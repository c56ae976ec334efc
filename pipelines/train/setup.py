"""What the train, evaluate and embed stages share: the prepared data, the model's config, the
seeded device setup, the data on the device, and the held-out test predictions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipelines import io, models
from pipelines.config import Params, Variant
from pipelines.errors import DataError
from pipelines.outputs import TEST_PREDICTIONS, PredictionRow
from pipelines.train import engine


@dataclass
class Prepared:
    meta: dict
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    folder: Path
    test: Optional[dict[str, np.ndarray]] = None  # held out: never used to pick an epoch


def load_prepared(folder: Path | str) -> Prepared:
    """Read a prepared dataset, checking every array file against the digest meta.json recorded."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise DataError(f"{meta_path} not found: run the preprocess stage first (dvc repro)")
    meta = io.read_json(meta_path)
    fix = "rerun the preprocess stage (dvc repro --force preprocess@<dataset>)"
    splits = {}
    for split in ("train", "val", "test"):
        if split == "test" and "test.npz" not in meta["files"]:
            continue
        path = folder / f"{split}.npz"
        io.verify_sha256(path, meta["files"][f"{split}.npz"], fix)
        splits[split] = io.load_npz(path)
    return Prepared(meta, splits["train"], splits["val"], folder, splits.get("test"))


def model_config(params: Params, name: str, v: Variant, meta: dict) -> dict:
    cfg = {
        "variant": name, "model": v.model, "n_classes": len(meta["classes"]), "classes": meta["classes"],
        "in_channels": meta["channels"], "image_size": meta["height"], "hidden": v.hidden,
        "mean": meta["mean"], "std": meta["std"], "protocol": params.protocol, "dataset": v.dataset,
    }
    if v.model == "backbone":
        bb = meta.get("backbone") or {}
        if not bb.get("name"):
            raise DataError(f"{v.dataset}: prepared data has no backbone; rerun preprocess@{v.dataset}")
        cfg["backbone"] = bb["name"]
        # The backbone's own input normalisation, pretrained or not, so the runs differ only in init.
        cfg["mean"], cfg["std"] = map(list, models.BACKBONE_NORM[bb["name"]])
    return cfg


def seeded_device(params: Params, seed: Optional[int] = None) -> tuple[torch.device, str]:
    """Seed every RNG (with `seed`, default params'), then pick the device and its precision."""
    engine.seed_everything(params.seed if seed is None else seed, params.threads)
    device = engine.pick_device(params.device)
    return device, engine.pick_precision(params.precision, device)


def device_split(split: dict, cfg: dict, device) -> engine.DeviceData:
    return engine.DeviceData.from_arrays(split["x"], split["y"], cfg["mean"], cfg["std"], device)


def load_model(model_dir: Path, device):
    """The trained variant's best-epoch model (models/<v>/model.pt) on `device`, and its config."""
    model, cfg = models.load_checkpoint(model_dir / "model.pt")
    return model.to(device, memory_format=torch.channels_last), cfg


def dataset_inputs(prep: Prepared, contexts: dict[str, str]) -> list[dict]:
    """The prepared splits as MLflow dataset inputs ({split: context}); the digest is the file's
    sha256 that meta.json records, so the UI names exactly the bytes a run read."""
    out = []
    for split, context in contexts.items():
        arrays = getattr(prep, split)
        if arrays is None:
            continue
        out.append({"name": f"{prep.meta['dataset']}-{split}", "x": arrays["x"], "y": arrays["y"],
                    "source": (prep.folder / f"{split}.npz").resolve(), "digest": prep.meta["files"][f"{split}.npz"],
                    "context": context, "classes": prep.meta["classes"], "data_source": prep.meta["source"]})
    return out


def write_test_predictions(model, prep: Prepared, cfg: dict, v: Variant, device, precision, out_dir: Path) -> dict:
    """Accuracy on the held-out test split; writes each image's prediction so options compare pairwise."""
    _, acc, logits = engine.evaluate(model, device_split(prep.test, cfg, device), v.eval_batch_size, device, precision)
    y, pred = prep.test["y"], logits.argmax(1).numpy()
    io.write_csv(out_dir / TEST_PREDICTIONS, PredictionRow.columns(),
                 [PredictionRow(index=i, label=int(a), pred=int(b)).cells() for i, (a, b) in enumerate(zip(y, pred))])
    return {"test_acc": acc, "test_n": int(len(y))}
