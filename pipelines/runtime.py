"""The runtime of a variant stage (train, evaluate, embed): opened once, read by the stage body.

`Runtime.open` reads the params' variant, the prepared data (each array file checked against the
digest meta.json recorded), seeds every random stream, picks the device and its precision and, for
training, joins the DDP process group torchrun describes. The stage then reads all of that from the
one object: `rt.variant`, `rt.prep`, `rt.device`, `rt.precision`, `rt.rank`, `rt.paths`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipelines import compute, inference, io, models
from pipelines.config import Params, Variant
from pipelines.errors import DataError
from pipelines.outputs import TEST_PREDICTIONS, PredictionRow


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
    """The config a variant's model is built from and its checkpoint carries."""
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


def on_device(split: dict, cfg: dict, device: torch.device) -> compute.DeviceData:
    """A split's arrays ({"x", "y"}) on `device`, normalised as the model's config `cfg` says."""
    return compute.DeviceData.from_arrays(split["x"], split["y"], cfg["mean"], cfg["std"], device)


@dataclass(frozen=True)
class StagePaths:
    """The paths dvc.yaml gives a variant stage; it writes nothing else."""
    data: Path      # data/prepared/<dataset>
    model: Path     # models/<variant>
    out: Path       # results/<variant>/<stage>
    metrics: Path   # metrics/<variant>/<stage>.json


@dataclass
class Runtime:
    params: Params
    name: str                   # the variant
    variant: Variant
    paths: StagePaths
    prep: Prepared
    seed: int                   # params' seed, or a replicate's
    device: torch.device
    precision: str              # "fp32" | "bf16"
    rank: int = 0               # this process under DDP (torchrun); 0 of 1 otherwise
    world: int = 1

    @classmethod
    def open(cls, params: Params, name: str, paths: StagePaths, seed: Optional[int] = None,
             distributed: bool = False) -> "Runtime":
        """Read the variant and its checked data, seed every RNG (with `seed`, default params'), pick
        the device and precision; with `distributed`, join torchrun's process group."""
        v = params.variant(name)
        prep = load_prepared(paths.data)
        seed = params.seed if seed is None else seed
        compute.seed_everything(seed, params.threads)
        device = compute.pick_device(params.device)
        precision = compute.pick_precision(params.precision, device)
        rank, world = compute.init_distributed(device) if distributed else (0, 1)
        return cls(params, name, v, paths, prep, seed, device, precision, rank, world)

    def close(self) -> None:
        """Leave the process group, once every rank is done (no-op outside DDP)."""
        compute.finish_distributed()

    @property
    def run_name(self) -> str:
        """The variant's MLflow run name: the variant, or <variant>@seed<N> for a replicate."""
        return self.name if self.seed == self.params.seed else f"{self.name}@seed{self.seed}"

    def model_config(self) -> dict:
        return model_config(self.params, self.name, self.variant, self.prep.meta)

    def on_device(self, split: dict, cfg: dict) -> compute.DeviceData:
        return on_device(split, cfg, self.device)

    def load_model(self) -> tuple[torch.nn.Module, dict]:
        """The trained variant's best-epoch model (models/<v>/model.pt) on the device, and its config."""
        model, cfg = models.load_checkpoint(self.paths.model / "model.pt")
        return model.to(self.device, memory_format=torch.channels_last), cfg

    def dataset_inputs(self, contexts: dict[str, str]) -> list[dict]:
        """The prepared splits as MLflow dataset inputs ({split: context}); the digest is the file's
        sha256 that meta.json records, so the UI names exactly the bytes a run read."""
        prep, out = self.prep, []
        for split, context in contexts.items():
            arrays = getattr(prep, split)
            if arrays is None:
                continue
            out.append({"name": f"{prep.meta['dataset']}-{split}", "x": arrays["x"], "y": arrays["y"],
                        "source": (prep.folder / f"{split}.npz").resolve(), "digest": prep.meta["files"][f"{split}.npz"],
                        "context": context, "classes": prep.meta["classes"], "data_source": prep.meta["source"]})
        return out

    def write_test_predictions(self, model: torch.nn.Module, cfg: dict) -> dict:
        """Accuracy on the held-out test split; writes each image's prediction so options compare
        pairwise. {} when the dataset holds no test split."""
        if self.prep.test is None:
            return {}
        test = self.on_device(self.prep.test, cfg)
        _, acc, logits = inference.evaluate(model, test, self.variant.eval_batch_size, self.device, self.precision)
        y, pred = self.prep.test["y"], logits.argmax(1).numpy()
        io.write_csv(self.paths.out / TEST_PREDICTIONS, PredictionRow.columns(),
                     [PredictionRow(index=i, label=int(a), pred=int(b)).cells() for i, (a, b) in enumerate(zip(y, pred))])
        return {"test_acc": acc, "test_n": int(len(y))}
