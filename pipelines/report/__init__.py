"""The lab's report, assembled from what the stages wrote (docs/outputs.md), in the lab's order.

`build` reads the files and composes Markdown, failing loudly on a file whose format is wrong
and writing "not run" where a variant or a stage's output is absent (a user may run a subset).
`write` puts report.md, a self-contained report.html and figures/ in place, each file atomically.

Modules, in the order the data flows:

- load.py: reads and checks each stage output; `Results` of a variant, `Data` of a dataset.
- doc.py: `Document` (the Markdown being written: headings, lists, tables, figures, warnings), `Inputs`
  (what every part reads), `Report` (the finished report in memory), and how numbers are written
  (pct, pp, num, signed...); pipelines/stats.py does the statistics.
- readings.py: what the lab wrote (data names, prose notes) and what several parts read the same way
  (data used, validation size, diagnosis, baseline). Which variant plays which role in the lab's
  parts is reference.yaml's `parts`.
- variant.py: the subsections every variant gets (sizes, parameters, curves, confusions, t-SNE).
- the parts, one module each: header.py (title, summary, data used), simple_cnn.py (Part 1.1),
  alexnet.py (Part 1.2), transfer.py (Part 1.3 with its paired verdicts), curve_diagnosis.py,
  recipes.py, others.py (variants beyond the lab's), timing.py (where the time went).
- here: `build`, which runs the header and then `PARTS` in order, and adds contents and warnings.
- page.py: the HTML page and `write`; tables.py: the tables and champions the report stage logs to MLflow.

To add a section: write a module here with a function `section(doc: Document, src: Inputs) -> None`
that calls `doc.heading(2, title, anchor)` and then `doc.add`, `doc.table`, `doc.figure` (see
others.py for a short one), and add that function to `PARTS` below where the section belongs.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from pipelines.config import Params
from pipelines.errors import ReportError
from pipelines.report import (alexnet, curve_diagnosis, header, others, recipes, simple_cnn, timing,
                              transfer)
from pipelines.report.doc import Document, Inputs, Report
from pipelines.report.load import load_data
from pipelines.report.page import render_html, write
from pipelines.report.tables import champions, mlflow_tables

__all__ = ["Report", "ReportError", "build", "champions", "mlflow_tables", "render_html", "write"]

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
                 now=now or datetime.now(timezone.utc), transfer=transfer.transfer_comparison(root, params))
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
    tables = {"transfer_comparison": (transfer.HEADER, src.transfer["rows"])} if src.transfer is not None else {}
    return Report(title=title, markdown=doc.text(), figures=dict(doc.figures), warnings=tuple(doc.warnings),
                  tables=tables)
