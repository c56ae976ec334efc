"""Part 1.3 of the report: transfer learning. The four options (from scratch, pretrained + linear
SVM, fine-tuning without and with augmentation) side by side over their seeds, the paired verdicts
on the held-out test set (pipelines/report/paired.py), the linear separability of the two classes,
and each option's own curves, confusions and embeddings."""
from __future__ import annotations

from typing import Optional, Sequence

from pipelines.report import paired
from pipelines.report.doc import Document, Inputs
from pipelines.report.fmt import finite, mean_cell, num, pct, pp, signed
from pipelines.report.lab import TL_OPTIONS
from pipelines.report.load import is_kind, load_replicates
from pipelines.report.readings import data_line, final_layer, n_val, on_data, variant_diagnosis
from pipelines.report.variant import embedding, evaluation, layer_cell, sizes, verdict_line
from pipelines.stats import ALPHA, mean_std, p_text, smallest_detectable, t_interval, two_proportion_p, welch_p

def section(doc: Document, src: Inputs) -> None:
    params, data = src.params, src.data
    present = [v for v, _ in TL_OPTIONS if v in params.variants]
    dataset = params.variants[present[0]].dataset if present else None
    doc.heading(2, f"Part 1.3 — Transfer learning{on_data(src, dataset)}", "part-1-3")
    if present:
        doc.add(data_line(src, dataset))
        sizes(doc, present[0], dataset, data[dataset])
    options = comparison(doc, src, dataset)
    verdicts(doc, src, options)
    separability(doc, src)
    for v, label in TL_OPTIONS:
        option(doc, src, v, label)


def option_runs(doc: Document, src: Inputs, variant: str, label: str) -> dict:
    """A transfer option's accuracy per run: its own run and its replicates (other seeds)."""
    params = src.params
    r = doc.results(variant)
    reps, expected = load_replicates(doc.root, params, variant)
    runs = ([r.train] if r.train is not None else []) + reps
    val = [t["best_val_acc"] for t in runs]
    if r.train is None and r.eval is not None:
        val.insert(0, r.eval["accuracy"])
    test = [t["test_acc"] for t in runs if finite(t.get("test_acc"))]
    if r.train is not None and "test_acc" not in r.train and r.eval and finite(r.eval.get("test_accuracy")):
        test.insert(0, r.eval["test_accuracy"])
    lab = params.lab.get(variant)
    return {"label": label, "variant": variant, "val": val, "test": test, "lab": lab.val_acc if lab else None,
            "val_n": n_val(src.data, params.variants[variant].dataset, r), "expected": 1 + expected,
            "replicates": len(reps), "deterministic": params.variants[variant].deterministic}


def comparison(doc: Document, src: Inputs, dataset: Optional[str]) -> list[dict]:
    """The options' accuracies over their runs (option_runs of each), with how the split and seeds were used."""
    params = src.params
    doc.heading(3, "Comparison of the four options", "tl-comparison")
    options = [option_runs(doc, src, v, label) for v, label in TL_OPTIONS if v in params.variants]
    options += [{"label": label, "variant": v, "val": [], "test": [], "lab": None, "val_n": None, "expected": 0,
                 "replicates": 0} for v, label in TL_OPTIONS if v not in params.variants]
    noise_table(doc, options)
    splits = ((src.data[dataset].meta or {}).get("splits") if dataset else None) or {}
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
    one_model(doc, src)
    return options


def one_model(doc: Document, src: Inputs) -> None:
    """Why a deterministic option (config.Variant.deterministic) has one run where the others have several."""
    params = src.params
    seeds = 1 + len(params.replicates.seeds) if params.replicates is not None else 1
    for v, label in TL_OPTIONS:
        if v in params.variants and params.variants[v].deterministic and seeds > 1:
            doc.add(f"{label[0].upper() + label[1:]} (`{v}`) has one run, not {seeds} equal ones: a linear SVM on "
                    "frozen pretrained features is the same model for every seed (the features are the pretrained "
                    "weights'; the SVM's optimum is unique, a seed only orders the solver's steps), so it is fitted "
                    "once, and the paired verdicts below compare its one model with each seed of the other option.")


def noise_table(doc: Document, options: Sequence[dict]) -> None:
    """options: {label, variant, val: [acc per run], test: [acc per run], lab, val_n, expected}."""
    rows = []
    for o in options:
        ci = t_interval(o["val"]) if len(o["val"]) >= 2 else None
        m = mean_std(o["val"])[0] if o["val"] else None
        runs = "not run" if not o["val"] else (f"{len(o['val'])}" + (f" of {o['expected']}" if o["expected"] > len(o["val"]) else ""))
        rows.append((o["label"], f"`{o['variant']}`", runs, mean_cell(o["val"]),
                     "—" if ci is None else f"{ci[0]:.2f} – {ci[1]:.2f} %", mean_cell(o["test"]),
                     pct(o["lab"]), pp(m, o["lab"])))
    doc.table(["option", "variant", "runs (n)", "validation accuracy, mean ± std", "95 % CI (Student t)",
               "test accuracy, mean ± std", "lab", "mean − lab"], rows, right=(2, 3, 4, 5, 6, 7))


def verdicts(doc: Document, src: Inputs, options: Sequence[dict]) -> None:
    doc.heading(3, "Which option is better? Paired verdicts on the held-out test set", "tl-noise")
    if src.transfer is not None:
        paired_table(doc, src.transfer)
    elif sum(1 for o in options if o["val"]) < 2:
        doc.not_run("fewer than two options have results")
    else:
        doc.add("No per-image test predictions were found, so no paired verdict can be given. Below, indicative "
                "only: the validation accuracies, which also chose each option's best epoch.")
        noise_pairs(doc, options)


def paired_table(doc: Document, transfer: dict) -> None:
    doc.table(paired.HEADER, transfer["rows"], right=(1, 2, 3, 4, 5, 6, 7))
    n = transfer["n"]
    doc.add(f"**The rule.** Every option is compared with every other on the same {n:,} held-out test images, "
            "which chose neither a model nor an epoch (selection uses the validation split only). McNemar's exact "
            "test counts only the images one option gets right and the other wrong; the interval of the "
            "difference is Agresti and Min's paired 95 % interval. Each option is trained with several seeds; a "
            f"verdict \"A beats B\" needs p < {ALPHA} on the main seed (params `seed`) **and**, with two or "
            "more seeds, the Student-t 95 % interval of the mean difference over seeds on the same side of zero. "
            "Otherwise no difference is detectable: the smallest detectable difference is the one this test size "
            "would find with probability 0.8 at the two-sided 0.05 level, given the pair's share of discordant "
            f"images (at {n:,} images: {smallest_detectable(n, 0.1):.1f} pp when 10 % of the images are "
            f"discordant, {smallest_detectable(n, 0.2):.1f} pp at 20 %, {smallest_detectable(n, 0.3):.1f} pp at 30 %).")


def noise_pairs(doc: Document, options: Sequence[dict]) -> None:
    """Without test predictions: every pair of options compared on validation accuracy, Welch or two-proportion."""
    ran = [o for o in options if o["val"]]
    if len(ran) < 2:
        return
    rows, within = [], []
    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            ma, mb = mean_std(a["val"])[0], mean_std(b["val"])[0]
            one = _one_model(a, b) or _one_model(b, a)
            if one:   # one model for every seed against the other's seeds: Welch's test with one variance 0
                p, test = welch_p(*one), "one-sample t over seeds"
            elif len(a["val"]) >= 2 and len(b["val"]) >= 2:
                p, test = welch_p(a["val"], b["val"]), "Welch t over seeds"
            elif a.get("val_n") and b.get("val_n"):
                p, test = two_proportion_p(ma, a["val_n"], mb, b["val_n"]), "two-proportion z (n = 1)"
            else:
                rows.append((f"{a['label']} vs {b['label']}", pp(mb, ma), "—", "—", "untestable: one run, no set size"))
                continue
            reading = "within noise" if p > ALPHA else "beyond noise"
            if p > ALPHA:
                within.append(f"{a['label']} vs {b['label']}")
            rows.append((f"{a['label']} vs {b['label']}", pp(mb, ma), test, p_text(p), reading))
    doc.table(["pair", "difference of means (second − first)", "test", "p", "reading"], rows, right=(1, 3))
    doc.add("**The rule.** A pair is within noise when its two-sided p > 0.05: Welch's t-test on the per-seed "
            "validation accuracies when both options have at least two runs; otherwise (one run) the two-proportion "
            "z-test on the validation set's images, which measures only the sampling noise of that set, not the "
            "seed-to-seed spread.")
    doc.add("Within noise: " + ("; ".join(within) if within else "none of the pairs") + ".")


def _one_model(fixed: dict, other: dict) -> Optional[tuple[list, list]]:
    """A deterministic option's one run repeated under each of the other option's runs, and those runs."""
    if fixed.get("deterministic") and len(fixed["val"]) == 1 and len(other["val"]) >= 2:
        return fixed["val"] * len(other["val"]), other["val"]
    return None


def separability(doc: Document, src: Inputs) -> None:
    """Part 1.3's question, linear separability of the two classes, answered per option."""
    doc.heading(3, "Linear separability of the two classes", "tl-separability")
    finals = [(label, v, final_layer(doc.results(v))) for v, label in TL_OPTIONS if v in src.params.variants]
    finals = [f for f in finals if f[2] is not None]
    if not finals:
        doc.not_run("no option's embed stage has run")
        return
    doc.add("The lab judged separability from the t-SNE plots by eye; these are each option's final-layer figures.")
    doc.table(["option", "variant", "final layer", "linear-probe accuracy", "silhouette (features)",
               "silhouette (t-SNE)", "points"],
              [(label, f"`{v}`", f"`{info['module']}`", layer_cell(info, "linear_probe_acc", pct),
                layer_cell(info, "silhouette_features", lambda x: f"{x:.3f}"),
                layer_cell(info, "silhouette_tsne", lambda x: f"{x:.3f}"), num(info.get("subsample")))
               for label, v, info in finals], right=(3, 4, 5, 6))
    probe = [(info["linear_probe_acc"], label) for label, _, info in finals if finite(info.get("linear_probe_acc"))]
    if len(probe) >= 2:
        probe.sort(reverse=True)
        doc.add(f"Most linearly separable: **{probe[0][1]}** (a linear classifier on its final-layer features reaches "
                f"{probe[0][0]:.2f} %); least: {probe[-1][1]} ({probe[-1][0]:.2f} %), "
                f"{signed(probe[-1][0] - probe[0][0], 2, ' pp')}. The linear probe is a logistic regression, 5-fold "
                "cross-validated on the embedded validation points: it measures how linearly separable the "
                "features are, not the option's own accuracy.")


def option(doc: Document, src: Inputs, v: str, label: str) -> None:
    """One option's own subsection: its curves (none for the SVM), confusions and embeddings."""
    doc.heading(3, f"{label[0].upper() + label[1:]} (`{v}`)", f"tl-{v.replace('_', '-')}")
    if v not in src.params.variants:
        doc.not_run(f"`{v}` is not a variant in params.yaml")
        return
    r = doc.results(v)
    if not r.ran:
        doc.not_run(f"no results for `{v}` under results/ or metrics/ (run `dvc repro` for it)")
        return
    if src.params.variants[v].classifier == "svm":
        doc.add("A linear SVM on frozen features: no training curve.")
    elif r.train is None:
        doc.not_run(f"`metrics/{v}/train.json` is missing")
    else:
        doc.figure(v, r, "curves", f"{v}: loss and accuracy per epoch")
        verdict_line(doc, variant_diagnosis(doc, src, v))
    evaluation(doc, v, r, level=4)
    embedding(doc, v, r, level=4)
