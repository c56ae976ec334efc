"""Part 1.3 of the report: transfer learning. The four options (from scratch, pretrained + linear
SVM, fine-tuning without and with augmentation) side by side over their seeds, the paired verdicts
on the held-out test set, the linear separability of the two classes, and each option's own curves,
confusions and embeddings.

The paired verdicts judge two options on the same held-out test images (the statistics themselves
are in pipelines/stats.py: McNemar's exact test, Agresti and Min's interval of the difference, the
smallest detectable difference). How seeds enter a verdict (`verdict`): each option is trained once
per seed, and every model is chosen on the validation split only, so every test prediction comes
from data that chose nothing. "A beats B" needs both (1) McNemar's p < 0.05 on the main seed's two
models (params `seed`) and (2), when there are two or more seeds, the mean over seeds of the paired
test-accuracy difference with its Student-t 95 % interval entirely on the same side of zero: one
lucky pair of models must not decide for the training recipe. Otherwise the pair gets "no
difference detectable at this test size (smallest detectable: y pp)". A deterministic option (the
linear SVM on frozen features, the same model for every seed) is fitted once; its one model stands in
for it under each seed of the option it is compared with, so the mean over seeds carries the other
option's seed-to-seed spread only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection, Optional, Sequence

import numpy as np

from pipelines import stats
from pipelines.config import Params
from pipelines.errors import ReportError
from pipelines.report.doc import Document, Inputs, finite, mean_cell, minus, num, pct, pp, signed
from pipelines.report.load import is_kind, load_replicates, load_test_predictions
from pipelines.report.readings import data_line, final_layer, how_to_run, n_val, on_data, variant_diagnosis
from pipelines.report.variant import embedding, evaluation, layer_cell, sizes, verdict_line
from pipelines.stats import ALPHA, mean_std, p_is, p_value, smallest_detectable, t_interval, two_proportion_p, welch_p


def section(doc: Document, src: Inputs) -> None:
    params, data = src.params, src.data
    options = params.reference.parts.transfer
    present = [v for v in options if v in params.variants]
    dataset = params.variants[present[0]].dataset if present else None
    doc.heading(2, f"Part 1.3 — Transfer learning{on_data(src, dataset)}", "part-1-3")
    if present:
        doc.add(data_line(src, dataset))
        sizes(doc, dataset, data[dataset])
    runs = comparison(doc, src, dataset)
    verdicts(doc, src, runs)
    separability(doc, src)
    for v, label in options.items():
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
    tl = params.reference.parts.transfer
    options = [option_runs(doc, src, v, label) for v, label in tl.items() if v in params.variants]
    options += [{"label": label, "variant": v, "val": [], "test": [], "lab": None, "val_n": None, "expected": 0,
                 "replicates": 0} for v, label in tl.items() if v not in params.variants]
    noise_table(doc, options)
    augmentation(doc, src, [v for v in tl if v in params.variants])
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


AUGMENT_WORDS = {   # params `augment` -> what it does to each training image (pipelines/train/engine.py AUGMENTS)
    "none": "none",
    "flip": "horizontal flips",
    "crop": "random shifts (padded crops)",
    "crop_flip": "random shifts (padded crops) and horizontal flips",
    "resized_crop_flip": "random resized crops (50–100 % of the area) and horizontal flips",
}


def augmentation(doc: Document, src: Inputs, variants: Sequence[str]) -> None:
    """The training augmentation each option used, as params.yaml sets it."""
    said = []
    for v in variants:
        cfg = src.params.variants[v]
        what = ("none: a linear SVM fitted once on frozen features" if cfg.classifier == "svm"
                else f"`{cfg.augment}`" + ("" if cfg.augment == "none" else f", {AUGMENT_WORDS.get(cfg.augment, cfg.augment)}"))
        said.append(f"`{v}`: {what}")
    if said:
        doc.add("Training augmentation (params.yaml `augment`): " + "; ".join(said) + ". Flips suit photos of "
                "objects, not digits or text, where a mirrored image is another symbol (docs/your-data.md, "
                "\"Choosing augmentation\").")


def one_model(doc: Document, src: Inputs) -> None:
    """Why a deterministic option (config.Variant.deterministic) has one run where the others have several."""
    params = src.params
    seeds = 1 + len(params.replicates.seeds) if params.replicates is not None else 1
    for v, label in params.reference.parts.transfer.items():
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
    doc.table(HEADER, transfer["rows"], right=(1, 2, 3, 4, 5, 6, 7))
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
            rows.append((f"{a['label']} vs {b['label']}", pp(mb, ma), test, p_value(p), reading))
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
    finals = [(label, v, final_layer(doc.results(v))) for v, label in src.params.reference.parts.transfer.items()
              if v in src.params.variants]
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
        doc.not_run(f"no results for `{v}` under results/ or metrics/ (run {how_to_run(src.params, v)})")
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


# ---------------------------------------------------------------- paired verdicts on the test set

HEADER = ("pair (A vs B)", "test images", "A correct, B wrong", "A wrong, B correct",
          "difference A − B, main seed [95 % CI]", "McNemar exact p", "seeds",
          "mean difference over seeds [95 % CI]", "verdict")


def verdict(label_a: str, label_b: str, main: dict, seeds: Optional[tuple[float, float, float]]) -> str:
    """The sentence for one pair, with A the option ahead on the main seed (see the module's rule)."""
    none = f"no difference detectable at this test size (smallest detectable: {main['detectable']:.1f} pp)"
    if main["p"] >= ALPHA:
        return none
    if seeds is not None and not (seeds[1] > 0 if main["diff"] > 0 else seeds[2] < 0):
        return (none + f"; the main seed alone differs ({p_is(main['p'])}) but the mean over seeds "
                f"{interval(*seeds)} includes zero")
    lo, hi = (minus(f"{main[k]:.2f}") for k in ("lo", "hi"))
    return f"{label_a} beats {label_b} by {main['diff']:.2f} pp [{lo}, {hi}], {p_is(main['p'])}"


def interval(mid: float, lo: float, hi: float) -> str:
    """A difference with its interval, signs written as such: "+1.20 pp [−0.40, +2.80]"."""
    return f"{signed(mid, 2, ' pp')} [{signed(lo)}, {signed(hi)}]"


def stand_in(correct: dict[int, np.ndarray], deterministic: bool, other: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """A deterministic option's one model under each seed of the option it is compared with (every seed
    would give it the same model: config.Variant.deterministic); any other option as it is."""
    if not deterministic or len(correct) != 1 or not other:
        return correct
    (vector,) = correct.values()
    return {seed: vector for seed in other}


def comparison_rows(options: Sequence[tuple[str, dict[int, np.ndarray]]], main_seed: int,
                    deterministic: Collection[str] = ()) -> list[tuple]:
    """One row per pair of options (the HEADER's columns). options: (label, {seed: correct vector});
    the main seed is `main_seed` where both options have it, else their smallest common seed. Seeds
    are paired by value for the mean over seeds; an option whose label is in `deterministic` has one
    model, which pairs with each seed of the other option (stand_in)."""
    rows = []
    for i, (label_1, own_1) in enumerate(options):
        for label_2, own_2 in options[i + 1:]:
            c_1 = stand_in(own_1, label_1 in deterministic, own_2)
            c_2 = stand_in(own_2, label_2 in deterministic, c_1)
            common = sorted(set(c_1) & set(c_2))
            if not common:
                rows.append((f"{label_1} vs {label_2}", "—", "—", "—", "—", "—", 0, "—",
                             "not run: no seed with test predictions for both"))
                continue
            seed = main_seed if main_seed in common else common[0]
            (la, ca), (lb, cb) = (label_1, c_1), (label_2, c_2)
            if c_1[seed].mean() < c_2[seed].mean():   # name the option ahead on the main seed first
                (la, ca), (lb, cb) = (lb, cb), (la, ca)
            m = stats.mcnemar(ca[seed], cb[seed])
            diffs = [float(ca[s].mean() - cb[s].mean()) * 100 for s in common]
            ci = stats.t_interval(diffs, 1 - ALPHA)   # (mean, lo, hi) over seeds; None below two
            si = None if ci is None else (stats.mean_std(diffs)[0], *ci)
            rows.append((f"{la} vs {lb}", f"{m['n']:,}", m["b"], m["c"],
                         interval(m["diff"], m["lo"], m["hi"]) + ("" if seed == main_seed else f" (seed {seed})"),
                         p_value(m["p"]), len(common), "—" if si is None else interval(*si),
                         verdict(la, lb, m, si)))
    return rows


def transfer_comparison(root: Path, params: Params) -> Optional[dict]:
    """The paired verdict rows of the transfer options, from every run's per-image test predictions
    under `root`: {"n": test images, "rows": comparison_rows}; None below two options with predictions."""
    options, first, deterministic = [], None, []
    for v, label in params.reference.parts.transfer.items():
        if v not in params.variants:
            continue
        correct = {}
        for seed, (path, y, pred) in load_test_predictions(root, params, v).items():
            if first is None:
                first = (path, y)
            elif not np.array_equal(y, first[1]):
                raise ReportError(f"{path}: its labels differ from those of {first[0]}, so the two were not made on "
                                  "the same test images; rerun the train and evaluate stages of the transfer options")
            correct[seed] = y == pred
        if correct:
            options.append((label, correct))
            if params.variants[v].deterministic:
                deterministic.append(label)
    if len(options) < 2:
        return None
    return {"n": len(first[1]), "rows": comparison_rows(options, params.seed, deterministic),
            "deterministic": deterministic}
