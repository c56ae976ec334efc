"""Part 1.2 of the report: the reduced AlexNet on CIFAR-10, its per-epoch log, the lab's claim of
overfitting after epoch 10 checked against our curves, and its final layer against the Simple CNN's."""
from __future__ import annotations

from typing import Optional

from pipelines.report.doc import Document, Inputs, finite
from pipelines.report.readings import ALEXNET_CLAIM_EPOCH, LAB_NOTES, final_layer, variant_diagnosis
from pipelines.report.variant import classifier_part, silhouette


def section(doc: Document, src: Inputs) -> None:
    classifier_part(doc, src, src.params.reference.parts.alexnet, "Part 1.2 — AlexNet", "part-1-2", log=True,
                    notes=LAB_NOTES["alexnet"], after_training=lambda: claim(doc, src),
                    after_embedding=lambda: against_simple_cnn(doc, src))


def claim(doc: Document, src: Inputs) -> None:
    alexnet = src.params.reference.parts.alexnet
    doc.heading(3, "Overfitting: our curves against the lab's claim", "alexnet-overfitting")
    d = variant_diagnosis(doc, src, alexnet) if alexnet else None
    if d is None:
        doc.not_run(f"`results/{alexnet}/train/history.csv` is missing: no curves to compare with the lab's claim")
        return
    ours = "—"
    if d is not None and "min_val_loss_epoch" in d:
        ours = (f"validation loss lowest at epoch {d['min_val_loss_epoch']}, {d['val_loss_rise_pct']:.1f} % above "
                f"that minimum at the last epoch")
    doc.table(["", "what the curves show"],
              [("the lab", f"overfitting after epoch {ALEXNET_CLAIM_EPOCH} (validation loss lowest near epochs "
                           "10–14 while training loss kept falling)"),
               ("ours", ours), ("agreement", against_claim(d, ALEXNET_CLAIM_EPOCH))])


def overfit_epoch(d: Optional[dict]) -> Optional[int]:
    if d is None or not d["verdict"].startswith("overfitting from epoch "):
        return None
    return int(d["verdict"].split()[3].rstrip(":"))


def against_claim(d: Optional[dict], claim_epoch: int) -> str:
    """Agreement of our verdict with a lab claim 'overfitting after epoch N' (from epoch N + 1)."""
    if d is None:
        return "not run"
    start = overfit_epoch(d)
    if start is None and d["verdict"].startswith("getting worse from epoch "):
        worse = d["verdict"].split()[4].rstrip(":")
        return (f"partly: ours get worse from epoch {worse}, but not in the rule's overfitting shape; "
                f"the lab's: overfitting after epoch {claim_epoch}")
    if start is None:
        return "disagrees: by the rule our curves do not show overfitting"
    off = start - (claim_epoch + 1)
    when = "at the same epoch" if off == 0 else f"{abs(off)} epoch{'s' if abs(off) > 1 else ''} {'later' if off > 0 else 'earlier'}"
    return f"agrees on overfitting, {when}: ours from epoch {start}, the lab's after epoch {claim_epoch}"


def against_simple_cnn(doc: Document, src: Inputs) -> None:
    alexnet, simple_cnn = src.params.reference.parts.alexnet, src.params.reference.parts.simple_cnn
    if alexnet is None or simple_cnn is None:
        return
    a, m = final_layer(doc.results(alexnet)), final_layer(doc.results(simple_cnn))
    sentence = compare_finals((alexnet, a), (simple_cnn, m)) if a and m else None
    if sentence:
        doc.add(sentence)


def compare_finals(this: tuple[str, dict], other: tuple[str, dict]) -> Optional[str]:
    (tv, t), (ov, o) = this, other
    st, so = silhouette(t), silhouette(o)
    if st is None or so is None:
        return None
    # Below half the printed precision the two are the same to the reader: no "more" or "less".
    word = "about as" if abs(st - so) < 0.0005 else ("more" if st > so else "less")
    out = f"Against `{ov}`'s final layer, `{tv}`'s classes are {word} separated: silhouette {st:.3f} vs {so:.3f}"
    if finite(t.get("knn_acc_features")) and finite(o.get("knn_acc_features")):
        out += f", k-NN accuracy {t['knn_acc_features']:.2f} % vs {o['knn_acc_features']:.2f} %"
    return out + "."
