"""The top of the report: title and run facts, the summary (data that ran, every variant's accuracy
beside the lab's, the transfer verdicts, the whole-run time) and the data each part used."""
from __future__ import annotations

from pipelines import io
from pipelines.report.doc import Document, Inputs, finite, mean_cell, pct, pp
from pipelines.report.load import is_kind, load_replicates
from pipelines.report.readings import accuracy, data_used, lab_baseline
from pipelines.report.timing import run_time


def section(doc: Document, src: Inputs) -> None:
    """Title, run facts and summary; the contents go after the summary (`doc.contents_at`), then the data used."""
    params = src.params
    commit = io.git_commit(doc.root, short=True)
    doc.heading(1, "Image classification, CNN architectures, transfer learning: the lab reproduced")
    doc.add(f"- Protocol: **{params.protocol}**"
            + (" (packaged offline data instead of the lab's downloads)" if params.protocol == "offline" else ""),
            f"- Generated: {src.now.strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Code version: git `{commit}`" if commit else "- Code version: unknown (not a git checkout)",
            f"- Seed: {params.seed}",
            *[f"- Your own images: `{name}` from `{ds.own_folder}` (whatever the protocol)"
              for name, ds in params.datasets.items() if ds.own_folder])
    summary(doc, src)
    doc.contents_at = len(doc.lines)
    data_used_part(doc, src)


def test_cell(doc: Document, src: Inputs, variant: str) -> str:
    """Held-out test accuracy of a variant: its own run, or mean ± std over its seeds."""
    r = doc.results(variant)
    runs = ([r.train] if r.train is not None else []) + load_replicates(doc.root, src.params, variant)[0]
    test = [t["test_acc"] for t in runs if finite(t.get("test_acc"))]
    if not test and r.eval is not None and finite(r.eval.get("test_accuracy")):
        test = [r.eval["test_accuracy"]]
    return mean_cell(test) + (f" (n = {len(test)})" if len(test) > 1 else "") if test else "—"


def summary(doc: Document, src: Inputs) -> None:
    params, transfer = src.params, src.transfer
    doc.heading(2, "Summary", "summary")
    lines = []
    for name, d in src.data.items():
        if d.meta is None or not any(v.dataset == name for v in params.variants.values()):
            continue
        used, _, same = data_used(params, name, d)
        splits = d.meta.get("splits") if isinstance(d.meta.get("splits"), dict) else {}
        sizes = ", ".join(f"{k} {n:,}" for k, n in splits.items() if is_kind(n, "int"))
        lines.append(f"- `{name}`: {used}" + (f"; {sizes} images" if sizes else "")
                     + ("" if same else " (not the lab's data: comparisons with the lab are indicative)"))
    doc.add("**Data that ran:**", *(lines or ["- nothing prepared yet"]))
    rows = []
    for v in params.variants:
        r = doc.results(v)
        ours = accuracy(r) if r.ran else None
        base, lab = lab_baseline(params, v)
        lab_txt = "—" if base is None else pct(lab) + ("" if base == v else f" (`{base}`)")
        rows.append((f"`{v}`", f"`{params.variants[v].dataset}`", pct(ours) if r.ran else "not run",
                     test_cell(doc, src, v), lab_txt, pp(ours, lab)))
    doc.table(["variant", "dataset", "best validation accuracy", "held-out test accuracy", "lab", "ours − lab"],
              rows, right=(2, 3, 4, 5))
    if transfer is not None:
        doc.add(f"**Transfer-learning verdicts** ({transfer['n']:,} held-out test images, paired; "
                "[the table and the rule](#tl-noise)):",
                *[f"- {row[-1]}" if " beats " in row[-1] else f"- {row[0]}: {row[-1]}" for row in transfer["rows"]])
    elif not any(doc.results(v).ran for v in params.reference.parts.transfer if v in params.variants):
        doc.add("**Transfer-learning verdicts:** not run: no transfer option has results "
                "(`python -m pipelines.cli.repro --part transfer`).")
    else:
        doc.add("**Transfer-learning verdicts:** none: no per-image test predictions were found "
                "(`results/<variant>/evaluate/test_predictions.csv`; the dataset needs a `test_limit`).")
    doc.add(run_time(doc, src) or "**Whole-run time:** unknown (no stage has recorded its time yet).")


def data_used_part(doc: Document, src: Inputs) -> None:
    """Which data each part of the lab ran on, against the lab's, and whether the comparison holds."""
    params, data = src.params, src.data
    doc.heading(2, "Data used", "data-used")
    roles = params.reference.parts
    parts = [("1.1 Simple CNN", roles.simple_cnn), ("1.2 AlexNet", roles.alexnet),
             ("1.3 transfer learning", next(iter(roles.transfer), None))]
    rows, differ = [], False
    for part, variant in parts:
        if variant is None:
            rows.append((part, "—", "no variant in reference.yaml `parts`", "—", "—"))
            continue
        if variant not in params.variants:
            rows.append((part, "—", "not in params.yaml", "—", "—"))
            continue
        name = params.variants[variant].dataset
        used, lab, same = data_used(params, name, data[name])
        differ |= not same and data[name].meta is not None
        verdict = "same data" if same else ("—" if data[name].meta is None else "different data: indicative only")
        rows.append((part, f"`{name}`", used, lab, verdict))
    doc.table(["part", "dataset", "data used here", "the lab used", "comparison with the lab"], rows)
    if differ:
        doc.add("Where the data differ from the lab's, the lab's numbers are printed beside ours for orientation "
                "only: a difference says nothing about which recipe is better.")
    for name, d in data.items():
        if d.meta is not None and d.meta["protocol"] != params.protocol:
            doc.warn(f"data/prepared/{name}/meta.json was prepared under protocol `{d.meta['protocol']}` but "
                     f"params.yaml says `{params.protocol}`; rerun its preprocess stage")
