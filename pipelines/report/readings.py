"""What several parts of the report read the same way: what the lab wrote (its data names and prose
notes), the data a run used, the validation-set size, a variant's curve diagnosis, its accuracy, the
lab number it is measured against, its final layer. Which variant plays which role in the lab's parts
is reference.yaml's `parts` (pipelines/reference.py)."""
from __future__ import annotations

from typing import Optional

from pipelines.config import Params
from pipelines.imagenet import BACKBONES
from pipelines.report.doc import Document, Inputs
from pipelines.report.load import Data, Results, is_kind
from pipelines.train import diagnosis

SOURCE_TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "hymenoptera": "ants vs bees",
}
ALEXNET_CLAIM_EPOCH = 10   # Part 1.2, the lab: "overfitting after epoch 10"

# What the lab's report says in prose (quoted from the lab's written report), by part and topic;
# reference.yaml `lab:` holds only the numbers that sit in comparison tables.
LAB_NOTES = {
    "simple_cnn": {
        "sizes": "The lab's table: 60,000 training and 10,000 validation images of 28×28. "
                 "(It says 3 channels; MNIST has 1. The table above is what the data is.)",
        "confusions": "The lab's two most frequent confusions on MNIST: true 7 → predicted 2 "
                      "(8 cases) and true 6 → predicted 0 (7 cases).",
    },
    "alexnet": {
        "params": "The lab's per-layer table listed the 61,100,840 parameters of the ImageNet AlexNet "
                  "instead of this model's; the table above is this model's and sums to its total.",
        "log": "The lab's log: validation accuracy 10.00 % at epoch 1 rising to 71.27 % at epoch 15; "
               "validation loss bottomed out near epochs 10–14 while training loss kept falling.",
        "confusions": "The lab's most frequent confusions on CIFAR-10: cat ↔ dog (224 cases), "
                      "truck ↔ automobile, ship → airplane (92 cases).",
    },
}


def how_to_run(params: Params, variant: str) -> str:
    """The command that makes a variant's results: its part of the lab, else its own stages."""
    part = params.reference.parts.part_of(variant)
    return f"`python -m pipelines.cli.repro --part {part}`" if part else f'`dvc repro --glob "*@{variant}"`'


def backbone_title(name: str) -> str:
    """A backbone's name as the report prints it (the registry's title; the key when unknown)."""
    return BACKBONES[name].title if name in BACKBONES else name


def data_used(params: Params, dataset: str, data: Data) -> tuple[str, str, bool]:
    """(what this run used, what the lab used, whether they are the same data)."""
    ds = params.dataset(dataset)
    lab = SOURCE_TITLES.get(ds.lab, ds.lab)
    lab_backbone = ds.backbone_lab
    if lab_backbone:
        lab += f"; backbone {backbone_title(lab_backbone)} (ImageNet)"
    if data.meta is None:
        return "not prepared", lab, False
    meta = data.meta
    used = meta["source_title"]
    if all(is_kind(meta.get(k), "int") for k in ("height", "width", "channels")):
        # Part 1.2's offline data is Fashion-MNIST resized and repeated to 3 channels: say so.
        used += f" at {meta['height']}×{meta['width']}×{meta['channels']}"
    used += f" (protocol `{meta['protocol']}`)"
    if len(meta["classes"]) <= 4:  # a small class set is part of what the data is; ten names are noise
        used += f"; classes {' vs '.join(str(c) for c in meta['classes'])}"
    used += _own_folder(meta.get("folder"))
    backbone = meta["backbone"].get("name") if isinstance(meta.get("backbone"), dict) else None
    if backbone:
        used += f"; backbone {backbone_title(backbone)} (ImageNet)"
    same = meta["source"] == ds.lab and (lab_backbone is None or backbone == lab_backbone)
    return used, lab, same


def _own_folder(own: object) -> str:
    """Which of your folders ran, exactly: its file count and the digest over every file's sha256."""
    if not (isinstance(own, dict) and is_kind(own.get("files"), "int") and isinstance(own.get("digest"), str)):
        return ""
    used = f" ({own['files']:,} files, digest sha256 `{own['digest'][:16]}`"
    ignored = own.get("ignored") if isinstance(own.get("ignored"), dict) else {}
    if any(ignored.values()):
        used += f"; ignored {ignored.get('hidden', 0)} hidden and {ignored.get('not_image', 0)} non-image files"
    skipped = own.get("skipped") if isinstance(own.get("skipped"), list) else []
    if skipped:
        names = ", ".join(str(x.get("path")) for x in skipped[:10] if isinstance(x, dict))
        used += f"; skipped {len(skipped)} unreadable: {names}" + (" …" if len(skipped) > 10 else "")
    empty = own.get("empty_folders") if isinstance(own.get("empty_folders"), list) else []
    if empty:
        left = own.get("skipped_classes") if isinstance(own.get("skipped_classes"), list) else []
        used += (f"; left out {len(empty)} folder(s) without images: {', '.join(str(e) for e in empty[:10])}"
                 + (" …" if len(empty) > 10 else "") + (f" (classes {', '.join(map(str, left))} not used)" if left else ""))
    return used + ")"


def data_line(src: Inputs, dataset: str) -> str:
    """'Data: <used>. The lab used <lab's>.', flagged when the two differ."""
    used, lab_used, same = data_used(src.params, dataset, src.data[dataset])
    return (f"Data: {used}. The lab used {lab_used}."
            + ("" if same or src.data[dataset].meta is None else " **Different data: the comparison is indicative only.**"))


def on_data(src: Inputs, dataset: Optional[str]) -> str:
    """' on <data used>' for a heading, naming the lab's data too when they differ."""
    meta = src.data[dataset].meta if dataset is not None else None
    if meta is None:
        return ""  # not prepared: the data line below says so; naming the lab's data here would mislead
    lab = SOURCE_TITLES.get(src.params.datasets[dataset].lab, src.params.datasets[dataset].lab)
    used = SOURCE_TITLES.get(meta["source"], meta["source"])
    return f" on {used}" if used == lab else f" on {used} (the lab: {lab})"


def n_val(data: dict[str, Data], dataset: str, r: Results) -> Optional[int]:
    """Validation-set size, which sets the binomial noise of every accuracy measured on it."""
    if r.train is not None and isinstance(r.train.get("val_n"), int):
        return r.train["val_n"]
    if r.eval is not None:
        return r.eval["n"]
    splits = (data[dataset].meta or {}).get("splits")
    return splits.get("val") if isinstance(splits, dict) and is_kind(splits.get("val"), "int") else None


def diagnosis_of(train: Optional[dict], history: Optional[list[dict]], n_val: Optional[int]) -> Optional[dict]:
    """The stage's own diagnosis; recomputed from history.csv for a train.json that predates it."""
    if train is not None and isinstance(train.get("diagnosis"), dict) and isinstance(train["diagnosis"].get("verdict"), str):
        return train["diagnosis"]
    if history is None:
        return None
    return {**diagnosis.diagnose(history, n_val or 0), "recomputed": True}


def variant_diagnosis(doc: Document, src: Inputs, variant: str) -> Optional[dict]:
    if variant not in src.params.variants:
        return None
    r = doc.results(variant)
    return diagnosis_of(r.train, r.history, n_val(src.data, src.params.variants[variant].dataset, r))


def accuracy(r: Results) -> Optional[float]:
    return r.train["best_val_acc"] if r.train is not None else (r.eval["accuracy"] if r.eval else None)


def lab_baseline(params: Params, variant: str) -> tuple[Optional[str], Optional[float]]:
    """The lab number an extra variant is measured against: its own, else the one lab variant on its data."""
    def acc(name: str) -> Optional[float]:
        lab = params.lab.get(name)
        return None if lab is None else (lab.best_val_acc if lab.best_val_acc is not None else lab.val_acc)
    if acc(variant) is not None:
        return variant, acc(variant)
    dataset = params.variants[variant].dataset
    same = [v for v in params.lab if v != variant and params.variants[v].dataset == dataset and acc(v) is not None]
    return (same[0], acc(same[0])) if len(same) == 1 else (None, None)


def final_layer(r: Results) -> Optional[dict]:
    final = r.embed["layers"].get("final") if r.embed is not None else None
    return final if isinstance(final, dict) else None
