"""Two classifiers judged on the same held-out test images: the paired verdicts of the
transfer-learning options (the statistics themselves are in pipelines/stats.py: McNemar's exact
test, Agresti and Min's interval of the difference, the smallest detectable difference).

How seeds enter a verdict (`verdict`): each option is trained once per seed, and every model is
chosen on the validation split only, so every test prediction comes from data that chose nothing.
"A beats B" needs both (1) McNemar's p < 0.05 on the main seed's two models (params `seed`) and
(2), when there are two or more seeds, the mean over seeds of the paired test-accuracy
difference with its Student-t 95 % interval entirely on the same side of zero: one lucky pair of
models must not decide for the training recipe. Otherwise the pair gets "no difference
detectable at this test size (smallest detectable: y pp)". A deterministic option (the linear SVM
on frozen features, the same model for every seed) is fitted once; its one model stands in for it
under each seed of the option it is compared with, so the mean over seeds carries the other
option's seed-to-seed spread only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Collection, Optional, Sequence

import numpy as np

from pipelines import stats
from pipelines.config import Params
from pipelines.errors import ReportError
from pipelines.report.lab import TL_OPTIONS
from pipelines.report.load import load_test_predictions
from pipelines.stats import ALPHA, p_text

HEADER = ("pair (A vs B)", "test images", "A correct, B wrong", "A wrong, B correct",
          "difference A − B, main seed [95 % CI]", "McNemar exact p", "seeds",
          "mean difference over seeds [95 % CI]", "verdict")


def verdict(label_a: str, label_b: str, main: dict, seeds: Optional[tuple[float, float, float]]) -> str:
    """The sentence for one pair, with A the option ahead on the main seed (see the module's rule)."""
    none = f"no difference detectable at this test size (smallest detectable: {main['detectable']:.1f} pp)"
    if main["p"] >= ALPHA:
        return none
    if seeds is not None and not (seeds[1] > 0 if main["diff"] > 0 else seeds[2] < 0):
        return (none + f"; the main seed alone differs (p = {p_text(main['p'])}) but the mean over seeds "
                f"{seeds[0]:+.2f} pp [{seeds[1]:+.2f}, {seeds[2]:+.2f}] includes zero")
    p = "p < 0.001" if main["p"] < 0.001 else f"p = {main['p']:.3g}"
    return f"{label_a} beats {label_b} by {main['diff']:.2f} pp [{main['lo']:.2f}, {main['hi']:.2f}], {p}"


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
                         f"{m['diff']:+.2f} pp [{m['lo']:+.2f}, {m['hi']:+.2f}]" + ("" if seed == main_seed else f" (seed {seed})"),
                         p_text(m["p"]), len(common),
                         "—" if si is None else f"{si[0]:+.2f} pp [{si[1]:+.2f}, {si[2]:+.2f}]",
                         verdict(la, lb, m, si)))
    return rows


def transfer_comparison(root: Path, params: Params) -> Optional[dict]:
    """The paired verdict rows of the transfer options, from every run's per-image test predictions
    under `root`: {"n": test images, "rows": comparison_rows}; None below two options with predictions."""
    options, first, deterministic = [], None, []
    for v, label in TL_OPTIONS:
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
