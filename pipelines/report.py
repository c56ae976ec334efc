"""The lab's report, assembled from what the stages wrote (docs/outputs.md), in the lab's order.

`build` reads the files and composes Markdown, failing loudly on a file whose format is wrong
and writing "not run" where a variant or a stage's output is absent (a user may run a subset).
`write` puts report.md, a self-contained report.html and figures/ in place, each file atomically.
"""
from __future__ import annotations

import base64
import csv
import html
import json
import math
import re
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import markdown

from pipelines.config import LabNumbers, Params
from pipelines.io import read_csv, read_json, write_bytes, write_text

SIMPLE_CNN = "mnist_cnn"
ALEXNET = "cifar_alexnet"
TL_OPTIONS = (
    ("tl_scratch", "trained from scratch"),
    ("tl_svm", "pretrained + linear SVM"),
    ("tl_finetune", "fine-tuning, no augmentation"),
    ("tl_finetune_aug", "fine-tuning, with augmentation"),
)
LAB_VARIANTS = (SIMPLE_CNN, ALEXNET) + tuple(v for v, _ in TL_OPTIONS)

SOURCE_TITLES = {
    "mnist": "MNIST",
    "fashion_mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "hymenoptera": "ants vs bees",
}
BACKBONE_TITLES = {"resnet18": "ResNet-18", "efficientnet_lite0": "EfficientNet-Lite0"}

# What the lab's report says in prose (quoted from SPEC.md); params.yaml `lab:` holds only the
# numbers that sit in comparison tables.
LAB_NOTES = {
    (SIMPLE_CNN, "sizes"): "The lab's table: 60,000 training and 10,000 validation images of 28×28. "
                           "(It says 3 channels; MNIST has 1. The table above is what the data is.)",
    (SIMPLE_CNN, "confusions"): "The lab's two most frequent confusions on MNIST: true 7 → predicted 2 "
                                "(8 cases) and true 6 → predicted 0 (7 cases).",
    (ALEXNET, "params"): "The lab's per-layer table listed the 61,100,840 parameters of the ImageNet AlexNet "
                         "instead of this model's; the table above is this model's and sums to its total.",
    (ALEXNET, "log"): "The lab's log: validation accuracy 10.00 % at epoch 1 rising to 71.27 % at epoch 15; "
                      "validation loss bottomed out near epochs 10–14 while training loss kept falling.",
    (ALEXNET, "confusions"): "The lab's most frequent confusions on CIFAR-10: cat ↔ dog (224 cases), "
                             "truck ↔ automobile, ship → airplane (92 cases).",
}

FIGURES = {  # figure kind -> where the stage writes it, under results/<variant>/
    "curves": "train/curves.png",
    "confusion": "eval/confusion.png",
    "confusions": "eval/confusions.png",
    "tsne": "embed/tsne.png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ReportError(ValueError):
    """A stage output that exists but does not follow docs/outputs.md; always one line."""


@dataclass(frozen=True)
class Report:
    """The report in memory: Markdown text, figure bytes by file name, warnings it shows."""
    title: str
    markdown: str
    figures: dict[str, bytes]
    warnings: tuple[str, ...]


# ---------------------------------------------------------------- reading the stage outputs

def _is_kind(value: object, kind: str) -> bool:
    if kind.endswith("?") and value is None:
        return True
    kind = kind.rstrip("?")
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "list": list, "dict": dict}[kind])


def _check(obj: dict, schema: dict[str, str], where: str) -> dict:
    for key, kind in schema.items():
        if key not in obj:
            raise ReportError(f"{where}: missing key {key!r} (see docs/outputs.md)")
        if not _is_kind(obj[key], kind):
            raise ReportError(f"{where}: {key} = {obj[key]!r} is not of type {kind.rstrip('?')}")
    return obj


def _json(path: Path, schema: dict[str, str]) -> Optional[dict]:
    """The JSON object at `path` checked against `schema`, or None if the file does not exist."""
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return _check(obj, schema, str(path))


def _csv(path: Path, columns: dict[str, str]) -> Optional[list[dict]]:
    """Rows of the CSV at `path` with `columns` converted (int, num, num? = may be empty, str)."""
    if not path.is_file():
        return None
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: not a readable CSV ({err})") from None
    header = set(rows[0]) if rows else set()
    if rows and not set(columns) <= header:
        raise ReportError(f"{path}: columns {sorted(set(columns) - header)} missing (see docs/outputs.md)")
    out = []
    for line, row in enumerate(rows, start=2):
        conv = {}
        for col, kind in columns.items():
            raw = (row.get(col) or "").strip()
            try:
                if kind == "str":
                    conv[col] = raw
                elif kind == "int":
                    conv[col] = int(raw)
                elif kind == "num?" and raw == "":
                    conv[col] = math.nan
                else:
                    conv[col] = float(raw)
            except ValueError:
                raise ReportError(f"{path} line {line}: {col} = {raw!r} is not a number") from None
        out.append(conv)
    if not out:
        raise ReportError(f"{path}: no rows")
    return out


META = {"source": "str", "source_title": "str", "protocol": "str", "classes": "list"}
SIZES = {"split": "str", "height": "int", "width": "int", "channels": "int", "samples": "int"}
TRAIN = {"params_total": "int", "best_val_acc": "num", "best_epoch": "int"}
HISTORY = {"epoch": "int", "train_loss": "num?", "train_acc": "num?", "val_loss": "num?", "val_acc": "num?"}
PARAM_ROWS = {"layer": "str", "shape": "str", "params": "int"}
EVAL = {"n": "int", "accuracy": "num", "macro_f1": "num", "top_confusions": "list"}
EMBED = {"points": "int", "layers": "dict"}


@dataclass(frozen=True)
class _Data:
    """A prepared dataset's description, or Nones when it was not prepared."""
    meta: Optional[dict]
    sizes: Optional[list[dict]]


@dataclass(frozen=True)
class _Results:
    """Everything a variant's stages wrote; a None is a stage that has not run."""
    train: Optional[dict]
    history: Optional[list[dict]]
    layers: Optional[list[dict]]
    eval: Optional[dict]
    embed: Optional[dict]
    figures: dict[str, Path]   # kind -> existing PNG

    @property
    def ran(self) -> bool:
        return any(x is not None for x in (self.train, self.eval, self.embed))


def _load_data(root: Path, name: str) -> _Data:
    d = root / "data" / "prepared" / name
    return _Data(_json(d / "meta.json", META), _csv(d / "sizes.csv", SIZES))


def _load_results(root: Path, variant: str) -> _Results:
    res, met = root / "results" / variant, root / "metrics" / variant
    ev = _json(met / "eval.json", EVAL)
    if ev is not None:
        for i, c in enumerate(ev["top_confusions"]):
            if not isinstance(c, dict):
                raise ReportError(f"{met / 'eval.json'}: top_confusions[{i}] is not an object")
            _check(c, {"true": "str", "pred": "str", "count": "int"}, f"{met / 'eval.json'}: top_confusions[{i}]")
    emb = _json(met / "embed.json", EMBED)
    if emb is not None:
        for layer, info in emb["layers"].items():
            if not isinstance(info, dict):
                raise ReportError(f"{met / 'embed.json'}: layers.{layer} is not an object")
            _check(info, {"module": "str", "dim": "int"}, f"{met / 'embed.json'}: layers.{layer}")
    figures = {}
    for kind, rel in FIGURES.items():
        p = res / rel
        if p.is_file():
            with open(p, "rb") as f:
                if f.read(8) != PNG_SIGNATURE:
                    raise ReportError(f"{p}: not a PNG image")
            figures[kind] = p
    return _Results(
        train=_json(met / "train.json", TRAIN),
        history=_csv(res / "train" / "history.csv", HISTORY),
        layers=_csv(res / "train" / "params.csv", PARAM_ROWS),
        eval=ev, embed=emb, figures=figures,
    )


def _git_commit(root: Path) -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# ---------------------------------------------------------------- formatting

def _pct(x: Optional[float]) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f} %"


def _loss(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.4f}"


def _pp(ours: Optional[float], lab: Optional[float]) -> str:
    if ours is None or lab is None or not math.isfinite(ours):
        return "—"
    return f"{ours - lab:+.2f} pp"


def _num(x: object) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return "—" if not math.isfinite(x) else f"{x:.4g}"
    return str(x)


def _cell(x: object) -> str:
    # A pipe would split the cell and '<' could start raw HTML in the rendered page.
    return str(x).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


class _Doc:
    """Markdown being written, plus the figures it links and the warnings it raised."""

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []
        self.figures: dict[str, bytes] = {}
        self.warnings: list[str] = []

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.lines.append("")

    def heading(self, level: int, text: str) -> None:
        self.add("#" * level + " " + text)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> None:
        align = ["---:" if i in right else "---" for i in range(len(header))]
        out = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
        out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
        self.add(*out)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.add(f"> **Warning:** {text}")

    def not_run(self, what: str) -> None:
        self.add(f"*Not run:* {what}.")

    def figure(self, variant: str, results: _Results, kind: str, caption: str) -> None:
        src = results.figures.get(kind)
        if src is None:
            rel = f"results/{variant}/{FIGURES[kind]}"
            self.warn(f"figure `{rel}` not found although the stage's metrics exist; rerun its stage")
            return
        name = f"{variant}_{kind}.png"
        self.figures[name] = src.read_bytes()
        self.add(f"![{caption}](figures/{name})")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


# ---------------------------------------------------------------- sections

def _data_used(params: Params, dataset: str, data: _Data) -> tuple[str, str, bool]:
    """(what this run used, what the lab used, whether they are the same data)."""
    ds = params.dataset(dataset)
    lab = SOURCE_TITLES.get(ds.seed, ds.seed)
    lab_backbone = ds.backbone_seed
    if lab_backbone:
        lab += f"; backbone {BACKBONE_TITLES.get(lab_backbone, lab_backbone)} (ImageNet)"
    if data.meta is None:
        return "not prepared", lab, False
    meta = data.meta
    used = meta["source_title"]
    if all(_is_kind(meta.get(k), "int") for k in ("height", "width", "channels")):
        # Part 1.2's offline data is Fashion-MNIST resized and repeated to 3 channels: say so.
        used += f" at {meta['height']}×{meta['width']}×{meta['channels']}"
    used += f" (protocol `{meta['protocol']}`)"
    if len(meta["classes"]) <= 4:  # a small class set is part of what the data is; ten names are noise
        used += f"; classes {' vs '.join(str(c) for c in meta['classes'])}"
    backbone = meta["backbone"].get("name") if isinstance(meta.get("backbone"), dict) else None
    if backbone:
        used += f"; backbone {BACKBONE_TITLES.get(backbone, backbone)} (ImageNet)"
    same = meta["source"] == ds.seed and (lab_backbone is None or backbone == lab_backbone)
    return used, lab, same


def _header(doc: _Doc, params: Params, data: dict[str, _Data], now: datetime) -> None:
    commit = _git_commit(doc.root)
    doc.heading(1, "Image classification, CNN architectures, transfer learning: the lab reproduced")
    doc.add(f"- Protocol: **{params.protocol}**"
            + (" (packaged offline data instead of the lab's downloads)" if params.protocol == "offline" else ""),
            f"- Generated: {now.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Code version: git `{commit}`" if commit else "- Code version: unknown (not a git checkout)",
            f"- Seed: {params.seed}")
    doc.heading(2, "Data used")
    parts = [("1.1 Simple CNN", SIMPLE_CNN), ("1.2 AlexNet", ALEXNET), ("1.3 transfer learning", TL_OPTIONS[0][0])]
    rows, differ = [], False
    for part, variant in parts:
        if variant not in params.variants:
            rows.append((part, "—", "not in params.yaml", "—", "—"))
            continue
        name = params.variants[variant].dataset
        used, lab, same = _data_used(params, name, data[name])
        differ |= not same and data[name].meta is not None
        verdict = "same data" if same else ("—" if data[name].meta is None else "different data: indicative only")
        rows.append((part, f"`{name}`", used, lab, verdict))
    doc.table(["part", "dataset", "data used here", "the lab used", "comparison with the lab"], rows)
    if differ:
        doc.add("Where the data differ from the lab's, the lab's numbers are printed beside ours for orientation "
                "only: a difference says nothing about which recipe is better.")
    for name, d in data.items():
        if d.meta is not None and d.meta["protocol"] != params.protocol:
            doc.warn(f"data/prepared/{name}/meta.json was prepared under protocol `{d.meta['protocol']}` but "
                     f"params.yaml says `{params.protocol}`; rerun its preprocess stage")


def _sizes(doc: _Doc, variant: str, dataset: str, d: _Data) -> None:
    doc.heading(3, "Dataset sizes")
    if d.sizes is None:
        doc.not_run(f"`data/prepared/{dataset}/sizes.csv` is missing")
    else:
        doc.table(["split", "height", "width", "channels", "samples"],
                  [(r["split"], r["height"], r["width"], r["channels"], f"{r['samples']:,}") for r in d.sizes],
                  right=(1, 2, 3, 4))
    if (variant, "sizes") in LAB_NOTES:
        doc.add(LAB_NOTES[(variant, "sizes")])


def _parameters(doc: _Doc, variant: str, r: _Results, lab_params: Optional[int]) -> None:
    doc.heading(3, "Trainable parameters")
    if r.train is None:
        doc.not_run(f"`metrics/{variant}/train.json` is missing")
        return
    total = r.train["params_total"]
    doc.table(["", "ours", "lab", "difference"],
              [("trainable parameters", f"{total:,}", _num(lab_params),
                "—" if lab_params is None else f"{total - lab_params:+,}")], right=(1, 2, 3))
    if r.layers is None:
        doc.not_run(f"`results/{variant}/train/params.csv` is missing")
    else:
        layer_sum = sum(x["params"] for x in r.layers)
        rows = [(f"`{x['layer']}`", x["shape"], f"{x['params']:,}") for x in r.layers]
        rows.append(("**sum**", "", f"**{layer_sum:,}**"))
        doc.table(["layer", "shape", "parameters"], rows, right=(2,))
        if layer_sum != total:
            doc.warn(f"the per-layer parameters of `{variant}` sum to {layer_sum:,} but params_total is {total:,}")
        else:
            doc.add(f"The per-layer counts sum to the model's total ({total:,}).")
    if (variant, "params") in LAB_NOTES:
        doc.add(LAB_NOTES[(variant, "params")])


def _training(doc: _Doc, variant: str, r: _Results, lab: Optional[LabNumbers], log: bool) -> None:
    doc.heading(3, "Training curves")
    if r.train is None:
        doc.not_run(f"`metrics/{variant}/train.json` is missing")
        return
    doc.figure(variant, r, "curves", f"{variant}: loss and accuracy per epoch")
    t = r.train
    lab_acc = lab.best_val_acc if lab else None
    lab_epoch = lab.best_epoch if lab else None
    rows = [("best validation accuracy", _pct(t["best_val_acc"]), _pct(lab_acc), _pp(t["best_val_acc"], lab_acc)),
            ("epoch of the best", t["best_epoch"], _num(lab_epoch),
             "—" if lab_epoch is None else f"{t['best_epoch'] - lab_epoch:+d}")]
    if _is_kind(t.get("final_val_acc"), "num"):
        rows.append(("final validation accuracy", _pct(t["final_val_acc"]), "—", "—"))
    if _is_kind(t.get("min_val_loss_epoch"), "int"):
        rows.append(("epoch of the lowest validation loss", t["min_val_loss_epoch"], "—", "—"))
    if _is_kind(t.get("epochs"), "int"):
        rows.append(("epochs trained", t["epochs"], "—", "—"))
    if _is_kind(t.get("train_seconds"), "num"):
        rows.append(("training time", f"{t['train_seconds']:.0f} s"
                     + (f" on {t['device']}" if isinstance(t.get("device"), str) else ""), "—", "—"))
    doc.table(["", "ours", "lab", "difference"], rows, right=(1, 2, 3))
    if log:
        doc.heading(3, "Per-epoch log")
        if r.history is None:
            doc.not_run(f"`results/{variant}/train/history.csv` is missing")
        else:
            doc.table(["epoch", "train loss", "val loss", "val accuracy"],
                      [(h["epoch"], _loss(h["train_loss"]), _loss(h["val_loss"]), _pct(h["val_acc"]))
                       for h in r.history], right=(0, 1, 2, 3))
        if (variant, "log") in LAB_NOTES:
            doc.add(LAB_NOTES[(variant, "log")])


def _evaluation(doc: _Doc, variant: str, r: _Results) -> None:
    doc.heading(3, "Confusion matrix")
    if r.eval is None:
        doc.not_run(f"`metrics/{variant}/eval.json` is missing")
        return
    e = r.eval
    doc.add(f"Validation accuracy {_pct(e['accuracy'])}, macro F1 {_num(e['macro_f1'])}, on {e['n']:,} images.")
    doc.figure(variant, r, "confusion", f"{variant}: confusion matrix")
    doc.heading(3, "Most frequent confusions")
    top = e["top_confusions"][:2]
    if top:
        doc.table(["rank", "true class", "predicted as", "cases"],
                  [(i + 1, c["true"], c["pred"], c["count"]) for i, c in enumerate(top)], right=(0, 3))
    else:
        doc.add("No confusions: every validation image was classified correctly.")
    if (variant, "confusions") in LAB_NOTES:
        doc.add(LAB_NOTES[(variant, "confusions")])
    doc.figure(variant, r, "confusions", f"{variant}: examples of the most frequent confusions")


def _numeric_keys(layers: Sequence[dict]) -> list[str]:
    """Numeric figures present in any layer, in first-seen order (the embed stage decides which)."""
    keys: list[str] = []
    for info in layers:
        keys += [k for k, v in info.items() if k not in ("module", "dim", *keys) and _is_kind(v, "num")]
    return keys


def _embedding(doc: _Doc, variant: str, r: _Results, level: int = 3) -> None:
    doc.heading(level, "t-SNE of the validation set")
    if r.embed is None:
        doc.not_run(f"`metrics/{variant}/embed.json` is missing")
        return
    doc.figure(variant, r, "tsne", f"{variant}: t-SNE of the intermediate and final layers")
    layers = r.embed["layers"]
    keys = _numeric_keys(list(layers.values()))
    rows = [(name, f"`{info['module']}`", f"{info['dim']:,}", *(_num(info.get(k)) for k in keys))
            for name, info in layers.items()]
    doc.table(["layer", "module", "dim", *[k.replace("_", " ") for k in keys]], rows,
              right=tuple(range(2, 3 + len(keys))))
    backend = r.embed.get("tsne_backend")
    doc.add(f"{r.embed['points']:,} validation points" + (f", t-SNE by {backend}." if isinstance(backend, str) else "."))


def _on(params: Params, dataset: Optional[str], data: dict[str, _Data]) -> str:
    """' on <data used>' for a heading, naming the lab's data too when they differ."""
    meta = data[dataset].meta if dataset is not None else None
    if meta is None:
        return ""  # not prepared: the data line below says so; naming the lab's data here would mislead
    lab = SOURCE_TITLES.get(params.datasets[dataset].seed, params.datasets[dataset].seed)
    used = SOURCE_TITLES.get(meta["source"], meta["source"])
    return f" on {used}" if used == lab else f" on {used} (the lab: {lab})"


def _classifier_part(doc: _Doc, params: Params, data: dict[str, _Data], variant: str, title: str,
                     log: bool) -> None:
    dataset = params.variants[variant].dataset if variant in params.variants else None
    doc.heading(2, f"{title} (`{variant}`){_on(params, dataset, data)}")
    if dataset is None:
        doc.not_run(f"`{variant}` is not a variant in params.yaml")
        return
    used, lab_used, same = _data_used(params, dataset, data[dataset])
    doc.add(f"Data: {used}. The lab used {lab_used}."
            + ("" if same or data[dataset].meta is None else " **Different data: the comparison is indicative only.**"))
    r = _load_results(doc.root, variant)
    _sizes(doc, variant, dataset, data[dataset])
    if not r.ran:
        doc.not_run(f"no results for `{variant}` under results/ or metrics/ (run `dvc repro` for it)")
        return
    lab = params.lab.get(variant)
    _parameters(doc, variant, r, lab.params if lab else None)
    _training(doc, variant, r, lab, log)
    _evaluation(doc, variant, r)
    _embedding(doc, variant, r)


def _accuracy(r: _Results) -> Optional[float]:
    return r.train["best_val_acc"] if r.train is not None else (r.eval["accuracy"] if r.eval else None)


def _transfer_part(doc: _Doc, params: Params, data: dict[str, _Data]) -> None:
    present = [v for v, _ in TL_OPTIONS if v in params.variants]
    dataset = params.variants[present[0]].dataset if present else None
    doc.heading(2, f"Part 1.3 — Transfer learning{_on(params, dataset, data)}")
    if present:
        used, lab_used, same = _data_used(params, dataset, data[dataset])
        doc.add(f"Data: {used}. The lab used {lab_used}."
                + ("" if same or data[dataset].meta is None else " **Different data: the comparison is indicative only.**"))
        _sizes(doc, present[0], dataset, data[dataset])
    results = {v: _load_results(doc.root, v) for v in present}
    doc.heading(3, "Comparison of the four options")
    rows = []
    for v, label in TL_OPTIONS:
        lab = params.lab.get(v)
        lab_acc = lab.val_acc if lab else None
        r = results.get(v)
        if r is None or not r.ran:
            rows.append((label, f"`{v}`", "not run", _pct(lab_acc), "—", "—", "—"))
            continue
        ours = _accuracy(r)
        rows.append((label, f"`{v}`", _pct(ours), _pct(lab_acc), _pp(ours, lab_acc),
                     _num(r.eval["macro_f1"]) if r.eval else "—",
                     f"{r.train['params_total']:,}" if r.train else "—"))
    doc.table(["option", "variant", "ours: validation accuracy", "lab", "difference", "macro F1",
               "trainable parameters"], rows, right=(2, 3, 4, 5, 6))
    doc.add("Ours is the best validation accuracy over the epochs (the checkpoint kept); the lab reported one "
            "accuracy per option.")
    # The lab compared the options' t-SNE plots by eye for linear separability; these are the measured
    # figures of each option's final layer side by side.
    finals = {v: r.embed["layers"]["final"] for v, r in results.items()
              if r.embed is not None and isinstance(r.embed["layers"].get("final"), dict)}
    if finals:
        keys = _numeric_keys(list(finals.values()))
        doc.add("Separation of the two classes in each option's final layer (from the embed stage):")
        doc.table(["option", "module", "dim", *[k.replace("_", " ") for k in keys]],
                  [(label, f"`{finals[v]['module']}`", f"{finals[v]['dim']:,}", *(_num(finals[v].get(k)) for k in keys))
                   for v, label in TL_OPTIONS if v in finals], right=tuple(range(2, 3 + len(keys))))
    for v, label in TL_OPTIONS:
        doc.heading(3, f"{label[0].upper() + label[1:]} (`{v}`)")
        r = results.get(v)
        if r is None:
            doc.not_run(f"`{v}` is not a variant in params.yaml")
            continue
        if not r.ran:
            doc.not_run(f"no results for `{v}` under results/ or metrics/ (run `dvc repro` for it)")
            continue
        if params.variants[v].classifier == "svm":
            doc.add("A linear SVM on frozen features: no training curve.")
        elif r.train is None:
            doc.not_run(f"`metrics/{v}/train.json` is missing")
        else:
            doc.figure(v, r, "curves", f"{v}: loss and accuracy per epoch")
        _embedding(doc, v, r, level=4)


def _lab_baseline(params: Params, variant: str) -> tuple[Optional[str], Optional[float]]:
    """The lab number an extra variant is measured against: its own, else the one lab variant on its data."""
    def acc(name: str) -> Optional[float]:
        lab = params.lab.get(name)
        return None if lab is None else (lab.best_val_acc if lab.best_val_acc is not None else lab.val_acc)
    if acc(variant) is not None:
        return variant, acc(variant)
    dataset = params.variants[variant].dataset
    same = [v for v in params.lab if v != variant and params.variants[v].dataset == dataset and acc(v) is not None]
    return (same[0], acc(same[0])) if len(same) == 1 else (None, None)


def _other_part(doc: _Doc, params: Params, data: dict[str, _Data]) -> None:
    others = [v for v in params.variants if v not in LAB_VARIANTS]
    if not others:
        return
    doc.heading(2, "Other variants")
    doc.add("Variants in params.yaml beyond the lab's six: recipes measured beside the lab's baselines.")
    rows = []
    for v in others:
        cfg = params.variants[v]
        r = _load_results(doc.root, v)
        base, base_acc = _lab_baseline(params, v)
        base_txt = "—" if base is None else f"{_pct(base_acc)} (`{base}`)"
        if not r.ran:
            rows.append((f"`{v}`", f"`{cfg.dataset}`", cfg.model, "not run", "—", "—", "—", base_txt, "—"))
            continue
        ours = _accuracy(r)
        rows.append((f"`{v}`", f"`{cfg.dataset}`", cfg.model,
                     f"{r.train['params_total']:,}" if r.train else "—", _pct(ours),
                     r.train["best_epoch"] if r.train else "—",
                     _num(r.eval["macro_f1"]) if r.eval else "—", base_txt, _pp(ours, base_acc)))
    doc.table(["variant", "dataset", "model", "trainable parameters", "best validation accuracy", "best epoch",
               "macro F1", "lab baseline", "difference"], rows, right=(3, 4, 5, 6, 7, 8))


def build(params: Params, root: Path, now: Optional[datetime] = None) -> Report:
    """Read every stage output under `root` (docs/outputs.md) and compose the report.

    Raises ReportError when a file exists but has the wrong format; absent files become "not run".
    """
    root = Path(root)
    doc = _Doc(root)
    data = {name: _load_data(root, name) for name in params.datasets}
    _header(doc, params, data, now or datetime.now(timezone.utc))
    warnings_at = len(doc.lines)
    _classifier_part(doc, params, data, SIMPLE_CNN, "Part 1.1 — Simple CNN", log=False)
    _classifier_part(doc, params, data, ALEXNET, "Part 1.2 — AlexNet", log=True)
    _transfer_part(doc, params, data)
    _other_part(doc, params, data)
    if doc.warnings:
        # Repeat them under the header: a reader who stops at the top should still see them.
        summary = ["## Warnings", ""] + [f"- {w}" for w in doc.warnings] + [""]
        doc.lines[warnings_at:warnings_at] = summary
    title = doc.lines[0].lstrip("# ").strip()
    return Report(title=title, markdown=doc.text(), figures=dict(doc.figures), warnings=tuple(doc.warnings))


# ---------------------------------------------------------------- output

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.5; color: #1a1a1a;
       max-width: 62rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
blockquote { border-left: 4px solid #d9822b; background: #fff6ec; margin: 1rem 0; padding: .3rem 1rem; }
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: figures inlined as data URIs, no external resource at all."""
    body = markdown.markdown(report.markdown, extensions=["tables"], output_format="html")

    def inline(m: re.Match) -> str:
        name = html.unescape(m.group(1))
        if name not in report.figures:
            raise ReportError(f"report links figures/{name}, which it does not hold")
        return 'src="data:image/png;base64,' + base64.b64encode(report.figures[name]).decode("ascii") + '"'

    body = re.sub(r'src="figures/([^"]+)"', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def write(report: Report, out_dir: Path | str) -> None:
    """Write out_dir/report.md, out_dir/report.html and out_dir/figures/*.png, each atomically.

    Figures go first, so a report file never links a figure that is not yet there; figures of an
    earlier run that this report no longer shows are removed last. Only figures/ is cleared,
    so a mistaken --out never deletes anything but report outputs.
    """
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    for name, data in report.figures.items():
        write_bytes(figures / name, data)
    page = render_html(report)
    write_text(out_dir / "report.md", report.markdown)
    write_text(out_dir / "report.html", page)
    if figures.is_dir():
        for p in figures.iterdir():
            stale_png = p.suffix == ".png" and p.name not in report.figures
            crashed_tmp = p.name.startswith(".") and p.suffix == ".tmp"   # left by a killed atomic write
            if p.is_file() and (stale_png or crashed_tmp):
                p.unlink()
