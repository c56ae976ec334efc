"""Turn loss/accuracy curves into the lab's verdicts with a stated, recomputable rule.

A validation accuracy that fell, or a validation loss that rose, beyond noise is always named
(overfitting, or getting worse from an epoch), whatever the training loss did: a collapse is never
a plateau.
"""
from __future__ import annotations

import math

from pipelines import stats

LOSS_RISE = 0.02        # overfitting: the validation loss this far above its minimum while the training loss fell
LOSS_RISE_ALONE = 0.10  # getting worse: this far above its minimum, whatever the training loss did

RULE = (
    "Let E be the last epoch, P = max(2, E // 5) the patience, N the epoch of minimum validation loss "
    "and B the last epoch at the best validation accuracy. The noise of an accuracy p measured on n validation "
    "images is its binomial standard error s = sqrt(p(1-p)/n); two accuracies differ beyond noise when "
    "they differ by more than 2·sqrt(s1² + s2²). "
    f"Overfitting from epoch N+1 when N <= E - P, the final validation loss is at least {LOSS_RISE * 100:.0f} % "
    "above its minimum and the training loss ended below its value at epoch N. "
    "Otherwise getting worse from epoch B+1 when the final validation accuracy is below its best beyond "
    f"noise (or fell beyond noise over the last P epochs), or from epoch N+1 when N <= E - P and the final "
    f"validation loss is at least {LOSS_RISE_ALONE * 100:.0f} % "
    "above its minimum, whatever the training loss did. "
    "Otherwise still improving (more epochs should help) when the validation loss reached its minimum "
    "in the last P epochs or the validation accuracy rose beyond noise over them. "
    "Otherwise a plateau: more epochs are unlikely to help."
)


def signed(x: float) -> str:
    """+1.20 or −0.40: a real minus sign, as the report writes it."""
    return f"{x:+.2f}".replace("-", "−")


def diff_noise(a: float, b: float, n: int) -> float:
    """Two accuracies (percent) on the same n images differ beyond noise above this many points."""
    return 2 * math.sqrt(stats.binomial_se(a, n) ** 2 + stats.binomial_se(b, n) ** 2)


# long: the rule's five outcomes read best side by side, each with the figures it states
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
    n, b = min_row["epoch"], best_row["epoch"]
    b_last = max(r["epoch"] for r in rows if r["val_acc"] == best_row["val_acc"])   # the last epoch at the best
    se = stats.binomial_se(last["val_acc"], n_val)
    window = [r for r in rows if r["epoch"] > e - p]
    before = [r for r in rows if r["epoch"] <= e - p]
    start_acc = before[-1]["val_acc"] if before else rows[0]["val_acc"]
    acc_gain = window[-1]["val_acc"] - start_acc
    gain_noise = diff_noise(start_acc, last["val_acc"], n_val)
    acc_drop = best_row["val_acc"] - last["val_acc"]
    drop_noise = diff_noise(best_row["val_acc"], last["val_acc"], n_val)
    # relative to the minimum; a minimum of 0 (every image fitted to float precision) counts as 1e-6
    rise = (last["val_loss"] - min_row["val_loss"]) / max(min_row["val_loss"], 1e-6)
    train_at_n, train_end = min_row["train_loss"], last["train_loss"]
    train_fell = train_end < train_at_n
    acc_fell = acc_drop > drop_noise or -acc_gain > gain_noise
    loss_rose = n <= e - p and rise >= LOSS_RISE_ALONE
    above = f"{rise * 100:.1f} % above" if rise < 10 else f"{1 + rise:,.0f} times"   # 1000 %: "11 times"
    loss_txt = f"validation loss {above} its minimum (epoch {n})"
    drop_txt = (f"validation accuracy {acc_drop:.2f} pp below its best (epoch {b_last}), noise ±{drop_noise:.2f} pp"
                + ("" if acc_drop > drop_noise else f", and {signed(acc_gain)} pp over the last {p} epochs, "
                   f"noise ±{gain_noise:.2f} pp"))
    worse_from = None
    if n <= e - p and rise >= LOSS_RISE and train_fell:
        worse_from = n + 1
        verdict = (f"overfitting from epoch {n + 1}: {loss_txt} while training loss kept falling"
                   + (f"; {drop_txt}" if acc_fell else ""))
    elif acc_fell or loss_rose:
        worse_from = b_last + 1 if acc_fell else n + 1
        seen = [drop_txt] if acc_fell else []
        seen += [loss_txt] if n <= e - p and rise >= LOSS_RISE else []
        train_txt = f"training loss {train_at_n:.4g} at epoch {n} and {train_end:.4g} at the end"
        verdict = (f"getting worse from epoch {worse_from}: {'; '.join(seen)}; "
                   + (f"{train_txt}" if train_fell else f"{train_txt}, so not the textbook overfitting shape, "
                      "but worse all the same")
                   + " (the best epoch's weights are the ones kept)")
    elif n > e - p or acc_gain > gain_noise:
        verdict = (f"still improving: more epochs should help (validation loss minimum at epoch {n} of {e}; "
                   f"accuracy {signed(acc_gain)} pp over the last {p} epochs, noise ±{gain_noise:.2f} pp)")
    else:
        verdict = (f"plateau: more epochs are unlikely to help (accuracy {signed(acc_gain)} pp over the last {p} "
                   f"epochs, noise ±{gain_noise:.2f} pp; {acc_drop:.2f} pp below its best, noise ±{drop_noise:.2f} pp; "
                   f"validation loss {rise * 100:.1f} % above its minimum)")
    return {
        "min_val_loss_epoch": n,
        "best_acc_epoch": b,
        "final_loss_gap": last["val_loss"] - last["train_loss"],
        "final_acc_gap": last["train_acc"] - last["val_acc"],
        "val_loss_rise_pct": rise * 100,
        "acc_gain_last_epochs": acc_gain,
        "acc_drop_from_best": acc_drop,
        "patience": p,
        "acc_noise_pp": se,
        "acc_drop_noise_pp": drop_noise,
        "worse_from_epoch": worse_from,
        "verdict": verdict,
        "rule": RULE,
    }
