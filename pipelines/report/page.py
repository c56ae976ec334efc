"""The report on disk: a self-contained report.html (figures inlined, no external resource) rendered
from the Markdown, and `write`, which puts report.md, report.html and figures/ in place atomically."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import markdown

from pipelines.errors import ReportError
from pipelines.io import write_bytes, write_text
from pipelines.report.doc import Report

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; line-height: 1.5; color: #1a1a1a;
       max-width: 72rem; margin: 2rem auto; padding: 0 1rem; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2.5rem; }
h3 { margin-top: 2rem; } h4 { margin-top: 1.5rem; color: #333; }
table { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; vertical-align: top; }
th { background: #f3f3f3; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
td[style*="right"] { font-variant-numeric: tabular-nums; white-space: nowrap; }
th { font-size: .85rem; }
img { max-width: 100%; height: auto; display: block; margin: 1rem 0; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 .2rem; border-radius: 3px; }
blockquote { border-left: 4px solid #d9822b; background: #fff6ec; margin: 1rem 0; padding: .3rem 1rem; }
#contents + ul { columns: 2; column-gap: 2rem; background: #f7f9fc; padding: .8rem 1rem .8rem 2rem;
                 border: 1px solid #dde3ec; }
#contents + ul ul { margin: 0; }
#contents + ul > li { break-inside: avoid; }   /* a part and its subsections stay in one column */
#self-check { background: #fde8e8; border: 1px solid #c0392b; padding: .5rem 1rem; }
"""

# Runs in the reader's browser (and in tests/test_report_browser.py): did every inlined figure
# decode, and which sections exist. It touches nothing outside the page: the HTML stays
# self-contained. A failure is shown to the reader too, not only recorded for the test.
SELF_CHECK = """
<div id="self-check" hidden></div>
<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); })
                   .map(function (im) { return im.alt; });
  var ids = Array.prototype.map.call(document.querySelectorAll("h1[id], h2[id], h3[id], h4[id]"),
                                     function (h) { return h.id; });
  document.body.dataset.selfCheck = JSON.stringify({images: imgs.length, broken: broken, sections: ids});
  document.body.dataset.imagesOk = broken.length === 0 ? "yes" : "no";
  if (broken.length) {
    var box = document.getElementById("self-check");
    box.textContent = broken.length + " figure(s) failed to load: " + broken.join("; ");
    box.hidden = false;
    document.body.insertBefore(box, document.body.firstChild);
  }
});
</script>
"""


def render_html(report: Report) -> str:
    """One self-contained HTML page: figures inlined as data URIs, no external resource at all."""
    body = markdown.markdown(report.markdown, extensions=["tables", "attr_list"], output_format="html")

    def inline(m: re.Match) -> str:
        name = html.unescape(m.group(1))
        if name not in report.figures:
            raise ReportError(f"report links figures/{name}, which it does not hold")
        return 'src="data:image/png;base64,' + base64.b64encode(report.figures[name]).decode("ascii") + '"'

    body = re.sub(r'src="figures/([^"]+)"', inline, body)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n{body}\n{SELF_CHECK}</body>\n</html>\n")


def write(report: Report, out_dir: Path | str) -> None:
    """Write out_dir/report.md, out_dir/report.html and out_dir/figures/*.png, each atomically.

    Figures go first, so a report file never links a figure that is not yet there; figures of an
    earlier run that this report no longer shows are removed last. Only figures/ is cleared,
    so a mistaken --out never deletes anything but report outputs.
    """
    out_dir = Path(out_dir)
    figures = out_dir / "figures"
    for name, data in report.figures.items():
        write_bytes(figures / name, data)
    page = render_html(report)
    write_text(out_dir / "report.md", report.markdown)
    write_text(out_dir / "report.html", page)
    if figures.is_dir():
        for p in figures.iterdir():
            stale_png = p.suffix == ".png" and p.name not in report.figures
            crashed_tmp = p.name.startswith(".") and p.suffix == ".tmp"   # left by a killed atomic write
            if p.is_file() and (stale_png or crashed_tmp):
                p.unlink()
