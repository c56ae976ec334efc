"""Part 1.1 of the report: the Simple CNN on MNIST, and the lab's two questions about it: would more
epochs help (a 20-epoch run of the same recipe), and does a cheaper network lose much accuracy."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from pipelines.report.doc import Document, Inputs, finite, num, pct, pp, ratio, signed
from pipelines.report.readings import LAB_NOTES, how_to_run, n_val, variant_diagnosis
from pipelines.report.variant import classifier_part
from pipelines.stats import binomial_se


def section(doc: Document, src: Inputs) -> None:
    classifier_part(doc, src, src.params.reference.parts.simple_cnn, "Part 1.1 — Simple CNN", "part-1-1", log=False,
                    notes=LAB_NOTES["simple_cnn"], after_training=lambda: more_epochs(doc, src),
                    after_embedding=lambda: cheaper(doc, src))


def more_epochs(doc: Document, src: Inputs) -> None:
    params = src.params
    main, longer = params.reference.parts.simple_cnn, params.reference.parts.more_epochs
    doc.heading(3, "Would more epochs help?", "more-epochs")
    if main is None or longer is None:
        doc.add("The lab's author trained 10 more epochs and saw the validation loss rise near epoch 20.")
        doc.not_run("reference.yaml (`parts.simple_cnn`, `parts.more_epochs`) names no variant for it")
        return
    doc.add("The lab's author trained 10 more epochs and saw the validation loss rise near epoch 20. "
            f"`{longer}` runs `{main}`'s recipe for longer with the same seed.")
    base, long = doc.results(main), doc.results(longer)
    if long.train is None:
        doc.not_run(f"`metrics/{longer}/train.json` is missing (run {how_to_run(params, longer)})")
        return
    doc.figure(longer, long, "curves", f"{longer}: loss and accuracy per epoch")
    rows = []
    for v, r in ((main, base), (longer, long)):
        d, t = variant_diagnosis(doc, src, v), r.train
        if t is None:
            rows.append((f"`{v}`", "not run", "—", "—", "—", "—", "—"))
            continue
        rise = d.get("val_loss_rise_pct") if d else None
        rows.append((f"`{v}`", num(t.get("epochs")), pct(t["best_val_acc"]), t["best_epoch"],
                     num(d.get("min_val_loss_epoch")) if d else "—",
                     f"{rise:.1f} %" if finite(rise) else "—", d["verdict"] if d else "—"))
    doc.table(["variant", "epochs", "best validation accuracy", "best epoch", "min val loss epoch",
               "final val loss above its minimum", "verdict"], rows, right=(1, 2, 3, 4, 5))
    if base.history is not None and long.history is not None:
        doc.add(f"Epochs 1–{len(base.history)} of `{longer}` against `{main}`'s history: "
                f"{reproduces(base.history, long.history)}.")
    if base.train is not None:
        gain = long.train["best_val_acc"] - base.train["best_val_acc"]
        n = n_val(src.data, params.variants[main].dataset, base)
        noise = ""
        if n:
            two_se = 2 * math.sqrt(binomial_se(base.train["best_val_acc"], n) ** 2
                                   + binomial_se(long.train["best_val_acc"], n) ** 2)
            noise = f" ({'within' if abs(gain) <= two_se else 'beyond'} the ±{two_se:.2f} pp noise of {n:,} validation images)"
        doc.add(f"**Answer.** Training to epoch {num(long.train.get('epochs'))} changes the best validation accuracy by "
                f"{signed(gain, 2, ' pp')}{noise}: best at epoch {long.train['best_epoch']} against "
                f"{base.train['best_epoch']}.")


def reproduces(short: Sequence[dict], long: Sequence[dict]) -> str:
    """Whether the longer run's first epochs are the shorter run's history, number for number."""
    cols = ("train_loss", "train_acc", "val_loss", "val_acc")
    by_epoch = {r["epoch"]: r for r in long}
    worst = (0.0, "", 0)
    missing = [r["epoch"] for r in short if r["epoch"] not in by_epoch]
    if missing:
        return f"cannot tell: the longer run has no epoch {missing[0]}"
    for r in short:
        for c in cols:
            a, b = r[c], by_epoch[r["epoch"]][c]
            if finite(a) and finite(b) and abs(a - b) > worst[0]:
                worst = (abs(a - b), c, r["epoch"])
    if worst[0] == 0:
        return "same seed, same numbers: yes"
    return (f"same seed, same numbers: no — largest absolute difference {worst[0]:.4g} "
            f"({worst[1].replace('_', ' ')}, epoch {worst[2]})")


def cheaper(doc: Document, src: Inputs) -> None:
    main, small = src.params.reference.parts.simple_cnn, src.params.reference.parts.cheaper
    doc.heading(3, "A cheaper network", "cheaper-network")
    if main is None or small is None:
        doc.not_run("reference.yaml (`parts.simple_cnn`, `parts.cheaper`) names no variant for it")
        return
    hidden = src.params.variants[small].hidden
    doc.add("The lab proposed a cheaper network with little accuracy loss; "
            f"`{small}` is the Simple CNN "
            + ("without fc1 (the pooled convolutional features go straight to the output layer)." if hidden == 0
               else f"with a {hidden}-unit fc1."))
    cheaper_network(doc, (main, doc.results(main).train), (small, doc.results(small).train))


def _get(t: dict, k: str) -> Optional[float]:
    return t.get(k) if finite(t.get(k)) else None


def cheaper_network(doc: Document, base: tuple[str, Optional[dict]], small: tuple[str, Optional[dict]]) -> None:
    """The two networks side by side (size, cost, accuracy, speed) and a sentence reading the table."""
    (bv, bt), (sv, st) = base, small
    if bt is None or st is None:
        missing = [f"`metrics/{v}/train.json`" for v, t in (base, small) if t is None]
        doc.not_run(" and ".join(missing) + (" is" if len(missing) == 1 else " are") + " missing")
        return
    rows = []
    for label, key, fmt, cmp in (
            ("trainable parameters", "params_total", num, lambda a, b: ratio(a, b, "fewer", "more")),
            ("FLOPs per image (forward)", "flops_per_image", num, lambda a, b: ratio(a, b, "fewer", "more")),
            ("best validation accuracy", "best_val_acc", pct, lambda a, b: pp(b, a)),
            ("training throughput (images/s)", "train_img_per_s", lambda x: "—" if x is None else f"{x:,.0f}",
             lambda a, b: ratio(b, a, "faster", "slower"))):
        a, b = _get(bt, key), _get(st, key)
        rows.append((label, fmt(a), fmt(b), cmp(a, b) if a is not None and b is not None else "—"))
    doc.table(["", f"`{bv}`", f"`{sv}`", f"`{sv}` against `{bv}`"], rows, right=(1, 2, 3))
    parts = [r[3] + (" parameters" if i == 0 else " FLOPs per image" if i == 1 else "")
             for i, r in enumerate(rows) if i < 2 and r[3] != "—"]
    if rows[3][3] != "—":
        parts.append(f"trains {rows[3][3]}")
    acc_a, acc_b = _get(bt, "best_val_acc"), _get(st, "best_val_acc")
    if acc_a is not None and acc_b is not None:
        n = bt.get("val_n") if isinstance(bt.get("val_n"), int) else None
        noise = ""
        if n:
            se = math.sqrt(binomial_se(acc_a, n) ** 2 + binomial_se(acc_b, n) ** 2)
            noise = (f", {'within' if abs(acc_b - acc_a) <= 2 * se else 'beyond'} the ±{2 * se:.2f} pp "
                     f"(two standard errors) a validation set of {n:,} images can resolve")
        parts.append(f"{signed(acc_b - acc_a, 2, ' pp')} best validation accuracy{noise}")
    if parts:
        doc.add(f"**Reading.** `{sv}` against `{bv}`: " + ", ".join(parts) + ".")
    if bt.get("device") != st.get("device") and isinstance(bt.get("device"), str):
        doc.add(f"The throughputs were measured on different devices ({bt.get('device')} and {st.get('device')}): "
                "their ratio is not the networks' alone.")
