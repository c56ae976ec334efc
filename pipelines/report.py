"""The lab's report, assembled from what the stages wrote (docs/outputs.md), in the lab's order.

`build` reads the files and composes Markdown, failing loudly on a file whose format is wrong
and writing "not run" where a variant or a stage's output is absent (a user may run a subset).
`write` puts report.md, a self-contained report.html and figures/ in place, each file atomically.
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import markdown

from pipelines import paired
from pipelines import report_evidence as ev
from pipelines.config import LabNumbers, Params
from pipelines.io import write_bytes, write_text
from pipelines.report_data import (FIGURES, Data, ReportError, Results, git_commit, is_kind, load_data,
                                   load_replicates, load_results, load_test_predictions)
from pipelines.report_evidence import loss as _loss, num as _num, pct as _pct, pp as _pp

SIMPLE_CNN = "mnist_cnn"
SIMPLE_CNN_20EP = "mnist_cnn_20ep"     # Part 1.1 "would more epochs help?"
SIMPLE_CNN_SMALL = "mnist_cnn_small"   # Part 1.1 "a cheaper network"
ALEXNET = "cifar_alexnet"
ALEXNET_CLAIM_EPOCH = 10               # the lab: "overfitting after epoch 10"
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

# What the lab's report says in prose (quoted from the lab's written report); params.yaml `lab:` holds only the
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


@dataclass(frozen=True)
class Report:
    """The report in memory: Markdown text, figure bytes by file name, warnings it shows."""
    title: str
    markdown: str
    figures: dict[str, bytes]
    warnings: tuple[str, ...]
    # Tables also logged to MLflow by the report stage: name -> (header, rows), the same rows as in the text.
    tables: dict[str, tuple[tuple[str, ...], list[tuple]]] = field(default_factory=dict)


# ---------------------------------------------------------------- formatting

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
        self.toc: list[tuple[int, str, str]] = []   # (level, text, anchor) of the headings the contents list
        self.loaded: dict[str, Results] = {}
        self.contents_at = 0   # where build() puts the contents, once every heading is known

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        self.lines.append("")

    def heading(self, level: int, text: str, anchor: Optional[str] = None) -> None:
        # `{#id}` (attr_list) gives the HTML heading a stable id for the contents and the browser check;
        # an id made from the text would change with the data named in it.
        self.add("#" * level + " " + text + (f" {{#{anchor}}}" if anchor else ""))
        if anchor:
            self.toc.append((level, text, anchor))

    def results(self, variant: str) -> Results:
        if variant not in self.loaded:
            self.loaded[variant] = load_results(self.root, variant)
        return self.loaded[variant]

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

    def figure(self, variant: str, results: Results, kind: str, caption: str) -> None:
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

def _test_cell(doc: _Doc, params: Params, variant: str) -> str:
    """Held-out test accuracy of a variant: its own run, or mean ± std over its seeds."""
    r = doc.results(variant)
    runs = ([r.train] if r.train is not None else []) + load_replicates(doc.root, params, variant)[0]
    test = [t["test_acc"] for t in runs if ev.finite(t.get("test_acc"))]
    if not test and r.eval is not None and ev.finite(r.eval.get("test_accuracy")):
        test = [r.eval["test_accuracy"]]
    return ev.mean_cell(test) + (f" (n = {len(test)})" if len(test) > 1 else "") if test else "—"


def _run_time(doc: _Doc, params: Params) -> Optional[str]:
    """Whole-run time as the stages recorded it in metrics/: train (with replicates), evaluate, embed."""
    kinds = {"train": "training", "evaluate": "evaluation", "embed": "embedding"}
    spent = {kind: [0.0, 0] for kind in kinds.values()}
    for stage, sec, _, _ in _stage_times(doc, params):
        if sec:  # a stage that recorded no time is not counted as one
            kind = spent[kinds[stage.split("@")[0]]]
            kind[0] += sec
            kind[1] += 1
    total = sum(sec for sec, _ in spent.values())
    if not total:
        return None
    h, rest = divmod(int(round(total)), 3600)
    parts = ", ".join(f"{kind} {sec / 60:.1f} min ({k} stage{'s' if k != 1 else ''})" for kind, (sec, k) in spent.items() if k)
    return (f"**Whole-run time: {h}:{rest // 60:02d}:{rest % 60:02d}** (h:mm:ss), the sum of the times the stages "
            f"recorded in `metrics/`: {parts}. Not counted: download, preprocess, the report, process start-up.")


def _summary(doc: _Doc, params: Params, data: dict[str, Data], transfer: Optional[dict]) -> None:
    doc.heading(2, "Summary", "summary")
    lines = []
    for name, d in data.items():
        if d.meta is None or not any(v.dataset == name for v in params.variants.values()):
            continue
        used, _, same = _data_used(params, name, d)
        splits = d.meta.get("splits") if isinstance(d.meta.get("splits"), dict) else {}
        sizes = ", ".join(f"{k} {n:,}" for k, n in splits.items() if is_kind(n, "int"))
        lines.append(f"- `{name}`: {used}" + (f"; {sizes} images" if sizes else "")
                     + ("" if same else " (not the lab's data: comparisons with the lab are indicative)"))
    doc.add("**Data that ran:**", *(lines or ["- nothing prepared yet"]))
    rows = []
    for v in params.variants:
        r = doc.results(v)
        ours = _accuracy(r) if r.ran else None
        base, lab = _lab_baseline(params, v)
        lab_txt = "—" if base is None else _pct(lab) + ("" if base == v else f" (`{base}`)")
        rows.append((f"`{v}`", f"`{params.variants[v].dataset}`", _pct(ours) if r.ran else "not run",
                     _test_cell(doc, params, v), lab_txt, _pp(ours, lab)))
    doc.table(["variant", "dataset", "best validation accuracy", "held-out test accuracy", "lab", "ours − lab"],
              rows, right=(2, 3, 4, 5))
    if transfer is not None:
        doc.add(f"**Transfer-learning verdicts** ({transfer['n']:,} held-out test images, paired; "
                "[the table and the rule](#tl-noise)):",
                *[f"- {row[-1]}" if " beats " in row[-1] else f"- {row[0]}: {row[-1]}" for row in transfer["rows"]])
    else:
        doc.add("**Transfer-learning verdicts:** none: no per-image test predictions were found "
                "(`results/<variant>/evaluate/test_predictions.csv`; the dataset needs a `test_limit`).")
    doc.add(_run_time(doc, params) or "**Whole-run time:** unknown (no stage has recorded its time yet).")


def _data_used(params: Params, dataset: str, data: Data) -> tuple[str, str, bool]:
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
    if all(is_kind(meta.get(k), "int") for k in ("height", "width", "channels")):
        # Part 1.2's offline data is Fashion-MNIST resized and repeated to 3 channels: say so.
        used += f" at {meta['height']}×{meta['width']}×{meta['channels']}"
    used += f" (protocol `{meta['protocol']}`)"
    if len(meta["classes"]) <= 4:  # a small class set is part of what the data is; ten names are noise
        used += f"; classes {' vs '.join(str(c) for c in meta['classes'])}"
    own = meta.get("folder")
    if isinstance(own, dict) and is_kind(own.get("files"), "int") and isinstance(own.get("digest"), str):
        # Which of your folders ran, exactly: its file count and the digest over every file's sha256.
        used += f" ({own['files']:,} files, digest sha256 `{own['digest'][:16]}`"
        ignored = own.get("ignored") if isinstance(own.get("ignored"), dict) else {}
        if any(ignored.values()):
            used += f"; ignored {ignored.get('hidden', 0)} hidden and {ignored.get('not_image', 0)} non-image files"
        skipped = own.get("skipped") if isinstance(own.get("skipped"), list) else []
        if skipped:
            names = ", ".join(str(x.get("path")) for x in skipped[:10] if isinstance(x, dict))
            used += f"; skipped {len(skipped)} unreadable: {names}" + (" …" if len(skipped) > 10 else "")
        used += ")"
    backbone = meta["backbone"].get("name") if isinstance(meta.get("backbone"), dict) else None
    if backbone:
        used += f"; backbone {BACKBONE_TITLES.get(backbone, backbone)} (ImageNet)"
    same = meta["source"] == ds.seed and (lab_backbone is None or backbone == lab_backbone)
    return used, lab, same


def _header(doc: _Doc, params: Params, data: dict[str, Data], now: datetime, transfer: Optional[dict]) -> None:
    commit = git_commit(doc.root)
    doc.heading(1, "Image classification, CNN architectures, transfer learning: the lab reproduced")
    doc.add(f"- Protocol: **{params.protocol}**"
            + (" (packaged offline data instead of the lab's downloads)" if params.protocol == "offline" else ""),
            f"- Generated: {now.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Code version: git `{commit}`" if commit else "- Code version: unknown (not a git checkout)",
            f"- Seed: {params.seed}",
            *[f"- Your own images: `{name}` from `{ds.own_folder}` (whatever the protocol)"
              for name, ds in params.datasets.items() if ds.own_folder])
    _summary(doc, params, data, transfer)
    doc.contents_at = len(doc.lines)
    doc.heading(2, "Data used", "data-used")
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


def _sizes(doc: _Doc, variant: str, dataset: str, d: Data) -> None:
    doc.heading(3, "Dataset sizes")
    if d.sizes is None:
        doc.not_run(f"`data/prepared/{dataset}/sizes.csv` is missing")
    else:
        doc.table(["split", "height", "width", "channels", "samples"],
                  [(r["split"], r["height"], r["width"], r["channels"], f"{r['samples']:,}") for r in d.sizes],
                  right=(1, 2, 3, 4))
    if (variant, "sizes") in LAB_NOTES:
        doc.add(LAB_NOTES[(variant, "sizes")])


def _parameters(doc: _Doc, variant: str, r: Results, lab_params: Optional[int]) -> None:
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


def _n_val(data: dict[str, Data], dataset: str, r: Results) -> Optional[int]:
    """Validation-set size, which sets the binomial noise of every accuracy measured on it."""
    if r.train is not None and isinstance(r.train.get("val_n"), int):
        return r.train["val_n"]
    if r.eval is not None:
        return r.eval["n"]
    splits = (data[dataset].meta or {}).get("splits")
    return splits.get("val") if isinstance(splits, dict) and is_kind(splits.get("val"), "int") else None


def _diagnosis(doc: _Doc, params: Params, data: dict[str, Data], variant: str) -> Optional[dict]:
    if variant not in params.variants:
        return None
    r = doc.results(variant)
    return ev.diagnosis_of(r.train, r.history, _n_val(data, params.variants[variant].dataset, r))


def _verdict_line(doc: _Doc, d: Optional[dict]) -> None:
    if d is not None:
        doc.add(f"**Curve diagnosis:** {d['verdict']}. (The rule: [curve diagnosis](#curve-diagnosis).)")


def _training(doc: _Doc, variant: str, r: Results, lab: Optional[LabNumbers], log: bool,
              verdict: Optional[dict]) -> None:
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
    if is_kind(t.get("final_val_acc"), "num"):
        rows.append(("final validation accuracy", _pct(t["final_val_acc"]), "—", "—"))
    if is_kind(t.get("test_acc"), "num"):
        rows.append(("held-out test accuracy (best epoch)", _pct(t["test_acc"]), "—", "—"))
    if is_kind(t.get("min_val_loss_epoch"), "int"):
        rows.append(("epoch of the lowest validation loss", t["min_val_loss_epoch"], "—", "—"))
    if is_kind(t.get("epochs"), "int"):
        rows.append(("epochs trained", t["epochs"], "—", "—"))
    if is_kind(t.get("train_seconds"), "num"):
        rows.append(("training time", f"{t['train_seconds']:.0f} s"
                     + (f" on {t['device']}" if isinstance(t.get("device"), str) else ""), "—", "—"))
    doc.table(["", "ours", "lab", "difference"], rows, right=(1, 2, 3))
    _verdict_line(doc, verdict)
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


def _evaluation(doc: _Doc, variant: str, r: Results, level: int = 3) -> None:
    doc.heading(level, "Confusion matrix")
    if r.eval is None:
        doc.not_run(f"`metrics/{variant}/evaluate.json` is missing")
        return
    e = r.eval
    test = (f"; held-out test accuracy {_pct(e['test_accuracy'])} on {e['test_n']:,} images"
            if is_kind(e.get("test_accuracy"), "num") and is_kind(e.get("test_n"), "int") else "")
    doc.add(f"Validation accuracy {_pct(e['accuracy'])}, macro F1 {_num(e['macro_f1'])}, on {e['n']:,} images{test}.")
    doc.figure(variant, r, "confusion", f"{variant}: confusion matrix")
    doc.heading(level, "Most frequent confusions")
    top = e["top_confusions"][:2]
    if top:
        doc.table(["rank", "true class", "predicted as", "cases"],
                  [(i + 1, c["true"], c["pred"], c["count"]) for i, c in enumerate(top)], right=(0, 3))
    else:
        doc.add("No confusions: every validation image was classified correctly.")
    if (variant, "confusions") in LAB_NOTES:
        doc.add(LAB_NOTES[(variant, "confusions")])
    if top:  # the stage draws the example grid only when there is something to show
        doc.figure(variant, r, "confusions", f"{variant}: examples of the most frequent confusions")
    doc.heading(level, "Accuracy per class")
    if r.per_class is None:
        doc.not_run(f"`results/{variant}/evaluate/per_class.csv` is missing")
    else:
        ev.per_class(doc, r.per_class)


def _embedding(doc: _Doc, variant: str, r: Results, level: int = 3) -> None:
    doc.heading(level, "t-SNE of the validation set")
    if r.embed is None:
        doc.not_run(f"`metrics/{variant}/embed.json` is missing")
        return
    doc.figure(variant, r, "tsne", f"{variant}: t-SNE of the intermediate and final layers")
    ev.embedding_table(doc, r.embed["layers"])
    sentence = ev.layers_sentence(r.embed["layers"])
    if sentence:
        doc.add(sentence)
    backend = r.embed.get("tsne_backend")
    doc.add(f"{r.embed['points']:,} validation points" + (f", t-SNE by {backend}" if isinstance(backend, str) else "")
            + "; silhouette, k-NN and linear-probe figures on a seeded subsample of them.")


def _final_layer(r: Results) -> Optional[dict]:
    final = r.embed["layers"].get("final") if r.embed is not None else None
    return final if isinstance(final, dict) else None


def _on(params: Params, dataset: Optional[str], data: dict[str, Data]) -> str:
    """' on <data used>' for a heading, naming the lab's data too when they differ."""
    meta = data[dataset].meta if dataset is not None else None
    if meta is None:
        return ""  # not prepared: the data line below says so; naming the lab's data here would mislead
    lab = SOURCE_TITLES.get(params.datasets[dataset].seed, params.datasets[dataset].seed)
    used = SOURCE_TITLES.get(meta["source"], meta["source"])
    return f" on {used}" if used == lab else f" on {used} (the lab: {lab})"


def _classifier_part(doc: _Doc, params: Params, data: dict[str, Data], variant: str, title: str, anchor: str,
                     log: bool, after_training=None, after_embedding=None) -> None:
    dataset = params.variants[variant].dataset if variant in params.variants else None
    doc.heading(2, f"{title} (`{variant}`){_on(params, dataset, data)}", anchor)
    if dataset is None:
        doc.not_run(f"`{variant}` is not a variant in params.yaml")
        return
    used, lab_used, same = _data_used(params, dataset, data[dataset])
    doc.add(f"Data: {used}. The lab used {lab_used}."
            + ("" if same or data[dataset].meta is None else " **Different data: the comparison is indicative only.**"))
    r = doc.results(variant)
    _sizes(doc, variant, dataset, data[dataset])
    hooks = [h for h in (after_training, after_embedding) if h is not None]
    if not r.ran:
        doc.not_run(f"no results for `{variant}` under results/ or metrics/ (run `dvc repro` for it)")
        for hook in hooks:  # their own variants may have run
            hook()
        return
    lab = params.lab.get(variant)
    _parameters(doc, variant, r, lab.params if lab else None)
    _training(doc, variant, r, lab, log, _diagnosis(doc, params, data, variant))
    if after_training:
        after_training()
    _evaluation(doc, variant, r)
    _embedding(doc, variant, r)
    if after_embedding:
        after_embedding()


def _more_epochs(doc: _Doc, params: Params, data: dict[str, Data]) -> None:
    doc.heading(3, "Would more epochs help?", "more-epochs")
    doc.add("The lab's author trained 10 more epochs and saw the validation loss rise near epoch 20. "
            f"`{SIMPLE_CNN_20EP}` runs `{SIMPLE_CNN}`'s recipe for longer with the same seed.")
    if SIMPLE_CNN_20EP not in params.variants:
        doc.not_run(f"`{SIMPLE_CNN_20EP}` is not a variant in params.yaml")
        return
    base, long = doc.results(SIMPLE_CNN), doc.results(SIMPLE_CNN_20EP)
    if long.train is None:
        doc.not_run(f"`metrics/{SIMPLE_CNN_20EP}/train.json` is missing (run `dvc repro` for it)")
        return
    doc.figure(SIMPLE_CNN_20EP, long, "curves", f"{SIMPLE_CNN_20EP}: loss and accuracy per epoch")
    rows = []
    for v, r in ((SIMPLE_CNN, base), (SIMPLE_CNN_20EP, long)):
        d, t = _diagnosis(doc, params, data, v), r.train
        if t is None:
            rows.append((f"`{v}`", "not run", "—", "—", "—", "—", "—"))
            continue
        rise = d.get("val_loss_rise_pct") if d else None
        rows.append((f"`{v}`", _num(t.get("epochs")), _pct(t["best_val_acc"]), t["best_epoch"],
                     _num(d.get("min_val_loss_epoch")) if d else "—",
                     f"{rise:.1f} %" if ev.finite(rise) else "—", d["verdict"] if d else "—"))
    doc.table(["variant", "epochs", "best validation accuracy", "best epoch", "min val loss epoch",
               "final val loss above its minimum", "verdict"], rows, right=(1, 2, 3, 4, 5))
    if base.history is not None and long.history is not None:
        doc.add(f"Epochs 1–{len(base.history)} of `{SIMPLE_CNN_20EP}` against `{SIMPLE_CNN}`'s history: "
                f"{ev.reproduces(base.history, long.history)}.")
    if base.train is not None:
        gain = long.train["best_val_acc"] - base.train["best_val_acc"]
        n = _n_val(data, params.variants[SIMPLE_CNN].dataset, base)
        noise = ""
        if n:
            two_se = 2 * math.sqrt(ev.binomial_se(base.train["best_val_acc"], n) ** 2
                                   + ev.binomial_se(long.train["best_val_acc"], n) ** 2)
            noise = f" ({'within' if abs(gain) <= two_se else 'beyond'} the ±{two_se:.2f} pp noise of {n:,} validation images)"
        doc.add(f"**Answer.** Training to epoch {_num(long.train.get('epochs'))} changes the best validation accuracy by "
                f"{ev.signed(gain, 2, ' pp')}{noise}: best at epoch {long.train['best_epoch']} against "
                f"{base.train['best_epoch']}.")


def _cheaper(doc: _Doc, params: Params) -> None:
    doc.heading(3, "A cheaper network", "cheaper-network")
    if SIMPLE_CNN_SMALL not in params.variants:
        doc.not_run(f"`{SIMPLE_CNN_SMALL}` is not a variant in params.yaml")
        return
    hidden = params.variants[SIMPLE_CNN_SMALL].hidden
    doc.add("The lab proposed a cheaper network with little accuracy loss; "
            f"`{SIMPLE_CNN_SMALL}` is the Simple CNN "
            + ("without fc1 (the pooled convolutional features go straight to the output layer)." if hidden == 0
               else f"with a {hidden}-unit fc1."))
    ev.cheaper_network(doc, (SIMPLE_CNN, doc.results(SIMPLE_CNN).train),
                       (SIMPLE_CNN_SMALL, doc.results(SIMPLE_CNN_SMALL).train))


def _alexnet_claim(doc: _Doc, params: Params, data: dict[str, Data]) -> None:
    doc.heading(3, "Overfitting: our curves against the lab's claim", "alexnet-overfitting")
    d = _diagnosis(doc, params, data, ALEXNET)
    if d is None:
        doc.not_run(f"`results/{ALEXNET}/train/history.csv` is missing: no curves to compare with the lab's claim")
        return
    ours = "—"
    if d is not None and "min_val_loss_epoch" in d:
        ours = (f"validation loss lowest at epoch {d['min_val_loss_epoch']}, {d['val_loss_rise_pct']:.1f} % above "
                f"that minimum at the last epoch")
    doc.table(["", "what the curves show"],
              [("the lab", f"overfitting after epoch {ALEXNET_CLAIM_EPOCH} (validation loss lowest near epochs "
                           "10–14 while training loss kept falling)"),
               ("ours", ours), ("agreement", ev.against_claim(d, ALEXNET_CLAIM_EPOCH))])


def _alexnet_vs_mnist(doc: _Doc) -> None:
    a, m = _final_layer(doc.results(ALEXNET)), _final_layer(doc.results(SIMPLE_CNN))
    sentence = ev.compare_finals((ALEXNET, a), (SIMPLE_CNN, m)) if a and m else None
    if sentence:
        doc.add(sentence)


def _accuracy(r: Results) -> Optional[float]:
    return r.train["best_val_acc"] if r.train is not None else (r.eval["accuracy"] if r.eval else None)


def _option_runs(doc: _Doc, params: Params, data: dict[str, Data], variant: str, label: str) -> dict:
    """A transfer option's accuracy per run: its own run and its replicates (other seeds)."""
    r = doc.results(variant)
    reps, expected = load_replicates(doc.root, params, variant)
    runs = ([r.train] if r.train is not None else []) + reps
    val = [t["best_val_acc"] for t in runs]
    if r.train is None and r.eval is not None:
        val.insert(0, r.eval["accuracy"])
    test = [t["test_acc"] for t in runs if ev.finite(t.get("test_acc"))]
    if r.train is not None and "test_acc" not in r.train and r.eval and ev.finite(r.eval.get("test_accuracy")):
        test.insert(0, r.eval["test_accuracy"])
    lab = params.lab.get(variant)
    return {"label": label, "variant": variant, "val": val, "test": test, "lab": lab.val_acc if lab else None,
            "val_n": _n_val(data, params.variants[variant].dataset, r), "expected": 1 + expected,
            "replicates": len(reps)}


def _transfer_comparison(doc: _Doc, params: Params) -> Optional[dict]:
    """The paired verdict rows of the transfer options (pipelines/paired.py), from every run's per-image
    test predictions; None below two options with predictions."""
    import numpy as np

    options, first = [], None
    for v, label in TL_OPTIONS:
        if v not in params.variants:
            continue
        correct = {}
        for seed, (path, y, pred) in load_test_predictions(doc.root, params, v).items():
            if first is None:
                first = (path, y)
            elif not np.array_equal(y, first[1]):
                raise ReportError(f"{path}: its labels differ from those of {first[0]}, so the two were not made on "
                                  "the same test images; rerun the train and evaluate stages of the transfer options")
            correct[seed] = y == pred
        if correct:
            options.append((label, correct))
    if len(options) < 2:
        return None
    return {"n": len(first[1]), "rows": paired.comparison_rows(options, params.seed)}


def _paired_section(doc: _Doc, transfer: dict) -> None:
    doc.table(paired.HEADER, transfer["rows"], right=(1, 2, 3, 4, 5, 6, 7))
    n = transfer["n"]
    doc.add(f"**The rule.** Every option is compared with every other on the same {n:,} held-out test images, "
            "which chose neither a model nor an epoch (selection uses the validation split only). McNemar's exact "
            "test counts only the images one option gets right and the other wrong; the interval of the "
            "difference is Agresti and Min's paired 95 % interval. Each option is trained with several seeds; a "
            f"verdict \"A beats B\" needs p < {paired.ALPHA} on the main seed (params `seed`) **and**, with two or "
            "more seeds, the Student-t 95 % interval of the mean difference over seeds on the same side of zero. "
            "Otherwise no difference is detectable: the smallest detectable difference is the one this test size "
            "would find with probability 0.8 at the two-sided 0.05 level, given the pair's share of discordant "
            f"images (at {n:,} images: {paired.smallest_detectable(n, 0.1):.1f} pp when 10 % of the images are "
            f"discordant, {paired.smallest_detectable(n, 0.2):.1f} pp at 20 %, {paired.smallest_detectable(n, 0.3):.1f} pp at 30 %).")


def _transfer_part(doc: _Doc, params: Params, data: dict[str, Data], transfer: Optional[dict]) -> None:
    present = [v for v, _ in TL_OPTIONS if v in params.variants]
    dataset = params.variants[present[0]].dataset if present else None
    doc.heading(2, f"Part 1.3 — Transfer learning{_on(params, dataset, data)}", "part-1-3")
    if present:
        used, lab_used, same = _data_used(params, dataset, data[dataset])
        doc.add(f"Data: {used}. The lab used {lab_used}."
                + ("" if same or data[dataset].meta is None else " **Different data: the comparison is indicative only.**"))
        _sizes(doc, present[0], dataset, data[dataset])
    doc.heading(3, "Comparison of the four options", "tl-comparison")
    options = [_option_runs(doc, params, data, v, label) for v, label in TL_OPTIONS if v in params.variants]
    options += [{"label": label, "variant": v, "val": [], "test": [], "lab": None, "val_n": None, "expected": 0,
                 "replicates": 0} for v, label in TL_OPTIONS if v not in params.variants]
    ev.noise_table(doc, options)
    splits = ((data[dataset].meta or {}).get("splits") if dataset else None) or {}
    test_n = splits.get("test") if isinstance(splits, dict) else None
    if is_kind(test_n, "int") and test_n > 0:
        doc.add(f"Model selection (the best epoch) uses the validation split; the test split ({test_n:,} images) "
                "was never seen during selection, so its accuracy carries no selection bias.")
    else:
        doc.add("Model selection (the best epoch) uses the validation split, and the prepared data hold no test split "
                "(as in the lab): the selected epoch's validation accuracy is optimistic by the selection itself.")
    if not any(o["replicates"] for o in options):
        doc.add("n = 1: no replicate runs found (`metrics/replicates/`), so the spread over seeds is unknown and "
                "no confidence interval can be given.")
    else:
        seeds = ", ".join(str(s) for s in params.replicates.seeds)
        doc.add(f"Runs: each option's own (seed {params.seed}) and its replicates (seeds {seeds}). Mean ± sample "
                "standard deviation over runs; 95 % CI = mean ± t(0.975, n − 1) · s / √n. The lab's single number "
                "per option sits beside our mean.")
    doc.heading(3, "Which option is better? Paired verdicts on the held-out test set", "tl-noise")
    if transfer is not None:
        _paired_section(doc, transfer)
    elif sum(1 for o in options if o["val"]) < 2:
        doc.not_run("fewer than two options have results")
    else:
        doc.add("No per-image test predictions were found, so no paired verdict can be given. Below, indicative "
                "only: the validation accuracies, which also chose each option's best epoch.")
        ev.noise_pairs(doc, options)
    doc.heading(3, "Linear separability of the two classes", "tl-separability")
    finals = [(label, v, _final_layer(doc.results(v))) for v, label in TL_OPTIONS if v in params.variants]
    finals = [f for f in finals if f[2] is not None]
    if finals:
        doc.add("The lab judged separability from the t-SNE plots by eye; these are each option's final-layer figures.")
        ev.separability(doc, finals)
    else:
        doc.not_run("no option's embed stage has run")
    for v, label in TL_OPTIONS:
        doc.heading(3, f"{label[0].upper() + label[1:]} (`{v}`)", f"tl-{v.replace('_', '-')}")
        if v not in params.variants:
            doc.not_run(f"`{v}` is not a variant in params.yaml")
            continue
        r = doc.results(v)
        if not r.ran:
            doc.not_run(f"no results for `{v}` under results/ or metrics/ (run `dvc repro` for it)")
            continue
        if params.variants[v].classifier == "svm":
            doc.add("A linear SVM on frozen features: no training curve.")
        elif r.train is None:
            doc.not_run(f"`metrics/{v}/train.json` is missing")
        else:
            doc.figure(v, r, "curves", f"{v}: loss and accuracy per epoch")
            _verdict_line(doc, _diagnosis(doc, params, data, v))
        _evaluation(doc, v, r, level=4)
        _embedding(doc, v, r, level=4)


def _diagnosis_part(doc: _Doc, params: Params, data: dict[str, Data]) -> None:
    doc.heading(2, "Curve diagnosis of every variant", "curve-diagnosis")
    doc.add("Bias or overfitting read from each variant's curves by one rule (below). Gaps are at the last epoch: "
            "loss gap = validation − training loss; accuracy gap = training − validation accuracy.")
    rows = []
    for v in params.variants:
        r = doc.results(v)
        epochs = r.train.get("epochs") if r.train is not None else (len(r.history) if r.history else None)
        rows.append((v, _diagnosis(doc, params, data, v), epochs))
    ev.diagnosis_table(doc, rows)


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


RECIPE_FIELDS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "label_smoothing", "augment")


def _recipe_changes(params: Params, variant: str, baseline: str) -> str:
    v, b = params.variants[variant], params.variants[baseline]
    changed = [f"{f} {getattr(b, f)} → {getattr(v, f)}" for f in RECIPE_FIELDS
               if getattr(v, f) != getattr(b, f) and not (f == "momentum" and "sgd" not in (v.optimizer, b.optimizer))]
    return "; ".join(changed) or "none"


def _train_time(r: Results) -> str:
    t = r.train if r.ran else None
    return f"{t['train_seconds']:.0f} s" if t is not None and is_kind(t.get("train_seconds"), "num") else "—"


def _recipes_part(doc: _Doc, params: Params, data: dict[str, Data]) -> None:
    if not params.recipes:
        return
    doc.heading(2, "Stronger recipes at the lab's budget", "recipes")
    doc.add("Each recipe trains the same model for the same number of epochs on the same data as its baseline, "
            "the lab's recipe run here; only the training recipe differs. The goal is the best validation "
            f"accuracy named in params.yaml (`recipes`) for this run's protocol (`{params.protocol}`).")
    rows = []
    for name, rc in params.recipes.items():
        r, b = doc.results(name), doc.results(rc.baseline)
        ours, base = _accuracy(r) if r.ran else None, _accuracy(b) if b.ran else None
        goal = rc.target.get(params.protocol)
        verdict, p_txt = "not run", "—"
        if ours is not None:
            verdict = "—" if goal is None else ("met" if ours >= goal else f"not met ({_pp(ours, goal)})")
            n = _n_val(data, params.variants[name].dataset, r)
            if base is not None and n:
                p = ev.two_proportion_p(ours, n, base, n)
                p_txt = ev.p_text(p) + (" (within noise)" if p > ev.NOISE_P else "")
        rows.append((f"`{name}`", f"`{rc.baseline}`", params.variants[name].epochs, _recipe_changes(params, name, rc.baseline),
                     _pct(base), _pct(ours), _pp(ours, base), p_txt, _pct(goal), verdict,
                     f"{_train_time(b)} / {_train_time(r)}"))
    doc.table(["recipe", "baseline (lab recipe)", "epochs", "what changed", "baseline best validation accuracy",
               "recipe best validation accuracy", "difference", "p (two-proportion z)", "goal", "verdict",
               "training time, baseline / recipe"], rows,
              right=(2, 4, 5, 6, 7, 8, 10))
    doc.add("Accuracies are best-epoch validation accuracies (the split model selection uses); p is the "
            "two-proportion z-test on the validation images, which measures only that set's sampling noise.")


def _other_part(doc: _Doc, params: Params, data: dict[str, Data]) -> None:
    others = [v for v in params.variants if v not in LAB_VARIANTS]
    if not others:
        return
    doc.heading(2, "Other variants", "other-variants")
    doc.add("Variants in params.yaml beyond the lab's six: recipes measured beside the lab's baselines.")
    rows = []
    for v in others:
        cfg = params.variants[v]
        r = doc.results(v)
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
    for v in others:
        r = doc.results(v)
        doc.heading(3, f"`{v}`", f"v-{v.replace('_', '-')}")
        if not r.ran:
            doc.not_run(f"no results for `{v}` under results/ or metrics/ (run `dvc repro` for it)")
            continue
        if v == SIMPLE_CNN_20EP:
            doc.add("Its curves and verdict: [would more epochs help?](#more-epochs).")
        elif r.train is not None and params.variants[v].classifier != "svm":
            doc.figure(v, r, "curves", f"{v}: loss and accuracy per epoch")
            _verdict_line(doc, _diagnosis(doc, params, data, v))
        _evaluation(doc, v, r, level=4)
        _embedding(doc, v, r, level=4)


def _time_rows(name: str, r: Results) -> list[tuple[str, float, Optional[float], Optional[float]]]:
    """(stage, seconds, img/s, achieved GFLOP/s) of one run's stages, from the metrics they wrote."""
    rows = []
    t = r.train
    if t is not None:
        # Older metrics lack the stage's own wall time: their training seconds stand in for it.
        secs = t.get("seconds", t.get("train_seconds_here", t.get("train_seconds", 0.0)))
        ips = t.get("train_img_per_s")
        flops = t.get("flops_per_image")
        rows.append((f"train@{name}", secs, ips, 3 * flops * ips / 1e9 if flops and ips else None))
    if r.eval is not None and "seconds" in r.eval:
        rows.append((f"evaluate@{name}", r.eval["seconds"], r.eval.get("img_per_s"), None))
    if r.embed is not None and "seconds" in r.embed:
        rows.append((f"embed@{name}", r.embed["seconds"], r.embed["points"] / r.embed["seconds"]
                     if r.embed["seconds"] else None, None))
    return rows


def _stage_times(doc: _Doc, params: Params) -> list[tuple[str, float, Optional[float], Optional[float]]]:
    """_time_rows of every variant and every replicate run present."""
    rows = []
    for v in params.variants:
        rows += _time_rows(v, doc.results(v))
        for t in load_replicates(doc.root, params, v)[0]:
            rows += _time_rows(f"{v}-{t['seed']}", Results(t, None, None, None, None, None, {}))
    return rows


def _time_part(doc: _Doc, params: Params) -> None:
    """Where the time went: each stage's seconds as its metrics recorded them, and their share."""
    rows = _stage_times(doc, params)
    doc.heading(2, "Where the time went", "time")
    if not rows:
        doc.not_run("no stage metrics with timings under metrics/")
        return
    total = sum(s for _, s, _, _ in rows) or 1.0
    rows.sort(key=lambda row: -row[1])
    doc.table(["stage", "seconds", "share", "img/s", "achieved GFLOP/s (training: 3x forward)"],
              [(f"`{n}`", f"{s:,.1f}", f"{100 * s / total:.1f} %", "—" if i is None else f"{i:,.0f}",
                "—" if g is None else f"{g:,.1f}") for n, s, i, g in rows], right=(1, 2, 3, 4))
    doc.add(f"Sum of these stages: {total:,.0f} s ({total / 60:.1f} min). Download, preprocess and this report "
            "are not timed here (seconds each on packaged data). The machine's measured peak, and each path's "
            "% of it, come from `make benchmark` (README, \"Speed\").")


def _contents(doc: _Doc) -> list[str]:
    # Python-Markdown nests a list only under a four-space indent.
    lines = ["## Contents {#contents}", ""]
    lines += [f"{'    ' * (level - 2)}- [{text}](#{anchor})" for level, text, anchor in doc.toc]
    return lines + [""]


def build(params: Params, root: Path, now: Optional[datetime] = None) -> Report:
    """Read every stage output under `root` (docs/outputs.md) and compose the report.

    Raises ReportError when a file exists but has the wrong format; absent files become "not run".
    """
    root = Path(root)
    doc = _Doc(root)
    data = {name: load_data(root, name) for name in params.datasets}
    transfer = _transfer_comparison(doc, params)
    _header(doc, params, data, now or datetime.now(timezone.utc), transfer)
    warnings_at = len(doc.lines)
    _classifier_part(doc, params, data, SIMPLE_CNN, "Part 1.1 — Simple CNN", "part-1-1", log=False,
                     after_training=lambda: _more_epochs(doc, params, data),
                     after_embedding=lambda: _cheaper(doc, params))
    _classifier_part(doc, params, data, ALEXNET, "Part 1.2 — AlexNet", "part-1-2", log=True,
                     after_training=lambda: _alexnet_claim(doc, params, data),
                     after_embedding=lambda: _alexnet_vs_mnist(doc))
    _transfer_part(doc, params, data, transfer)
    _diagnosis_part(doc, params, data)
    _recipes_part(doc, params, data)
    _other_part(doc, params, data)
    _time_part(doc, params)
    if doc.warnings:
        # Repeat them under the header: a reader who stops at the top should still see them.
        summary = ["## Warnings {#warnings}", ""] + [f"- {w}" for w in doc.warnings] + [""]
        doc.lines[warnings_at:warnings_at] = summary
        doc.toc.insert(1, (2, "Warnings", "warnings"))
    doc.lines[doc.contents_at:doc.contents_at] = _contents(doc)
    title = doc.lines[0].lstrip("# ").strip()
    tables = {"transfer_comparison": (paired.HEADER, transfer["rows"])} if transfer is not None else {}
    return Report(title=title, markdown=doc.text(), figures=dict(doc.figures), warnings=tuple(doc.warnings),
                  tables=tables)


# ---------------------------------------------------------------- output

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.5; color: #1a1a1a;
       max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 2rem; } h4 { margin-top: 1.5rem; color: #333; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
td[style*="right"] { font-variant-numeric: tabular-nums; white-space: nowrap; }
th { font-size: .85rem; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
blockquote { border-left: 4px solid #d9822b; background: #fff6ec; margin: 1rem 0; padding: .3rem 1rem; }
#contents + ul { columns: 2; column-gap: 2rem; background: #f7f9fc; padding: .8rem 1rem .8rem 2rem;
                 border: 1px solid #dde3ec; }
#contents + ul ul { margin: 0; }
#contents + ul > li { break-inside: avoid; }   /* a part and its subsections stay in one column */
#self-check { background: #fde8e8; border: 1px solid #c0392b; padding: .5rem 1rem; }
"""

# Runs in the reader's browser (and in tests/test_report_browser.py): did every inlined figure
# decode, and which sections exist. It touches nothing outside the page: the HTML stays
# self-contained. A failure is shown to the reader too, not only recorded for the test.
SELF_CHECK = """
<div id="self-check" hidden></div>
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
                   .map(function (im) { return im.alt; });
  var ids = Array.prototype.map.call(document.querySelectorAll("h1[id], h2[id], h3[id], h4[id]"),
                                     function (h) { return h.id; });
  document.body.dataset.selfCheck = JSON.stringify({images: imgs.length, broken: broken, sections: ids});
  document.body.dataset.imagesOk = broken.length === 0 ? "yes" : "no";
  if (broken.length) {
    var box = document.getElementById("self-check");
    box.textContent = broken.length + " figure(s) failed to load: " + broken.join("; ");
    box.hidden = false;
    document.body.insertBefore(box, document.body.firstChild);
  }
});
</script>
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: figures inlined as data URIs, no external resource at all."""
    body = markdown.markdown(report.markdown, extensions=["tables", "attr_list"], output_format="html")

    def inline(m: re.Match) -> str:
        name = html.unescape(m.group(1))
        if name not in report.figures:
            raise ReportError(f"report links figures/{name}, which it does not hold")
        return 'src="data:image/png;base64,' + base64.b64encode(report.figures[name]).decode("ascii") + '"'

    body = re.sub(r'src="figures/([^"]+)"', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n{SELF_CHECK}</body>\n</html>\n")


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


# ---------------------------------------------------------------- MLflow: tables and champions

def _variant_summary(params: Params, root: Path) -> list[dict]:
    rows = []
    for name, v in params.variants.items():
        r = load_results(root, name)
        if r.train is None and r.eval is None:
            continue
        t, e = r.train or {}, r.eval or {}
        rows.append({"variant": name, "dataset": v.dataset, "model": v.model,
                     "val_accuracy": e.get("accuracy", t.get("best_val_acc")), "test_accuracy": e.get("test_accuracy"),
                     "best_epoch": t.get("best_epoch"), "epochs": t.get("epochs"), "params_total": t.get("params_total"),
                     "train_seconds": t.get("train_seconds"), "diagnosis": (t.get("diagnosis") or {}).get("verdict"),
                     "mlflow_run_id": t.get("mlflow_run_id")})
    return rows


def mlflow_tables(params: Params, root: Path, rep: Optional[Report] = None) -> dict[str, list[dict]]:
    """The tables the report run logs to MLflow (`log_table`), by artifact name: a list of row dicts each.
    Add a table here and the report stage logs it. The report's own tables (`rep.tables`, such as the
    transfer comparison) come as printed, every cell as text."""
    out = {"variant_summary": _variant_summary(params, Path(root))}
    for name, (header, rows) in (rep.tables.items() if rep is not None else ()):
        out[name] = [{h: str(cell) for h, cell in zip(header, row)} for row in rows]
    return out


def champions(params: Params, root: Path) -> list[dict]:
    """The best trained variant of each dataset (a part of the lab), to register as that part's model:
    highest held-out test accuracy where the part has a test split, else validation accuracy; ties go to
    the variant listed first in params.yaml. Only variants whose train stage recorded an MLflow run."""
    out = []
    rows = [r for r in _variant_summary(params, Path(root)) if r["mlflow_run_id"] and r["val_accuracy"] is not None]
    for dataset in params.datasets:
        cands = [r for r in rows if r["dataset"] == dataset]
        if not cands:
            continue
        key = "test_accuracy" if any(r["test_accuracy"] is not None for r in cands) else "val_accuracy"
        cands = [r for r in cands if r[key] is not None]
        best = max(cands, key=lambda r: r[key])  # max keeps the first of equal scores
        out.append({"model_name": f"{params.tracking.experiment}-{dataset}", "dataset": dataset,
                    "variant": best["variant"], "run_id": best["mlflow_run_id"], "chosen_on": key,
                    "score": best[key], "candidates": len(cands)})
    return out
