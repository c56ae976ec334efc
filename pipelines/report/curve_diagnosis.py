"""The report's curve diagnosis of every variant: bias or overfitting read from each variant's
curves by the one rule in pipelines/train/diagnosis.py, with the rule printed below the table."""
from __future__ import annotations

from typing import Optional, Sequence

from pipelines.train import diagnosis
from pipelines.report.doc import Document, Inputs, loss, num, pp
from pipelines.report.readings import variant_diagnosis


def section(doc: Document, src: Inputs) -> None:
    doc.heading(2, "Curve diagnosis of every variant", "curve-diagnosis")
    doc.add("Bias or overfitting read from each variant's curves by one rule (below). Gaps are at the last epoch: "
            "loss gap = validation − training loss; accuracy gap = training − validation accuracy.")
    rows = []
    for v in src.params.variants:
        r = doc.results(v)
        epochs = r.train.get("epochs") if r.train is not None else (len(r.history) if r.history else None)
        rows.append((v, variant_diagnosis(doc, src, v), epochs))
    diagnosis_table(doc, rows)


def diagnosis_row(variant: str, d: Optional[dict], epochs: object) -> tuple:
    if d is None:
        return (f"`{variant}`", "not run", "—", "—", "—", "—", "—")
    return (f"`{variant}`", num(epochs), num(d.get("min_val_loss_epoch")), num(d.get("best_acc_epoch")),
            loss(d.get("final_loss_gap")), pp(d.get("final_acc_gap"), 0.0),
            d["verdict"] + (" (recomputed from history.csv)" if d.get("recomputed") else ""))


def diagnosis_table(doc: Document, rows: Sequence[tuple[str, Optional[dict], object]]) -> None:
    doc.table(["variant", "epochs", "min val loss epoch", "best accuracy epoch", "final loss gap (val − train)",
               "final accuracy gap (train − val)", "verdict"],
              [diagnosis_row(v, d, e) for v, d, e in rows], right=(1, 2, 3, 4, 5))
    rules = {d["rule"] for _, d, _ in rows if d is not None and isinstance(d.get("rule"), str)}
    rules = rules or {diagnosis.RULE}
    if len(rules) == 1:
        doc.add(f"**The rule.** {rules.pop()}")
    else:  # runs diagnosed by different versions of the rule: show each, never silently one
        doc.add("**The rules** (runs were diagnosed by different versions):", *[f"- {r}" for r in sorted(rules)])
