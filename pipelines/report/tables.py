"""What the report stage logs to MLflow besides the report: its tables (`mlflow_tables`) and the
champion of each dataset to register as that part's model (`champions`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from pipelines.config import Params
from pipelines.report.doc import Report
from pipelines.report.load import load_results


def variant_summary(params: Params, root: Path) -> list[dict]:
    """One row per variant that trained or evaluated: its accuracies, epochs, size, time, verdict, MLflow run."""
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
    out = {"variant_summary": variant_summary(params, Path(root))}
    for name, (header, rows) in (rep.tables.items() if rep is not None else ()):
        out[name] = [{h: str(cell) for h, cell in zip(header, row)} for row in rows]
    return out


def champions(params: Params, root: Path) -> list[dict]:
    """The best trained variant of each dataset (a part of the lab), to register as that part's model:
    highest held-out test accuracy where the part has a test split, else validation accuracy; ties go to
    the variant listed first in params.yaml. Only variants whose train stage recorded an MLflow run."""
    out = []
    rows = [r for r in variant_summary(params, Path(root)) if r["mlflow_run_id"] and r["val_accuracy"] is not None]
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
