"""The Markdown summary of a check, as a reviewer reads it: the gated metrics' table and the verdict
first, then the params diff, what was rerun and on what baseline, and the rerun log collapsed."""
from __future__ import annotations

import json
from typing import Optional

from pipelines import stats
from pipelines.gate.rerun import Outcome
from pipelines.gate.verdict import Row


def _pct(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.2f}"


def _val(x) -> str:
    return "—" if x is None else json.dumps(x)


def gate_table(rows: list[Row], tolerance: float, gate_from: str) -> list[str]:
    L = [f"Gate (from {gate_from}): a gated metric fails when it drops beyond noise (95 %, Holm over the "
         f"{len(rows)} judged here) and by more than {tolerance:g} pp.", "",
         "| gated metric | base → head (%) | difference, 95 % interval (pp) | p (Holm) | verdict | detectable (pp) |",
         "|---|---|---|---|---|---|"]
    for r in rows:
        diff = "—" if r.diff is None else f"{r.diff:+.2f}" + ("" if r.lo is None else f" [{r.lo:+.2f}, {r.hi:+.2f}]")
        p = "—" if r.p is None else f"{stats.p_value(r.p)} ({stats.p_value(r.p_holm)})"
        verdict = ("**FAIL**: " if r.fail else "") + r.verdict + (" ⚠ blind" if r.blind and not r.fail else "")
        L.append(f"| `{r.metric}` | {_pct(r.base)} → {_pct(r.head)} | {diff} | {p} | {verdict} | "
                 f"{_pct(r.detectable)} |")
    L += [""] + [f"- `{r.metric}`: {r.how}" for r in rows if r.how] + [""]
    return L


# long: the summary's sections in the order a reviewer reads them
def summary_md(base: str, base_sha: str, profile: str, pdiff: dict, why: dict, left_out: dict[str, list[str]],
               outcome: Optional[Outcome], rows: list[Row], gate_from: str, tolerance: Optional[float],
               verdict: str, notes: list[str], seconds: float) -> str:
    L = [f"## Params check against `{base}` ({base_sha[:8]}), {profile} profile", ""]
    if rows:
        L += gate_table(rows, tolerance, gate_from)
    L += [verdict, ""]
    L += [f"- {n}" for n in notes] + ([""] if notes else [])
    if pdiff:
        L += ["| param | base | head |", "|---|---|---|"]
        L += [f"| `{k}` | {_val(v.get('old'))} | {_val(v.get('new'))} |" for k, v in sorted(pdiff.items())]
    else:
        L.append("No params changed.")
    L.append("")
    if why:
        L.append("Rerun: " + ", ".join(f"`{s}` ({'; '.join(r)})" for s, r in why.items()))
    else:
        L.append("Rerun: nothing (no stage reads a changed param or file)")
    for reason, names in left_out.items():
        if names:
            L.append(f"Not rerun ({reason}): {', '.join(f'`{s}`' for s in names)}")
    if outcome:
        L.append(f"Baseline: {outcome.baseline}.")
    L += ["", f"Wall time of the check: {seconds:.0f} s.", ""]
    if outcome:
        others = sorted(k for k in outcome.metrics.get("head", {})
                        if "acc" in k.split(":", 1)[1].lower() and k not in {r.metric for r in rows})
        if others:
            L += ["<details><summary>Other accuracies of the rerun stages (one run each, not judged)</summary>", "",
                  "| metric | base | head |", "|---|---|---|"]
            L += [f"| `{k}` | {_pct(outcome.metrics.get('base', {}).get(k))} | {_pct(outcome.metrics['head'][k])} |"
                  for k in others]
            L += ["", "</details>", ""]
        if outcome.log:
            L += ["<details><summary>Rerun log</summary>", "", "```", *outcome.log, "```", "", "</details>", ""]
    return "\n".join(L).rstrip("\n") + "\n"
