"""Two classifiers judged on the same held-out test images: the paired statistics behind the
transfer-learning verdicts.

- McNemar's exact test: only the discordant images count (b: A right, B wrong; c: A wrong, B right);
  under "no difference" b is Binomial(b + c, 1/2). Two-sided p from scipy.stats.binomtest.
- 95 % interval of the accuracy difference (A − B) = (b − c) / n: Agresti and Min's (2005) Wald
  interval with 0.5 added to each of the four cells, which keeps its coverage near 95 % even when
  b + c is small.
- Smallest detectable difference at this test size: the difference McNemar's test finds with
  probability 0.8 at a two-sided 0.05 level, given the observed share of discordant images
  (Connor's 1987 sample-size formula, solved for the difference).

How seeds enter a verdict (`verdict`): each option is trained once per seed, and every model is
chosen on the validation split only, so every test prediction comes from data that chose nothing.
"A beats B" needs both (1) McNemar's p < 0.05 on the main seed's two models (params `seed`) and
(2), when there are two or more seeds, the mean over seeds of the paired test-accuracy
difference with its Student-t 95 % interval entirely on the same side of zero: one lucky pair of
models must not decide for the training recipe. Otherwise the pair gets "no difference
detectable at this test size (smallest detectable: y pp)".
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from pipelines.report.evidence import p_text

ALPHA = 0.05
POWER = 0.8
Z_ALPHA = 1.959963984540054    # standard normal quantile of 1 - ALPHA / 2
Z_POWER = 0.8416212335729143   # standard normal quantile of POWER

HEADER = ("pair (A vs B)", "test images", "A correct, B wrong", "A wrong, B correct",
          "difference A − B, main seed [95 % CI]", "McNemar exact p", "seeds",
          "mean difference over seeds [95 % CI]", "verdict")


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Paired comparison of two boolean "correct" vectors over the same images (differences in pp)."""
    from scipy.stats import binomtest

    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired comparison needs two equal, non-empty vectors; got {a.shape} and {b_.shape}")
    n = len(a)
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    b2, c2, n2 = b + 0.5, c + 0.5, n + 2.0
    d2 = (b2 - c2) / n2
    se = math.sqrt(max((b2 + c2) - (b2 - c2) ** 2 / n2, 0.0)) / n2
    return {"n": n, "b": b, "c": c, "acc_a": float(a.mean() * 100), "acc_b": float(b_.mean() * 100),
            "diff": (b - c) / n * 100, "lo": (d2 - Z_ALPHA * se) * 100, "hi": (d2 + Z_ALPHA * se) * 100,
            "p": p, "detectable": smallest_detectable(n, (b + c) / n)}


def test_size_for(diff_pp: float, discordant: float) -> int:
    """Test images McNemar's test needs to find `diff_pp` with power 0.8 at two-sided 0.05 (Connor 1987),
    when a share `discordant` of the images is classified right by exactly one of the two models."""
    d = diff_pp / 100
    if not 0 < d * d < discordant <= 1:
        raise ValueError(f"need 0 < difference² < discordant share <= 1; got {diff_pp} pp, {discordant}")
    return math.ceil((Z_ALPHA * math.sqrt(discordant) + Z_POWER * math.sqrt(discordant - d * d)) ** 2 / (d * d))


def smallest_detectable(n: int, discordant: float) -> float:
    """The inverse of test_size_for: the difference (pp) that n paired images detect with power 0.8.
    A discordant share of 0 (identical predictions) is taken as one image in n."""
    q = max(discordant, 1.0 / n)
    d = (Z_ALPHA + Z_POWER) * math.sqrt(q / n)
    for _ in range(50):   # fixed point of n d² = (z_a √q + z_b √(q − d²))²
        d = (Z_ALPHA * math.sqrt(q) + Z_POWER * math.sqrt(max(q - d * d, 0.0))) / math.sqrt(n)
    return d * 100


def seed_interval(diffs: Sequence[float]) -> Optional[tuple[float, float, float]]:
    """(mean, lo, hi) of per-seed differences, Student t 95 %; None below two seeds."""
    from scipy.stats import t

    k = len(diffs)
    if k < 2:
        return None
    m = float(np.mean(diffs))
    half = float(t.ppf(1 - ALPHA / 2, k - 1) * np.std(diffs, ddof=1) / math.sqrt(k))
    return m, m - half, m + half


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


def comparison_rows(options: Sequence[tuple[str, dict[int, np.ndarray]]], main_seed: int) -> list[tuple]:
    """One row per pair of options (the HEADER's columns). options: (label, {seed: correct vector});
    the main seed is `main_seed` where both options have it, else their smallest common seed. Seeds
    are paired by value for the mean over seeds."""
    rows = []
    for i, (label_1, c_1) in enumerate(options):
        for label_2, c_2 in options[i + 1:]:
            common = sorted(set(c_1) & set(c_2))
            if not common:
                rows.append((f"{label_1} vs {label_2}", "—", "—", "—", "—", "—", 0, "—",
                             "not run: no seed with test predictions for both"))
                continue
            seed = main_seed if main_seed in common else common[0]
            (la, ca), (lb, cb) = (label_1, c_1), (label_2, c_2)
            if c_1[seed].mean() < c_2[seed].mean():   # name the option ahead on the main seed first
                (la, ca), (lb, cb) = (lb, cb), (la, ca)
            m = mcnemar(ca[seed], cb[seed])
            si = seed_interval([float(ca[s].mean() - cb[s].mean()) * 100 for s in common])
            rows.append((f"{la} vs {lb}", f"{m['n']:,}", m["b"], m["c"],
                         f"{m['diff']:+.2f} pp [{m['lo']:+.2f}, {m['hi']:+.2f}]" + ("" if seed == main_seed else f" (seed {seed})"),
                         p_text(m["p"]), len(common),
                         "—" if si is None else f"{si[0]:+.2f} pp [{si[1]:+.2f}, {si[2]:+.2f}]",
                         verdict(la, lb, m, si)))
    return rows
