"""Turn loss/accuracy curves into the lab's verdicts with a stated, recomputable rule."""
from __future__ import annotations

from pipelines import stats

RULE = (
    "Let N be the epoch of minimum validation loss and E the last epoch, patience P = max(2, E // 5), "
    "and the noise of an accuracy the binomial standard error sqrt(p(1-p)/n). "
    "Overfitting from epoch N+1 when N <= E - P and the final validation loss is at least 2 % above "
    "its minimum while the training loss kept falling after N. "
    "Otherwise still improving (more epochs should help) when the validation loss reached its minimum "
    "in the last P epochs or the validation accuracy rose by more than one standard error over them. "
    "Otherwise a plateau: more epochs are unlikely to help."
)


def diagnose(history: list[dict], n_val: int) -> dict:
    """Figures and verdict for one run's per-epoch history (rows of history.csv)."""
    rows = [r for r in history if r.get("val_loss") == r.get("val_loss") and r.get("val_loss") is not None]
    if len(rows) < 2:
        return {"verdict": "single fit: no curve to diagnose", "rule": RULE}
    last = rows[-1]
    e = last["epoch"]
    p = max(2, e // 5)
    min_row = min(rows, key=lambda r: r["val_loss"])
    best_row = max(rows, key=lambda r: r["val_acc"])
    n = min_row["epoch"]
    se = stats.binomial_se(last["val_acc"], n_val)
    window = [r for r in rows if r["epoch"] > e - p]
    before = [r for r in rows if r["epoch"] <= e - p]
    acc_gain = window[-1]["val_acc"] - (before[-1]["val_acc"] if before else rows[0]["val_acc"])
    rise = last["val_loss"] / min_row["val_loss"] - 1
    train_after = [r["train_loss"] for r in rows if r["epoch"] >= n]
    train_fell = len(train_after) > 1 and train_after[-1] < train_after[0]
    if n <= e - p and rise >= 0.02 and train_fell:
        verdict = (f"overfitting from epoch {n + 1}: validation loss {rise * 100:.1f} % above its minimum "
                   f"(epoch {n}) while training loss kept falling")
    elif n > e - p or acc_gain > se:
        verdict = (f"still improving: more epochs should help (validation loss minimum at epoch {n} of {e}; "
                   f"accuracy {acc_gain:+.2f} pp over the last {p} epochs, noise ±{se:.2f} pp)")
    else:
        verdict = (f"plateau: more epochs are unlikely to help (accuracy {acc_gain:+.2f} pp over the last {p} "
                   f"epochs, within noise ±{se:.2f} pp)")
    return {
        "min_val_loss_epoch": n,
        "best_acc_epoch": best_row["epoch"],
        "final_loss_gap": last["val_loss"] - last["train_loss"],
        "final_acc_gap": last["train_acc"] - last["val_acc"],
        "val_loss_rise_pct": rise * 100,
        "acc_gain_last_epochs": acc_gain,
        "patience": p,
        "acc_noise_pp": se,
        "verdict": verdict,
        "rule": RULE,
    }
