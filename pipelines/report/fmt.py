"""How the report writes numbers: percentages, differences in percentage points, losses, counts;
"—" wherever a number is absent or not finite."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from pipelines.stats import mean_std

MINUS = "−"  # a real minus sign: "-0.40 pp" reads as a dash in prose


def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def pct(x: Optional[float]) -> str:
    return f"{x:.2f} %" if finite(x) else "—"


def loss(x: Optional[float]) -> str:
    return f"{x:.4f}" if finite(x) else "—"


def pp(ours: Optional[float], lab: Optional[float]) -> str:
    return f"{ours - lab:+.2f} pp" if finite(ours) and finite(lab) else "—"


def num(x: object) -> str:
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.4g}" if math.isfinite(x) else "—"
    return str(x)


def signed(x: float, digits: int = 2, unit: str = "") -> str:
    return f"{x:+.{digits}f}{unit}".replace("-", MINUS)


def ratio(a: float, b: float, fewer: str, more: str) -> str:
    """'11.3x fewer parameters' when a > b, '1.2x more parameters' when a < b."""
    if not (finite(a) and finite(b)) or a <= 0 or b <= 0:
        return "—"
    return f"{a / b:.1f}x {fewer}" if a >= b else f"{b / a:.1f}x {more}"


def mean_cell(xs: Sequence[float]) -> str:
    """Accuracies of several runs as 'mean ± std %' (one run: its value)."""
    if not xs:
        return "—"
    m, s = mean_std(xs)
    return f"{m:.2f} %" if s is None else f"{m:.2f} ± {s:.2f} %"
