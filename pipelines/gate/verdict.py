"""The gate's judgement: its settings (reference.yaml `check:`, the base's own), each gated metric
against the base, and the Markdown summary CI shows."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import yaml
from pydantic import ValidationError

from pipelines import config, reference, yamlfile
from pipelines.errors import CheckError
from pipelines.gate.repo import Stage, git
from pipelines.gate.rerun import Outcome
from pipelines.reference import Check


def _num(x) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" if isinstance(x, float) else str(x)


def _val(x) -> str:
    return "—" if x is None else json.dumps(x)


def load_gate(root: Path, base_sha: str, head: config.Params) -> tuple[Optional[Check], str]:
    """(the gate, where it comes from): the base's `check:` when it has one, so that a pull request
    cannot loosen its own gate; otherwise the head's."""
    try:
        base_raw = yaml.safe_load(git(["show", f"{base_sha}:{reference.NAME}"], root)) or {}
    except CheckError:
        base_raw = {}
    if isinstance(base_raw, dict) and base_raw.get("check") is not None:
        try:
            return Check.model_validate(base_raw["check"]), f"the base's {reference.NAME}"
        except ValidationError as err:  # a broken gate on the base must not silently pass everything
            e = err.errors()[0]
            loc = ".".join(["check", *map(str, e["loc"])])
            raise config.ParamsError(yamlfile.one_line(f"base {reference.NAME}", e, loc)) from None
    return head.check, reference.NAME


def judge(gate: Optional[Check], diff: dict[str, dict], rerun_metrics: set[str],
          declared_metrics: set[str]) -> tuple[list[tuple], list[str], list[str]]:
    """(rows, failures, notes) for the gated metrics."""
    rows, failures, notes = [], [], []
    if gate is None:
        notes.append("no `check:` section: no metric is gated")
        return rows, failures, notes
    for m in gate.metrics:
        path = m.split(":", 1)[0]
        if path not in declared_metrics:
            failures.append(f"{m}: no stage writes {path} (fix {reference.NAME} check.metrics)")
            continue
        if path not in rerun_metrics:
            continue
        d = diff.get(m, {})
        old, new = d.get("old"), d.get("new")
        if new is None:
            failures.append(f"{m} is missing after the rerun")
            rows.append((m, old, new, None, "FAIL"))
        elif old is None:
            notes.append(f"{m}: the base has no committed value; not judged")
            rows.append((m, old, new, None, "no base"))
        else:
            change = new - old
            bad = -change > gate.tolerance_pp + 1e-9
            if bad:
                failures.append(f"{m} dropped {-change:.2f} pp ({old:.2f} -> {new:.2f}), "
                                f"beyond the {gate.tolerance_pp:g} pp tolerance")
            rows.append((m, old, new, change, "FAIL" if bad else "ok"))
    return rows, failures, notes


def compare(outcome: Outcome, stages: dict[str, Stage], gate: Optional[Check], diff: dict[str, dict]
            ) -> tuple[list[tuple], list[tuple], list[str], list[str]]:
    """(accuracy rows, gated rows, failures, notes) of a successful rerun, from `dvc metrics diff`."""
    acc_rows = []
    rerun_metrics = {m for s in outcome.ran for m in stages[s].metrics}
    for k, v in sorted(diff.items()):
        path, key = k.split(":", 1)
        if path in rerun_metrics and "acc" in key.lower():
            acc_rows.append((k, v.get("old"), v.get("new"), v.get("diff")))
    gate_rows, failures, notes = judge(gate, diff, rerun_metrics, {m for s in stages.values() for m in s.metrics})
    return acc_rows, gate_rows, failures, notes


def verdict_line(failures: list[str], gate: Optional[Check], gate_rows: list[tuple]) -> str:
    if failures:
        return "**Verdict: FAIL** — " + "; ".join(failures)
    return "**Verdict: OK** — " + (f"every gated metric within {gate.tolerance_pp:g} pp of the base"
                                   if gate_rows else "no gated metric was affected")


def summary_md(base: str, base_sha: str, profile: str, pdiff: dict, why: dict, left_out: list[str],
               outcome: Optional[Outcome], acc_rows: list[tuple], gate_rows: list[tuple], gate_from: str,
               gate: Optional[Check], verdict: str, notes: list[str]) -> str:
    L = [f"## Params check against `{base}` ({base_sha[:8]}), {profile} profile", ""]
    if pdiff:
        L += ["| param | base | head |", "|---|---|---|"]
        L += [f"| `{k}` | {_val(v.get('old'))} | {_val(v.get('new'))} |" for k, v in sorted(pdiff.items())]
    else:
        L.append("No params changed.")
    L.append("")
    if why:
        L.append("Rerun: " + ", ".join(f"`{s}` ({'; '.join(r)})" for s, r in why.items()))
        if left_out:
            L.append(f"Not rerun (write no metrics): {', '.join(f'`{s}`' for s in left_out)}")
    else:
        L.append("Rerun: nothing (no stage reads a changed param or file)")
    if outcome:
        L.append(f"Baseline: {outcome.baseline}.")
    L.append("")
    if acc_rows:
        L += ["| metric | base | head | change (pp) |", "|---|---|---|---|"]
        L += [f"| `{m}` | {_num(o)} | {_num(n)} | {_num(c) if c is None else f'{c:+.2f}'} |"
              for m, o, n, c in acc_rows]
        L.append("")
    if gate_rows:
        L.append(f"Gate (from {gate_from}): no drop beyond {gate.tolerance_pp:g} pp")
        L += ["", "| gated metric | base | head | change (pp) | |", "|---|---|---|---|---|"]
        L += [f"| `{m}` | {_num(o)} | {_num(n)} | {'—' if c is None else f'{c:+.2f}'} | {s} |"
              for m, o, n, c, s in gate_rows]
        L.append("")
    L += [f"- {n}" for n in notes]
    if notes:
        L.append("")
    L.append(verdict)
    return "\n".join(L) + "\n"
