"""Where the time went: each stage's seconds as its metrics recorded them (train with its replicates,
evaluate, embed), as a table with shares and as the whole-run time the summary opens with."""
from __future__ import annotations

from typing import Optional

from pipelines.report.doc import Document, Inputs
from pipelines.report.load import Results, load_replicates

TimeRow = tuple[str, float, Optional[float], Optional[float]]   # stage, seconds, img/s, achieved GFLOP/s


def time_rows(name: str, r: Results) -> list[TimeRow]:
    """(stage, seconds, img/s, achieved GFLOP/s) of one run's stages, from the metrics they wrote."""
    rows = []
    t = r.train
    if t is not None:
        # Older metrics lack the stage's own wall time: their training seconds stand in for it.
        secs = t.get("seconds", t.get("train_seconds_here", t.get("train_seconds", 0.0)))
        ips = t.get("train_img_per_s")
        flops = t.get("flops_per_image")
        rows.append((f"train@{name}", secs, ips, 3 * flops * ips / 1e9 if flops and ips else None))
    if r.eval is not None and "seconds" in r.eval:
        rows.append((f"evaluate@{name}", r.eval["seconds"], r.eval.get("img_per_s"), None))
    if r.embed is not None and "seconds" in r.embed:
        rows.append((f"embed@{name}", r.embed["seconds"], r.embed["points"] / r.embed["seconds"]
                     if r.embed["seconds"] else None, None))
    return rows


def stage_times(doc: Document, src: Inputs) -> list[TimeRow]:
    """time_rows of every variant and every replicate run present."""
    rows = []
    for v in src.params.variants:
        rows += time_rows(v, doc.results(v))
        for t in load_replicates(doc.root, src.params, v)[0]:
            rows += time_rows(f"{v}-{t['seed']}", Results(t, None, None, None, None, None, {}))
    return rows


def run_time(doc: Document, src: Inputs) -> Optional[str]:
    """Whole-run time as the stages recorded it in metrics/: train (with replicates), evaluate, embed."""
    kinds = {"train": "training", "evaluate": "evaluation", "embed": "embedding"}
    spent = {kind: [0.0, 0] for kind in kinds.values()}
    for stage, sec, _, _ in stage_times(doc, src):
        if sec:  # a stage that recorded no time is not counted as one
            kind = spent[kinds[stage.split("@")[0]]]
            kind[0] += sec
            kind[1] += 1
    total = sum(sec for sec, _ in spent.values())
    if not total:
        return None
    h, rest = divmod(int(round(total)), 3600)
    parts = ", ".join(f"{kind} {sec / 60:.1f} min ({k} stage{'s' if k != 1 else ''})" for kind, (sec, k) in spent.items() if k)
    return (f"**Whole-run time: {h}:{rest // 60:02d}:{rest % 60:02d}** (h:mm:ss), the sum of the times the stages "
            f"recorded in `metrics/`: {parts}. Not counted: download, preprocess, the report, process start-up.")


def section(doc: Document, src: Inputs) -> None:
    """Where the time went: each stage's seconds as its metrics recorded them, and their share."""
    rows = stage_times(doc, src)
    doc.heading(2, "Where the time went", "time")
    if not rows:
        doc.not_run("no stage metrics with timings under metrics/")
        return
    total = sum(s for _, s, _, _ in rows) or 1.0
    rows.sort(key=lambda row: -row[1])
    doc.table(["stage", "seconds", "share", "img/s", "achieved GFLOP/s (training: 3x forward)"],
              [(f"`{n}`", f"{s:,.1f}", f"{100 * s / total:.1f} %", "—" if i is None else f"{i:,.0f}",
                "—" if g is None else f"{g:,.1f}") for n, s, i, g in rows], right=(1, 2, 3, 4))
    doc.add(f"Sum of these stages: {total:,.0f} s ({total / 60:.1f} min). Download, preprocess and this report "
            "are not timed here (seconds each on packaged data). The machine's measured peak, and each path's "
            "% of it, come from `make benchmark` (README, \"Speed\").")
