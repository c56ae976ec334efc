"""The report composed from its parts, in the order a reader meets them (`PARTS`)."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from pipelines.config import Params
from pipelines.report import (alexnet, curve_diagnosis, header, others, paired, recipes, simple_cnn, timing,
                              transfer)
from pipelines.report.doc import Document, Inputs, Report
from pipelines.report.load import load_data

Part = Callable[[Document, Inputs], None]

# The report after its header, in order. A part writes into the document (headings with an anchor
# appear in the contents) and reads what it needs through `Inputs` and `Document.results`.
PARTS: list[Part] = [
    simple_cnn.section,        # Part 1.1: Simple CNN, more epochs, a cheaper network
    alexnet.section,           # Part 1.2: AlexNet, the lab's overfitting claim
    transfer.section,          # Part 1.3: transfer learning, paired verdicts, separability
    curve_diagnosis.section,   # bias or overfitting of every variant, by one rule
    recipes.section,           # stronger recipes against their baselines
    others.section,            # variants beyond the lab's six
    timing.section,            # where the time went
]


def contents(doc: Document) -> list[str]:
    # Python-Markdown nests a list only under a four-space indent.
    lines = ["## Contents {#contents}", ""]
    lines += [f"{'    ' * (level - 2)}- [{text}](#{anchor})" for level, text, anchor in doc.toc]
    return lines + [""]


def build(params: Params, root: Path, now: Optional[datetime] = None) -> Report:
    """Read every stage output under `root` (docs/outputs.md) and compose the report.

    Raises ReportError when a file exists but has the wrong format; absent files become "not run".
    """
    root = Path(root)
    doc = Document(root)
    src = Inputs(params=params, data={name: load_data(root, name) for name in params.datasets},
                 now=now or datetime.now(timezone.utc), transfer=paired.transfer_comparison(root, params))
    header.section(doc, src)
    warnings_at = len(doc.lines)
    for part in PARTS:
        part(doc, src)
    if doc.warnings:
        # Repeat them under the header: a reader who stops at the top should still see them.
        summary = ["## Warnings {#warnings}", ""] + [f"- {w}" for w in doc.warnings] + [""]
        doc.lines[warnings_at:warnings_at] = summary
        doc.toc.insert(1, (2, "Warnings", "warnings"))
    doc.lines[doc.contents_at:doc.contents_at] = contents(doc)
    title = doc.lines[0].lstrip("# ").strip()
    tables = {"transfer_comparison": (paired.HEADER, src.transfer["rows"])} if src.transfer is not None else {}
    return Report(title=title, markdown=doc.text(), figures=dict(doc.figures), warnings=tuple(doc.warnings),
                  tables=tables)
