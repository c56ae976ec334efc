"""The gate's statistics over pipelines/stats.py's: a comparison of two sides' training runs on the
same validation images (the seed spread and the images both in the interval), and Holm's adjustment
over the gated metrics. Accuracies and differences in percent (pp)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from pipelines.stats import ALPHA, POWER, mcnemar


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (the family-wise error rate over several tests), in the
    input's order: the i-th smallest p is multiplied by (m - i), running maximum, capped at 1."""
    m = len(pvalues)
    adjusted, running = [1.0] * m, 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def runs_compared(base: Sequence[np.ndarray], head: Sequence[np.ndarray], paired: bool = True,
                  alpha: float = ALPHA) -> dict:
    """Head against base over one or more training runs (seeds) per side, each run a boolean
    "correct" vector over the validation images; differences in pp, head - base.

    The variance of the difference of the two sides' mean accuracies has two parts:
    - seed to seed: the pooled sample variance of the run accuracies within each side (on the same
      images) times 1/k_base + 1/k_head; measured only where a side has two runs or more;
    - the images (`image_variance`).
    The interval and p use Student's t with Welch-Satterthwaite degrees of freedom (the image part
    counted as known), the normal when no seed spread was measured; with one run per side, paired,
    they are McNemar's (`mcnemar`). `detectable`: the difference this comparison finds with
    probability POWER at a two-sided level `alpha` (pass ALPHA / m for the first step of Holm over m)."""
    from scipy.stats import norm, t

    b, h = np.asarray(base, dtype=bool), np.asarray(head, dtype=bool)
    if b.ndim != 2 or h.ndim != 2 or 0 in b.shape + h.shape or (paired and b.shape[1] != h.shape[1]):
        raise ValueError(f"need one or more runs per side over {'the same' if paired else 'some'} images; "
                         f"got {b.shape} and {h.shape}")
    acc_b, acc_h = b.mean(1) * 100, h.mean(1) * 100
    diff = float(acc_h.mean() - acc_b.mean())
    df_seed = sum(len(a) - 1 for a in (acc_b, acc_h))
    s2 = sum(float(((a - a.mean()) ** 2).sum()) for a in (acc_b, acc_h)) / df_seed if df_seed else 0.0
    v_seed = s2 * (1 / len(acc_b) + 1 / len(acc_h))
    v_img = image_variance(b, h, paired)
    se = math.sqrt(v_seed + v_img)
    df = (v_seed + v_img) ** 2 / (v_seed ** 2 / df_seed) if v_seed > 0 else math.inf
    q = (lambda x: float(t.ppf(x, df))) if math.isfinite(df) else (lambda x: float(norm.ppf(x)))
    out = {"n": b.shape[1] if paired else min(b.shape[1], h.shape[1]), "paired": paired,
           "runs": (len(acc_b), len(acc_h)), "base": float(acc_b.mean()), "head": float(acc_h.mean()),
           "diff": diff, "se": se, "df": float(df), "seed_sd": math.sqrt(s2) if df_seed else None,
           "detectable": (q(1 - alpha / 2) + q(POWER)) * se}
    if paired and len(acc_b) == len(acc_h) == 1:
        mc = mcnemar(h[0], b[0])   # A = head, B = base: its difference is head - base
        return {**out, "lo": mc["lo"], "hi": mc["hi"], "p": mc["p"]}
    half = q(1 - ALPHA / 2) * se
    p = 2 * (float(t.sf(abs(diff) / se, df)) if math.isfinite(df) else float(norm.sf(abs(diff) / se)))
    return {**out, "lo": diff - half, "hi": diff + half, "p": min(p, 1.0)}


def image_variance(base: np.ndarray, head: np.ndarray, paired: bool) -> float:
    """The image sampling part of runs_compared's variance (pp²), from (runs, images) boolean arrays.
    Paired: the variance of the per-image difference of the sides' seed-averaged correctness over n
    (one run per side: McNemar's (b + c - (b - c)²/n) / n²), at least that of one discordant image
    in n, so that identical predictions do not claim infinite precision. Unpaired (different images):
    the binomial variances of the two sides' accuracies added, each kept at least one image from 0 or 1."""
    if paired:
        n = base.shape[1]
        d = head.mean(0) - base.mean(0)
        return max(float(d.var(ddof=1)) if n > 1 else 0.0, 1.0 / n) / n * 1e4
    v = 0.0
    for x in (base, head):
        n = x.shape[1]
        a = min(max(float(x.mean()), 1 / n), 1 - 1 / n)
        v += a * (1 - a) / n * 1e4
    return v


def draws_compared(base: Sequence[float], head: Sequence[float], n_base: int, n_head: int,
                   alpha: float = ALPHA) -> dict:
    """Head against base where every run is its own draw of the data (training, validation and test
    subsets) and seed: two independent samples of run accuracies (pp), compared by Welch's t on the
    difference of their means, head - base. `n_base`, `n_head`: the images each run was judged on.

    Each run's accuracy varies with its draw of the training images, its seed and its own draw of
    the judged images, so the sample variance of a side's runs already holds the images' sampling:
    the binomial variance is not added to it. It is the least a run's variance can be (a run's
    accuracy on n images drawn at random varies at least that much), so it floors each side's
    variance where its runs happen to agree more than that (a few runs of a deterministic model,
    or two draws that score alike), keeping the Welch-Satterthwaite degrees of freedom of the runs.
    A side with one run borrows the other side's variance (pooled over both sides' degrees of
    freedom); with one run on each side the spread is not measured and only that floor is left, on
    the normal. `detectable` as runs_compared's."""
    from scipy.stats import norm, t

    a_b, a_h = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if a_b.ndim != 1 or a_h.ndim != 1 or not len(a_b) or not len(a_h) or min(n_base, n_head) < 1:
        raise ValueError(f"need one or more run accuracies per side on some images; got {a_b.shape} and {a_h.shape}")
    kb, kh = len(a_b), len(a_h)
    diff = float(a_h.mean() - a_b.mean())
    var = [float(a.var(ddof=1)) if len(a) > 1 else None for a in (a_b, a_h)]
    if var[0] is None and var[1] is not None:
        var[0] = var[1]
    elif var[1] is None and var[0] is not None:
        var[1] = var[0]
    least = []   # per side, the variance of one run's accuracy on its n images drawn at random
    for a, n in ((a_b, n_base), (a_h, n_head)):
        p = min(max(float(a.mean()) / 100, 1 / n), 1 - 1 / n)
        least.append(p * (1 - p) / n * 1e4)
    measured = var[0] is not None
    if measured:
        # Each side's spread kept at least its images' binomial variance; the degrees of freedom stay
        # those of its few runs, whose spread is uncertain whether or not the floor stands in.
        floored = var[0] < least[0] or var[1] < least[1]
        parts = (max(var[0], least[0]) / kb, max(var[1], least[1]) / kh)
        v = sum(parts)
        if kb > 1 and kh > 1:
            df = v ** 2 / sum(x ** 2 / d for x, d in zip(parts, (kb - 1, kh - 1)))
        else:
            df = float(kb + kh - 2)   # one side's variance stands for both
    else:
        floored = False
        v, df = least[0] / kb + least[1] / kh, math.inf
    se = math.sqrt(v)
    q = (lambda x: float(t.ppf(x, df))) if math.isfinite(df) else (lambda x: float(norm.ppf(x)))
    half = q(1 - ALPHA / 2) * se
    p = 2 * (float(t.sf(abs(diff) / se, df)) if math.isfinite(df) else float(norm.sf(abs(diff) / se)))
    sd = [math.sqrt(x) if x is not None and len(a) > 1 else None for x, a in zip(var, (a_b, a_h))]
    pooled = (sum(float(((a - a.mean()) ** 2).sum()) for a in (a_b, a_h)) / (kb + kh - 2)) if kb + kh > 2 else None
    return {"n": min(n_base, n_head), "paired": False, "redrawn": True, "runs": (kb, kh),
            "base": float(a_b.mean()), "head": float(a_h.mean()), "diff": diff, "se": se, "df": float(df),
            "seed_sd": math.sqrt(pooled) if pooled is not None else None, "sd_base": sd[0], "sd_head": sd[1],
            "floored": floored, "detectable": (q(1 - alpha / 2) + q(POWER)) * se,
            "lo": diff - half, "hi": diff + half, "p": min(p, 1.0)}
