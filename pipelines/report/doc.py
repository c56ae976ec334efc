"""The document model: the Markdown being written (`Document`), what every part reads (`Inputs`),
the finished report in memory (`Report`), and how numbers are written in it: percentages,
differences in percentage points, losses, counts; "—" wherever a number is absent or not finite."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Optional, Sequence

from pipelines.config import Params
from pipelines.report.load import FIGURES, Data, Results, load_results
from pipelines.stats import mean_std


@dataclass(frozen=True)
class Report:
    """The report in memory: Markdown text, figure bytes by file name, warnings it shows."""
    title: str
    markdown: str
    figures: dict[str, bytes]
    warnings: tuple[str, ...]
    # Tables also logged to MLflow by the report stage: name -> (header, rows), the same rows as in the text.
    tables: dict[str, tuple[tuple[str, ...], list[tuple]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Inputs:
    """What every part of the report reads: the params, each dataset's prepared description, the
    generation time, and the transfer options' paired verdicts (None when they cannot be computed)."""
    params: Params
    data: dict[str, Data]
    now: datetime
    transfer: Optional[dict]


def is_item(line: str) -> bool:
    """Whether a Markdown line is a list item (at any depth)."""
    return line.lstrip().startswith(("- ", "* "))


def cell(x: object) -> str:
    """A table cell's text: a pipe would split the cell, and '<' before a letter, '/', '!' or '?' could
    start raw HTML in the rendered page ("< 0.001" is left as it reads)."""
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", str(x).replace("|", "\\|")).replace("\n", " ")


class Document:
    """Markdown being written, plus the figures it links and the warnings it raised."""

    def __init__(self, root: Path):
        self.root = root
        self.lines: list[str] = []
        self.figures: dict[str, bytes] = {}
        self.warnings: list[str] = []
        self.toc: list[tuple[int, str, str]] = []   # (level, text, anchor) of the headings the contents list
        self.loaded: dict[str, Results] = {}
        self.contents_at = 0   # where the contents go, once every heading is known (set by the header)

    def add(self, *lines: str) -> None:
        """Lines of one block, then a blank line. A list that follows a line of text (a bold lead-in)
        gets the blank line before it that Markdown needs, or it renders as one run-on paragraph."""
        for line in lines:
            if is_item(line) and self.lines and self.lines[-1].strip() and not is_item(self.lines[-1]):
                self.lines.append("")
            self.lines.append(line)
        self.lines.append("")

    def heading(self, level: int, text: str, anchor: Optional[str] = None) -> None:
        # `{#id}` (attr_list) gives the HTML heading a stable id for the contents and the browser check;
        # an id made from the text would change with the data named in it.
        self.add("#" * level + " " + text + (f" {{#{anchor}}}" if anchor else ""))
        if anchor:
            self.toc.append((level, text, anchor))

    def results(self, variant: str) -> Results:
        if variant not in self.loaded:
            self.loaded[variant] = load_results(self.root, variant)
        return self.loaded[variant]

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> None:
        align = ["---:" if i in right else "---" for i in range(len(header))]
        out = ["| " + " | ".join(cell(h) for h in header) + " |", "| " + " | ".join(align) + " |"]
        out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
        self.add(*out)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
        self.add(f"> **Warning:** {text}")

    def not_run(self, what: str) -> None:
        self.add(f"*Not run:* {what}.")

    def figure(self, variant: str, results: Results, kind: str, caption: str) -> None:
        src = results.figures.get(kind)
        if src is None:
            rel = f"results/{variant}/{FIGURES[kind]}"
            self.warn(f"figure `{rel}` not found although the stage's metrics exist; rerun its stage")
            return
        name = f"{variant}_{kind}.png"
        self.figures[name] = src.read_bytes()
        self.add(f"![{caption}](figures/{name})")

    def text(self) -> str:
        return "\n".join(self.lines).rstrip() + "\n"


# ---------------------------------------------------------------- how numbers are written

MINUS = "−"  # a real minus sign: "-0.40 pp" reads as a dash in prose, and in a column beside "+0.40 pp"


def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def minus(text: str) -> str:
    """A formatted number with its minus sign written as one."""
    return text.replace("-", MINUS)


def pct(x: Optional[float]) -> str:
    return f"{x:.2f} %" if finite(x) else "—"


def loss(x: Optional[float]) -> str:
    return minus(f"{x:.4f}") if finite(x) else "—"


def pp(ours: Optional[float], lab: Optional[float]) -> str:
    """A difference in percentage points, signed: "+1.20 pp", "−0.40 pp"."""
    return signed(ours - lab, 2, " pp") if finite(ours) and finite(lab) else "—"


def num(x: object) -> str:
    """A count with thousands separators; a float to 4 significant digits, never in exponent notation."""
    if isinstance(x, bool) or x is None:
        return "—" if x is None else str(x)
    if isinstance(x, int):
        return minus(f"{x:,}")
    if isinstance(x, float):
        if not math.isfinite(x):
            return "—"
        return minus(f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.4g}" if abs(x) >= 1e-4 or x == 0 else f"{x:.1e}")
    return str(x)


def signed(x: float, digits: int = 2, unit: str = "") -> str:
    return minus(f"{x:+.{digits}f}{unit}")


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
