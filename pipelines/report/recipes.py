"""The report's stronger recipes: each recipe variant against its baseline (the lab's recipe run
here) at the same model, epochs and data, with the goal params.yaml names and the noise of the difference."""
from __future__ import annotations

from pipelines.config import Params
from pipelines.report.doc import Document, Inputs, pct, pp
from pipelines.report.load import Results, is_kind
from pipelines.report.readings import accuracy, n_val
from pipelines.stats import ALPHA, p_value, two_proportion_p

RECIPE_FIELDS = ("batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "label_smoothing", "augment")


def recipe_changes(params: Params, variant: str, baseline: str) -> str:
    v, b = params.variants[variant], params.variants[baseline]
    changed = [f"{f} {getattr(b, f)} → {getattr(v, f)}" for f in RECIPE_FIELDS
               if getattr(v, f) != getattr(b, f) and not (f == "momentum" and "sgd" not in (v.optimizer, b.optimizer))]
    return "; ".join(changed) or "none"


def train_time(r: Results) -> str:
    t = r.train if r.ran else None
    return f"{t['train_seconds']:.0f} s" if t is not None and is_kind(t.get("train_seconds"), "num") else "—"


def section(doc: Document, src: Inputs) -> None:
    params = src.params
    if not params.recipes:
        return
    doc.heading(2, "Stronger recipes at the lab's budget", "recipes")
    doc.add("Each recipe trains the same model for the same number of epochs on the same data as its baseline, "
            "the lab's recipe run here; only the training recipe differs. The goal is the best validation "
            f"accuracy named in params.yaml (`recipes`) for this run's protocol (`{params.protocol}`).")
    rows = []
    for name, rc in params.recipes.items():
        r, b = doc.results(name), doc.results(rc.baseline)
        ours, base = accuracy(r) if r.ran else None, accuracy(b) if b.ran else None
        goal = rc.target.get(params.protocol)
        verdict, p_txt = "not run", "—"
        if ours is not None:
            verdict = "—" if goal is None else ("met" if ours >= goal else f"not met ({pp(ours, goal)})")
            n = n_val(src.data, params.variants[name].dataset, r)
            if base is not None and n:
                p = two_proportion_p(ours, n, base, n)
                p_txt = p_value(p) + (" (within noise)" if p > ALPHA else "")
        rows.append((f"`{name}`", f"`{rc.baseline}`", params.variants[name].epochs, recipe_changes(params, name, rc.baseline),
                     pct(base), pct(ours), pp(ours, base), p_txt, pct(goal), verdict,
                     f"{train_time(b)} / {train_time(r)}"))
    doc.table(["recipe", "baseline (lab recipe)", "epochs", "what changed", "baseline best validation accuracy",
               "recipe best validation accuracy", "difference", "p (two-proportion z)", "goal", "verdict",
               "training time, baseline / recipe"], rows,
              right=(2, 4, 5, 6, 7, 8, 10))
    doc.add("Accuracies are best-epoch validation accuracies (the split model selection uses); p is the "
            "two-proportion z-test on the validation images, which measures only that set's sampling noise.")
