"""The report's other variants: those in params.yaml beyond the lab's six, measured beside the lab's
baselines, each with its own curves, confusions and embeddings."""
from __future__ import annotations

from pipelines.report.doc import Document, Inputs, num, pct, pp
from pipelines.report.readings import accuracy, how_to_run, lab_baseline, variant_diagnosis
from pipelines.report.variant import embedding, evaluation, verdict_line


def section(doc: Document, src: Inputs) -> None:
    params = src.params
    others = [v for v in params.variants if v not in params.reference.parts.lab_variants()]
    if not others:
        return
    doc.heading(2, "Other variants", "other-variants")
    doc.add("Variants in params.yaml beyond the lab's six: recipes measured beside the lab's baselines.")
    rows = []
    for v in others:
        cfg = params.variants[v]
        r = doc.results(v)
        base, base_acc = lab_baseline(params, v)
        base_txt = "—" if base is None else f"{pct(base_acc)} (`{base}`)"
        if not r.ran:
            rows.append((f"`{v}`", f"`{cfg.dataset}`", cfg.model, "not run", "—", "—", "—", base_txt, "—"))
            continue
        ours = accuracy(r)
        rows.append((f"`{v}`", f"`{cfg.dataset}`", cfg.model,
                     f"{r.train['params_total']:,}" if r.train else "—", pct(ours),
                     r.train["best_epoch"] if r.train else "—",
                     num(r.eval["macro_f1"]) if r.eval else "—", base_txt, pp(ours, base_acc)))
    doc.table(["variant", "dataset", "model", "trainable parameters", "best validation accuracy", "best epoch",
               "macro F1", "lab baseline", "difference"], rows, right=(3, 4, 5, 6, 7, 8))
    for v in others:
        variant(doc, src, v)


def variant(doc: Document, src: Inputs, v: str) -> None:
    r = doc.results(v)
    doc.heading(3, f"`{v}`", f"v-{v.replace('_', '-')}")
    if not r.ran:
        doc.not_run(f"no results for `{v}` under results/ or metrics/ (run {how_to_run(src.params, v)})")
        return
    if v == src.params.reference.parts.more_epochs:
        doc.add("Its curves and verdict: [would more epochs help?](#more-epochs).")
    elif r.train is not None and src.params.variants[v].classifier != "svm":
        doc.figure(v, r, "curves", f"{v}: loss and accuracy per epoch")
        verdict_line(doc, variant_diagnosis(doc, src, v))
    evaluation(doc, v, r, level=4)
    embedding(doc, v, r, level=4)
