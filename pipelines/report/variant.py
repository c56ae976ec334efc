"""The subsections every trained variant gets, in the order a classifier part shows them: dataset
sizes, trainable parameters, training curves, confusion matrix and per-class accuracy, t-SNE of
its layers; and `classifier_part`, which puts them together for Parts 1.1 and 1.2."""
from __future__ import annotations

from typing import Callable, Optional

from pipelines.config import LabNumbers
from pipelines.report.doc import Document, Inputs, finite, loss, minus, num, pct, pp, signed
from pipelines.report.load import Data, Results, is_kind
from pipelines.report.readings import data_line, how_to_run, on_data, variant_diagnosis


def sizes(doc: Document, dataset: str, d: Data, note: Optional[str] = None) -> None:
    doc.heading(3, "Dataset sizes")
    if d.sizes is None:
        doc.not_run(f"`data/prepared/{dataset}/sizes.csv` is missing")
    else:
        doc.table(["split", "height", "width", "channels", "samples"],
                  [(r["split"], r["height"], r["width"], r["channels"], f"{r['samples']:,}") for r in d.sizes],
                  right=(1, 2, 3, 4))
    if note:
        doc.add(note)


def parameters(doc: Document, variant: str, r: Results, lab_params: Optional[int], note: Optional[str] = None) -> None:
    doc.heading(3, "Trainable parameters")
    if r.train is None:
        doc.not_run(f"`metrics/{variant}/train.json` is missing")
        return
    total = r.train["params_total"]
    doc.table(["", "ours", "lab", "difference"],
              [("trainable parameters", f"{total:,}", num(lab_params),
                "—" if lab_params is None else minus(f"{total - lab_params:+,}"))], right=(1, 2, 3))
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
    if note:
        doc.add(note)


def verdict_line(doc: Document, d: Optional[dict]) -> None:
    if d is not None:
        doc.add(f"**Curve diagnosis:** {d['verdict']}. (The rule: [curve diagnosis](#curve-diagnosis).)")


def training(doc: Document, variant: str, r: Results, lab: Optional[LabNumbers], log: Optional[str],
             verdict: Optional[dict]) -> None:
    """Curves, the best epoch against the lab's, the verdict; with `log` (the lab's note on its own log,
    "" for none) the per-epoch log too."""
    doc.heading(3, "Training curves")
    if r.train is None:
        doc.not_run(f"`metrics/{variant}/train.json` is missing")
        return
    doc.figure(variant, r, "curves", f"{variant}: loss and accuracy per epoch")
    t = r.train
    lab_acc = lab.best_val_acc if lab else None
    lab_epoch = lab.best_epoch if lab else None
    rows = [("best validation accuracy", pct(t["best_val_acc"]), pct(lab_acc), pp(t["best_val_acc"], lab_acc)),
            ("epoch of the best", t["best_epoch"], num(lab_epoch),
             "—" if lab_epoch is None else minus(f"{t['best_epoch'] - lab_epoch:+d}"))]
    if is_kind(t.get("final_val_acc"), "num"):
        rows.append(("final validation accuracy", pct(t["final_val_acc"]), "—", "—"))
    if is_kind(t.get("test_acc"), "num"):
        rows.append(("held-out test accuracy (best epoch)", pct(t["test_acc"]), "—", "—"))
    if is_kind(t.get("min_val_loss_epoch"), "int"):
        rows.append(("epoch of the lowest validation loss", t["min_val_loss_epoch"], "—", "—"))
    if is_kind(t.get("epochs"), "int"):
        rows.append(("epochs trained", t["epochs"], "—", "—"))
    if is_kind(t.get("train_seconds"), "num"):
        rows.append(("training time", f"{t['train_seconds']:.0f} s"
                     + (f" on {t['device']}" if isinstance(t.get("device"), str) else ""), "—", "—"))
    doc.table(["", "ours", "lab", "difference"], rows, right=(1, 2, 3))
    verdict_line(doc, verdict)
    if log is not None:
        _epoch_log(doc, variant, r, log)


def _epoch_log(doc: Document, variant: str, r: Results, note: str) -> None:
    doc.heading(3, "Per-epoch log")
    if r.history is None:
        doc.not_run(f"`results/{variant}/train/history.csv` is missing")
    else:
        doc.table(["epoch", "train loss", "val loss", "val accuracy"],
                  [(h["epoch"], loss(h["train_loss"]), loss(h["val_loss"]), pct(h["val_acc"]))
                   for h in r.history], right=(0, 1, 2, 3))
    if note:
        doc.add(note)


def evaluation(doc: Document, variant: str, r: Results, level: int = 3, note: Optional[str] = None) -> None:
    doc.heading(level, "Confusion matrix")
    if r.eval is None:
        doc.not_run(f"`metrics/{variant}/evaluate.json` is missing")
        return
    e = r.eval
    test = (f"; held-out test accuracy {pct(e['test_accuracy'])} on {e['test_n']:,} images"
            if is_kind(e.get("test_accuracy"), "num") and is_kind(e.get("test_n"), "int") else "")
    doc.add(f"Validation accuracy {pct(e['accuracy'])}, macro F1 {num(e['macro_f1'])}, on {e['n']:,} images{test}.")
    doc.figure(variant, r, "confusion", f"{variant}: confusion matrix")
    doc.heading(level, "Most frequent confusions")
    top = e["top_confusions"][:2]
    if top:
        doc.table(["rank", "true class", "predicted as", "cases"],
                  [(i + 1, c["true"], c["pred"], c["count"]) for i, c in enumerate(top)], right=(0, 3))
    else:
        doc.add("No confusions: every validation image was classified correctly.")
    if note:
        doc.add(note)
    if top:  # the stage draws the example grid only when there is something to show
        doc.figure(variant, r, "confusions", f"{variant}: examples of the most frequent confusions")
    doc.heading(level, "Accuracy per class")
    if r.per_class is None:
        doc.not_run(f"`results/{variant}/evaluate/per_class.csv` is missing")
    else:
        per_class(doc, r.per_class)


def per_class(doc: Document, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (r["recall"], r["class"]))
    doc.table(["class (worst first)", "accuracy (recall)", "precision", "F1", "images"],
              [(r["class"], pct(r["recall"] * 100), pct(r["precision"] * 100), f"{r['f1']:.3f}", f"{r['support']:,}")
               for r in ordered], right=(1, 2, 3, 4))
    if len(ordered) >= 2:
        doc.add(f"Worst class: {ordered[0]['class']} ({ordered[0]['recall'] * 100:.2f} %); best: "
                f"{ordered[-1]['class']} ({ordered[-1]['recall'] * 100:.2f} %).")


EMBED_COLUMNS = (  # key in embed.json layers, header, formatter
    ("silhouette_features", "silhouette (features)", lambda x: f"{x:.3f}"),
    ("silhouette_tsne", "silhouette (t-SNE)", lambda x: f"{x:.3f}"),
    ("knn_acc_features", "k-NN accuracy (features)", pct),
    ("knn_acc_tsne", "k-NN accuracy (t-SNE)", pct),
    ("linear_probe_acc", "linear-probe accuracy", pct),
    ("trustworthiness", "t-SNE trustworthiness", lambda x: f"{x:.3f}"),
)


def layer_cell(info: dict, key: str, f: Callable[[float], str]) -> str:
    """One embed.json layer figure, formatted, or "—" where the stage did not compute it."""
    return f(info[key]) if finite(info.get(key)) else "—"


def embedding(doc: Document, variant: str, r: Results, level: int = 3) -> None:
    doc.heading(level, "t-SNE of the validation set")
    if r.embed is None:
        doc.not_run(f"`metrics/{variant}/embed.json` is missing")
        return
    doc.figure(variant, r, "tsne", f"{variant}: t-SNE of the intermediate and final layers")
    layers = r.embed["layers"]
    doc.table(["layer", "module", "dim", *[h for _, h, _ in EMBED_COLUMNS]],
              [(name, f"`{info['module']}`", f"{info['dim']:,}", *(layer_cell(info, k, f) for k, _, f in EMBED_COLUMNS))
               for name, info in layers.items()], right=tuple(range(2, 3 + len(EMBED_COLUMNS))))
    sentence = layers_sentence(layers)
    if sentence:
        doc.add(sentence)
    backend = r.embed.get("tsne_backend")
    doc.add(f"{r.embed['points']:,} validation points" + (f", t-SNE by {backend}" if isinstance(backend, str) else "")
            + "; silhouette, k-NN and linear-probe figures on a seeded subsample of them.")


def silhouette(info: dict) -> Optional[float]:
    """A layer's silhouette: on the features where computed, else on the t-SNE map."""
    for k in ("silhouette_features", "silhouette_tsne"):
        if finite(info.get(k)):
            return info[k]
    return None


def layers_sentence(layers: dict) -> Optional[str]:
    """Which of the intermediate and final layers separates the classes more, and by how much."""
    mid, fin = layers.get("intermediate"), layers.get("final")
    if not isinstance(mid, dict) or not isinstance(fin, dict):
        return None
    sm, sf = silhouette(mid), silhouette(fin)
    if sm is None or sf is None:
        return None
    more, less = (("final", fin), ("intermediate", mid)) if sf >= sm else (("intermediate", mid), ("final", fin))
    key = "silhouette_features" if finite(mid.get("silhouette_features")) and finite(fin.get("silhouette_features")) \
        else "silhouette_tsne"
    out = (f"The {more[0]} layer (`{more[1]['module']}`) separates the classes more than the {less[0]} one "
           f"(`{less[1]['module']}`): silhouette {more[1][key]:.3f} vs {less[1][key]:.3f} "
           f"({'on the features' if key == 'silhouette_features' else 'on the t-SNE map'}, {signed(more[1][key] - less[1][key], 3)})")
    extra = []
    for k, label in (("knn_acc_features", "k-NN accuracy"), ("linear_probe_acc", "linear-probe accuracy")):
        if finite(more[1].get(k)) and finite(less[1].get(k)):
            d = more[1][k] - less[1][k]
            extra.append(f"{label} {more[1][k]:.2f} % vs {less[1][k]:.2f} % ({signed(d, 2, ' pp')}"
                         + (", the other way round" if d < 0 else "") + ")")
    out += (", " + ", ".join(extra) if extra else "") + "."
    shaky = [f"{n} ({info['trustworthiness']:.3f})" for n, info in (("intermediate", mid), ("final", fin))
             if finite(info.get("trustworthiness")) and info["trustworthiness"] < 0.9]
    if shaky:
        out += (" Trustworthiness below 0.9 for " + ", ".join(shaky)
                + ": that 2-D picture misplaces many neighbours; trust the feature-space figures over it.")
    return out


def classifier_part(doc: Document, src: Inputs, variant: Optional[str], title: str, anchor: str, log: bool,
                    notes: dict[str, str], after_training: Optional[Callable[[], None]] = None,
                    after_embedding: Optional[Callable[[], None]] = None) -> None:
    """A part of the lab built around one variant (Parts 1.1 and 1.2); `notes` are what the lab wrote about
    it by topic (sizes, params, log, confusions); the hooks add that part's own questions."""
    params, data = src.params, src.data
    dataset = params.variants[variant].dataset if variant in params.variants else None
    doc.heading(2, f"{title}" + (f" (`{variant}`)" if variant else "") + on_data(src, dataset), anchor)
    if dataset is None:
        doc.not_run(f"`{variant}` is not a variant in params.yaml" if variant else
                    "reference.yaml (`parts`) names no variant for this part")
        return
    doc.add(data_line(src, dataset))
    r = doc.results(variant)
    sizes(doc, dataset, data[dataset], notes.get("sizes"))
    hooks = [h for h in (after_training, after_embedding) if h is not None]
    if not r.ran:
        doc.not_run(f"no results for `{variant}` under results/ or metrics/ (run {how_to_run(src.params, variant)})")
        for hook in hooks:  # their own variants may have run
            hook()
        return
    lab = params.lab.get(variant)
    parameters(doc, variant, r, lab.params if lab else None, notes.get("params"))
    training(doc, variant, r, lab, notes.get("log", "") if log else None, variant_diagnosis(doc, src, variant))
    if after_training:
        after_training()
    evaluation(doc, variant, r, note=notes.get("confusions"))
    embedding(doc, variant, r)
    if after_embedding:
        after_embedding()
