"""Where the time went: each stage's seconds as its metrics recorded them (train with its replicates,
evaluate, embed), as a table with shares and as the whole-run time the summary opens with."""
from __future__ import annotations

from typing import NamedTuple, Optional

from pipelines.report.doc import Document, Inputs
from pipelines.report.load import Results, load_replicates


class TimeRow(NamedTuple):
    stage: str
    seconds: float
    img_per_s: Optional[float]
    gflop_per_s: Optional[float]     # arithmetic achieved (training: x3 for a gradient step)
    pct_of_peak: Optional[float]     # of the peak the train stage measured before it started
    floor: Optional[float]           # the stage's arithmetic at that peak, in seconds
    clock: Optional[dict] = None     # the stage process's start, body start and end (epoch seconds)


def time_rows(name: str, r: Results) -> list[TimeRow]:
    """One TimeRow per stage of a run, from the metrics its stages wrote. The evaluate row is judged
    against the peak its train stage measured: the same device, minutes apart."""
    rows = []
    t = r.train or {}
    peak = t.get("peak_gflop_per_s")
    flops = t.get("flops_per_image")
    if r.train is not None:
        # Older metrics lack the stage's own wall time: their training seconds stand in for it.
        secs = t.get("seconds", t.get("train_seconds_here", t.get("train_seconds", 0.0)))
        ips = t.get("train_img_per_s")
        gflops = t.get("train_gflop_per_s", 3 * flops * ips / 1e9 if flops and ips else None)
        rows.append(TimeRow(f"train@{name}", secs, ips, gflops, t.get("train_pct_of_peak"), t.get("floor_seconds"),
                            t.get("clock")))
    if r.eval is not None and "seconds" in r.eval:
        ips = r.eval.get("img_per_s")
        gflops = flops * ips / 1e9 if flops and ips else None
        rows.append(TimeRow(f"evaluate@{name}", r.eval["seconds"], ips, gflops,
                            100 * gflops / peak if gflops and peak else None,
                            flops * r.eval["n"] / 1e9 / peak if flops and peak and r.eval.get("n") else None,
                            r.eval.get("clock")))
    if r.embed is not None and "seconds" in r.embed:
        rows.append(TimeRow(f"embed@{name}", r.embed["seconds"], r.embed["points"] / r.embed["seconds"]
                            if r.embed["seconds"] else None, None, None, None, r.embed.get("clock")))
    return rows


def stage_times(doc: Document, src: Inputs) -> list[TimeRow]:
    """time_rows of every variant and every replicate run present."""
    rows = []
    for v in src.params.variants:
        rows += time_rows(v, doc.results(v))
        for t in load_replicates(doc.root, src.params, v)[0]:
            rows += [row._replace(stage=f"replicate@{v}-{t['seed']}")
                     for row in time_rows(f"{v}-{t['seed']}", Results(t, None, None, None, None, None, {}))]
    return rows


def run_time(doc: Document, src: Inputs) -> Optional[str]:
    """Whole-run time as the stages recorded it in metrics/: train (with replicates), evaluate, embed."""
    kinds = {"train": "training", "replicate": "training", "evaluate": "evaluation", "embed": "embedding"}
    spent = {kind: [0.0, 0] for kind in kinds.values()}
    for stage, sec, *_ in stage_times(doc, src):
        if sec:  # a stage that recorded no time is not counted as one
            kind = spent[kinds[stage.split("@")[0]]]
            kind[0] += sec
            kind[1] += 1
    total = sum(sec for sec, _ in spent.values())
    if not total:
        return None
    h, rest = divmod(int(round(total)), 3600)
    parts = ", ".join(f"{kind} {sec / 60:.1f} min ({k} stage{'s' if k != 1 else ''})" for kind, (sec, k) in spent.items() if k)
    missing = [v for v in src.params.variants if not doc.results(v).ran]
    label = "Whole-run time" if not missing else f"Time of the stages that ran ({len(missing)} of " \
                                                  f"{len(src.params.variants)} variants have not run)"
    return (f"**{label}: {h}:{rest // 60:02d}:{rest % 60:02d}** (h:mm:ss), the sum of the times the stages "
            f"recorded in `metrics/`: {parts}. Not counted: download, preprocess, the report, process start-up.")


def section(doc: Document, src: Inputs) -> None:
    """Where the time went: each stage's seconds as its metrics recorded them, and their share."""
    rows = stage_times(doc, src)
    doc.heading(2, "Where the time went", "time")
    if not rows:
        doc.not_run("no stage metrics with timings under metrics/")
        return
    total = sum(row.seconds for row in rows) or 1.0
    rows.sort(key=lambda row: -row.seconds)

    def num(x: Optional[float], fmt: str) -> str:
        return "—" if x is None else format(x, fmt)

    doc.table(["stage", "seconds", "share", "img/s", "achieved GFLOP/s", "% of peak", "floor s"],
              [(f"`{r.stage}`", f"{r.seconds:,.1f}", f"{100 * r.seconds / total:.1f} %", num(r.img_per_s, ",.0f"),
                num(r.gflop_per_s, ",.1f"), num(r.pct_of_peak, ".1f"), num(r.floor, ",.1f")) for r in rows],
              right=(1, 2, 3, 4, 5, 6))
    doc.add(f"Sum of these stages: {total:,.0f} s ({total / 60:.1f} min). Download, preprocess and this report "
            "are not timed here (seconds each on packaged data).")
    floored = [r for r in rows if r.floor]
    if floored:
        spent, floor = sum(r.seconds for r in floored), sum(r.floor for r in floored)
        peaks = [t["peak_gflop_per_s"] for v in src.params.variants
                 for t in [doc.results(v).train or {}] if t.get("peak_gflop_per_s")]
        lo, hi = (f"{min(peaks):,.0f}", f"{max(peaks):,.0f}") if peaks else ("unknown", "unknown")
        seen = lo if lo == hi else f"{lo} to {hi}"
        doc.add(f"**Floor**: the {len(floored)} stages with a floor did {floor:,.1f} s of arithmetic at the peak "
                f"(a matrix product each train stage timed before it started, in the precision it ran: {seen} "
                f"GFLOP/s) and took {spent:,.1f} s, **{spent / floor:.1f}x** their floor. "
                "Training counts three forward passes per image (the backward pass about two); t-SNE, the SVM "
                "fit, start-up and I/O have no floor here. `make benchmark` measures convolution peaks and "
                "per-layer times beside it (README, \"Speed\").")
    outside_section(doc, rows)


# A gap longer than this between one stage's metrics and the next stage's process start is not DVC's
# bookkeeping: the earlier stage ran in an earlier `dvc repro`, or an unclocked stage ran between.
GAP_LIMIT_S = 60.0


class Outside(NamedTuple):
    stage: str
    wall: float          # process start to its metrics written
    startup: float       # process start to body start: interpreter, imports
    body: float          # body start to metrics written
    gap: Optional[float]  # the previous clocked stage's metrics to this process's start; None: not this run


def outside_rows(rows: list[TimeRow]) -> list[Outside]:
    """Each clocked stage's time outside its body, in the order the stages started. The gap before a
    stage runs from the previous stage's metrics to this stage's process start: the previous process's
    exit (MLflow closing its run), DVC hashing and caching its outputs, DVC starting this one."""
    clocked = sorted((r for r in rows if r.clock), key=lambda r: r.clock["process_start_epoch_seconds"])
    out, prev_end = [], None
    for r in clocked:
        c = r.clock
        start, body, end = (c["process_start_epoch_seconds"], c["body_start_epoch_seconds"], c["end_epoch_seconds"])
        gap = start - prev_end if prev_end is not None and 0 <= start - prev_end <= GAP_LIMIT_S else None
        out.append(Outside(r.stage, end - start, max(body - start, 0.0), end - body, gap))
        prev_end = end
    return out


def outside_section(doc: Document, rows: list[TimeRow]) -> None:
    """Per stage, the time outside its body: start-up before it, and the gap before its process."""
    out = outside_rows(rows)
    if not out:
        return
    startup = sum(o.startup for o in out)
    gaps = [o.gap for o in out if o.gap is not None]
    total = startup + sum(gaps)
    doc.heading(3, "Outside the stages' work", "time-outside")
    doc.add(f"**{total:,.0f} s outside the {len(out)} clocked stages' bodies**: {startup:,.0f} s of process "
            f"start-up before the body (interpreter, imports; {startup / len(out):.1f} s a stage) and "
            f"{sum(gaps):,.0f} s between one stage's metrics and the next stage's process "
            f"({len(gaps)} gaps: the process's exit with MLflow closing its run, DVC hashing and caching the "
            f"outputs, DVC starting the next). Each stage records its process start, body start and end in "
            f"its metrics (`clock`). Not counted: the data stages, the report, and gaps longer than "
            f"{GAP_LIMIT_S:.0f} s (an earlier run's stage, or an unclocked stage, came before).")
    out.sort(key=lambda o: -(o.startup + (o.gap or 0.0)))
    doc.table(["stage", "process s", "start-up s", "body s", "gap before s", "outside the body s"],
              [(f"`{o.stage}`", f"{o.wall:,.1f}", f"{o.startup:,.1f}", f"{o.body:,.1f}",
                "—" if o.gap is None else f"{o.gap:,.1f}", f"{o.startup + (o.gap or 0.0):,.1f}") for o in out],
              right=(1, 2, 3, 4, 5))
