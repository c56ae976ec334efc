"""The statistics behind the lab's verdicts, one copy each: accuracies are in percent throughout.

- Noise of one accuracy: the binomial standard error sqrt(p(1 - p) / n).
- Several runs (seeds) of one option: mean, sample standard deviation, Student-t interval of the mean,
  and Welch's t-test between two options.
- Two accuracies on independent image sets: the two-proportion z-test.
- Two classifiers on the same images (`mcnemar`): McNemar's exact test counts only the discordant
  images (b: A right, B wrong; c: A wrong, B right); under "no difference" b is Binomial(b + c, 1/2),
  two-sided p from scipy.stats.binomtest. The 95 % interval of the accuracy difference (A − B) =
  (b − c) / n is Agresti and Min's (2005) Wald interval with 0.5 added to each of the four cells,
  which keeps its coverage near 95 % even when b + c is small. The smallest detectable difference
  at a test size is the one McNemar's test finds with probability 0.8 at a two-sided 0.05 level,
  given the share of discordant images (Connor's 1987 sample-size formula, solved for the difference).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

ALPHA = 0.05
POWER = 0.8
Z_ALPHA = 1.959963984540054    # standard normal quantile of 1 - ALPHA / 2
Z_POWER = 0.8416212335729143   # standard normal quantile of POWER


def binomial_se(acc: float, n: int) -> float:
    """Standard error (pp) of an accuracy `acc` (%) measured on n images."""
    a = acc / 100
    return math.sqrt(max(a * (1 - a), 1e-12) / max(n, 1)) * 100


def mean_std(xs: Sequence[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); no deviation from one run."""
    n = len(xs)
    m = sum(xs) / n
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else None)


def t_interval(xs: Sequence[float], level: float = 0.95) -> Optional[tuple[float, float]]:
    """Student-t confidence interval of the mean; None below two runs (no spread to scale)."""
    from scipy.stats import t

    m, s = mean_std(xs)
    if s is None:
        return None
    half = t.ppf(0.5 + level / 2, len(xs) - 1) * s / math.sqrt(len(xs))
    return m - half, m + half


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p of Welch's t-test (unequal variances), the seed-to-seed noise of two options."""
    from scipy.stats import t

    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    va, vb = sa ** 2 / len(a), sb ** 2 / len(b)
    if va + vb == 0:  # identical runs on both sides: any difference is exact, none is noise
        return 1.0 if ma == mb else 0.0
    stat = (ma - mb) / math.sqrt(va + vb)
    terms = (va ** 2 / (len(a) - 1) if va else 0.0) + (vb ** 2 / (len(b) - 1) if vb else 0.0)
    df = (va + vb) ** 2 / terms
    return float(2 * t.sf(abs(stat), df))


def two_proportion_p(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two-sided p of the two-proportion z-test (accuracies in %): the sampling noise of the evaluation set."""
    a, b = p1 / 100, p2 / 100
    pool = (a * n1 + b * n2) / (n1 + n2)
    se = math.sqrt(max(pool * (1 - pool), 1e-12) * (1 / n1 + 1 / n2))
    return math.erfc(abs(a - b) / se / math.sqrt(2))


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


def p_value(p: float) -> str:
    """A p-value in a column headed "p": "< 0.001" below 0.001, else three significant digits."""
    return "< 0.001" if p < 0.001 else f"{p:.3g}"


def p_is(p: float) -> str:
    """A p-value in a sentence: "p < 0.001" or "p = 0.0123"."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3g}"
