"""The lab's report, assembled from what the stages wrote (docs/outputs.md), in the lab's order.

`build` reads the files and composes Markdown, failing loudly on a file whose format is wrong
and writing "not run" where a variant or a stage's output is absent (a user may run a subset).
`write` puts report.md, a self-contained report.html and figures/ in place, each file atomically.

Modules, in the order the data flows:

- load.py: reads and checks each stage output; `Results` of a variant, `Data` of a dataset.
- doc.py: `Document` (the Markdown being written: headings, tables, figures, warnings), `Inputs`
  (what every part reads) and `Report` (the finished report in memory).
- fmt.py: how numbers are written (pct, pp, num, signed...); pipelines/stats.py does the statistics.
- lab.py: the lab's variants by part, its data names, its prose notes.
- readings.py: what several parts read the same way (data used, validation size, diagnosis, baseline).
- variant.py: the subsections every variant gets (sizes, parameters, curves, confusions, t-SNE).
- the parts, one module each: header.py (title, summary, data used), simple_cnn.py (Part 1.1),
  alexnet.py (Part 1.2), transfer.py and paired.py (Part 1.3 and its paired verdicts),
  curve_diagnosis.py, recipes.py, others.py (variants beyond the lab's), timing.py (where the time went).
- compose.py: `build`, which runs the header and then `PARTS` in order, and adds contents and warnings.
- page.py: the HTML page and `write`; tables.py: the tables and champions the report stage logs to MLflow.

To add a section: write a module here with a function `section(doc: Document, src: Inputs) -> None`
that calls `doc.heading(2, title, anchor)` and then `doc.add`, `doc.table`, `doc.figure` (see
others.py for a short one), and add that function to `PARTS` in compose.py where the section belongs.
"""
from __future__ import annotations

from pipelines.errors import ReportError
from pipelines.report.compose import build
from pipelines.report.doc import Report
from pipelines.report.page import render_html, write
from pipelines.report.tables import champions, mlflow_tables

__all__ = ["Report", "ReportError", "build", "champions", "mlflow_tables", "render_html", "write"]
