"""evaluate@<variant>: the trained variant on its validation split (and held-out test split):
accuracy, loss, per-class precision/recall/F1, confusion matrices and the two most frequent
confusions as an image grid; docs/outputs.md lists the files.

Called by stages/evaluate.py with the validated params and the exact paths dvc.yaml names; it
writes only those paths, each file atomically.
"""
from __future__ import annotations

import time

import numpy as np

from pipelines import inference, io, plots
from pipelines.clock import StageClock
from pipelines.config import Params
from pipelines.outputs import ConfusionMatrixRow, ConfusionRow, EvaluateMetrics, PerClassRow
from pipelines.runtime import Runtime, StagePaths
from pipelines.tracking import Run


def confusion_counts(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """k x k counts, rows the true class, columns the predicted one (sklearn's confusion_matrix with
    labels 0..k-1). Counted with numpy: importing sklearn cost each evaluate stage about 1.5 CPU-seconds."""
    return np.bincount(np.asarray(y, np.int64) * k + np.asarray(pred, np.int64), minlength=k * k).reshape(k, k)


def per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, F1, support) per class from confusion counts, as sklearn's
    precision_recall_fscore_support computes them (F1 = 2 tp / (true + predicted)), 0 where undefined."""
    tp, predicted, support = np.diag(cm).astype(float), cm.sum(0).astype(float), cm.sum(1)

    def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den != 0)

    return divide(tp, predicted), divide(tp, support.astype(float)), divide(2 * tp, support + predicted), support


def evaluate(params: Params, name: str, paths: StagePaths) -> dict:
    t_start, clock = time.perf_counter(), StageClock()
    rt = Runtime.open(params, name, paths)
    model, cfg = rt.load_model()
    val_d = rt.on_device(rt.prep.val, cfg)
    classes, y = rt.prep.meta["classes"], rt.prep.val["y"]
    with Run(params, "evaluate", name, resume=paths.model / "run.json", system_metrics=False) as run:
        run.log_datasets(rt.dataset_inputs({"val": "validation", "test": "test"}))
        t0 = time.perf_counter()
        loss, acc, logits = inference.evaluate(model, val_d, rt.variant.eval_batch_size, rt.device, rt.precision)
        infer_s = time.perf_counter() - t0
        pred = logits.argmax(1).numpy()
        k = len(classes)
        cm = confusion_counts(y, pred, k)
        p, r, f1, sup = per_class_scores(cm)
        off = [(int(cm[i, j]), i, j) for i in range(k) for j in range(k) if i != j and cm[i, j] > 0]
        off.sort(key=lambda t: (-t[0], t[1], t[2]))
        top = [{"true": classes[i], "pred": classes[j], "count": c} for c, i, j in off[:5]]
        result = {"split": "val", "n": int(len(y)), "accuracy": acc, "loss": loss,
                  "macro_f1": float(f1.mean() * 100), "top_confusions": top, "precision": rt.precision,
                  "inference_seconds": infer_s, "img_per_s": len(y) / infer_s if infer_s else 0.0}
        test = rt.write_test_predictions(model, cfg)
        if test:
            result.update(test_accuracy=test["test_acc"], test_n=test["test_n"])
        io.write_csv(paths.out / "per_class.csv", PerClassRow.columns(),
                     [PerClassRow(class_=classes[i], precision=p[i], recall=r[i], f1=f1[i], support=int(sup[i])).cells()
                      for i in range(k)])
        _write_confusions(rt, cm, pred, off)
        result["seconds"] = time.perf_counter() - t_start   # the stage body up to its metrics
        result["clock"] = clock.record()
        result = EvaluateMetrics.model_validate(result).dump()
        io.write_json(paths.metrics, result)
        headline = {"val_accuracy": acc, "val_macro_f1": result["macro_f1"],
                    **({"test_accuracy": result["test_accuracy"]} if "test_accuracy" in result else {})}
        run.log_metrics({**headline, "val_loss": loss})
        run.log_variant_metrics(headline)
        for f in sorted(paths.out.iterdir()):
            if f.suffix in (".png", ".csv") and f.name != "confusion.csv":
                run.log_artifact(f, "evaluate")
    print(f"evaluate {name}: accuracy {acc:.2f}% on {len(y)} validation images; top confusions "
          + ", ".join(f"{t['true']}->{t['pred']} ({t['count']})" for t in top[:2]), flush=True)
    return result


def _write_confusions(rt: Runtime, cm: np.ndarray, pred: np.ndarray, off: list[tuple[int, int, int]]) -> None:
    """confusion.csv (one row per image, DVC's confusion plot), the matrix as CSV and PNG, and the
    validation images of the two most frequent confusions (`off`: (count, true, pred), most frequent first)."""
    out_dir, name, classes, y = rt.paths.out, rt.name, rt.prep.meta["classes"], rt.prep.val["y"]
    k = len(classes)
    io.write_csv(out_dir / "confusion.csv", ConfusionRow.columns(),
                 [ConfusionRow(actual=classes[a], predicted=classes[b]).cells() for a, b in zip(y, pred)])
    io.write_csv(out_dir / "confusion_matrix.csv", ConfusionMatrixRow.header(classes),
                 [ConfusionMatrixRow(true=classes[i], counts=cm[i].tolist()).cells() for i in range(k)])
    plots.save_figure(plots.confusion(cm, classes, f"{name}: confusion matrix ({len(y)} validation images)"),
                      out_dir / "confusion.png")
    images, captions = [], []
    for c, i, j in off[:2]:
        idx = np.flatnonzero((y == i) & (pred == j))[:8]
        images += [rt.prep.val["x"][t] for t in idx]
        captions += [f"true {classes[i]}\npred {classes[j]}" for _ in idx]
    if images:
        fig = plots.examples(np.stack(images), captions, f"{name}: the two most frequent confusions", ncols=8)
        plots.save_figure(fig, out_dir / "confusions.png")
