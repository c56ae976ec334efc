"""The gate's judgement: its settings (reference.yaml `check:`, the base's own), each gated metric
against the base (better, worse, or no difference detectable, with Holm over the gated metrics),
and the verdict line (pipelines/gate/summary.py writes the rest of the summary)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from pydantic import ValidationError

from pipelines import config, reference, stats, yamlfile
from pipelines.errors import CheckError
from pipelines.gate import noise
from pipelines.gate.evidence import Runs
from pipelines.gate.repo import Stage, git
from pipelines.gate.rerun import Outcome
from pipelines.reference import Check

BETTER, WORSE, SAME = "better", "worse", "no difference detectable"
# The evaluate metrics judged on per-image results, with the metrics key of their image count.
PER_IMAGE = {"accuracy": "n", "test_accuracy": "test_n"}


@dataclass
class Row:
    """One gated metric judged: values in percent, differences in pp (head - base)."""
    metric: str
    base: Optional[float]
    head: Optional[float]
    verdict: str
    diff: Optional[float] = None
    lo: Optional[float] = None
    hi: Optional[float] = None
    p: Optional[float] = None
    p_holm: Optional[float] = None
    detectable: Optional[float] = None
    how: str = ""           # paired or not, runs per side, the seed spread
    blind: bool = False     # cannot see a drop of the tolerance's size
    fail: bool = False


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


def compared(base: Runs, head: Runs, alpha: float) -> dict:
    """noise.runs_compared on the two sides' runs: paired when both have per-image results on the
    same images (the same digest, the same count), else unpaired; noise.draws_compared on the runs'
    accuracies where the runs redrew the data (every run its own draw: Welch's t)."""
    if (base.redrawn or head.redrawn) and base.correct and head.correct:
        acc = [[float(np.mean(c)) * 100 for c in r.correct] for r in (base, head)]
        n = [min(len(c) for c in r.correct) for r in (base, head)]
        r = noise.draws_compared(acc[0], acc[1], n[0], n[1], alpha=alpha)
        kb, kh = r["runs"]
        how = f"unpaired, each run its own draw of the data ({r['n']:,} images a run), {kb} + {kh} runs"
        if r["sd_base"] is None and r["sd_head"] is None:
            how += ", draw-and-seed spread not measured"
        else:
            how += ", draw-and-seed sd " + " / ".join("—" if x is None else f"{x:.2f}" for x in (r["sd_base"], r["sd_head"])) \
                + " pp (base / head)"
        if r["floored"]:
            how += "; the runs agree more closely than their images' binomial variance allows, which stands in"
        return {**r, "how": how}
    paired = (bool(base.correct) and bool(head.correct) and base.images is not None
              and base.images == head.images and len(base.correct[0]) == len(head.correct[0]))
    r = noise.runs_compared(base.vectors(), head.vectors(), paired=paired, alpha=alpha)
    kb, kh = r["runs"]
    how = ("paired (McNemar)" if paired and kb == kh == 1 else "paired" if paired else "unpaired") + \
        f" on {r['n']:,} images"
    if base.deterministic and head.deterministic and kb == kh == 1:
        # Nothing to measure: each side's every seed fits its one model (config.Variant.deterministic).
        return {**r, "seed_sd": 0.0, "how": how + ", one fit per side (every seed gives the same model)"}
    how += f", {kb} + {kh} runs"
    how += f", seed sd {r['seed_sd']:.2f} pp" if r["seed_sd"] is not None else ", seed spread not measured"
    return {**r, "how": how}


def classify(rows: list[Row], tolerance: float, alpha: float = stats.ALPHA) -> None:
    """Holm's adjustment over the rows with a p, then each row's verdict (in place): better or worse
    where the adjusted p is below alpha, else no difference detectable; FAIL for a drop that is both
    beyond noise and larger than the tolerance; blind where the check could not see a drop of the
    tolerance's size (its detectable difference is larger) or the seed spread went unmeasured."""
    tested = [r for r in rows if r.p is not None]
    for r, adj in zip(tested, noise.holm([r.p for r in tested])):
        r.p_holm = adj
        if adj < alpha:
            r.verdict = BETTER if r.diff > 0 else WORSE
            r.fail = r.diff < 0 and -r.diff > tolerance + 1e-9
        else:
            r.verdict = SAME
            r.blind = r.detectable > tolerance or "spread not measured" in r.how


# long: one rule per case of a gated metric, in the order a reader checks them
def judge(gate: Optional[Check], outcome: Outcome, dag: dict[str, Stage]) -> tuple[list[Row], list[str], list[str]]:
    """(rows, failures, notes) for the gated metrics whose stage was rerun."""
    rows, failures, notes = [], [], []
    if gate is None:
        notes.append("no `check:` section: no metric is gated")
        return rows, failures, notes
    writers = {m: s for s in dag.values() for m in s.metrics}
    todo = []
    for m in gate.metrics:
        path, key = m.split(":", 1)
        st = writers.get(path)
        if st is None:
            failures.append(f"{m}: no stage writes {path} (fix {reference.NAME} check.metrics)")
        elif st.name in outcome.ran:
            todo.append((m, key, st))
    alpha = stats.ALPHA / max(len(todo), 1)   # Holm's first step: what the detectable sizes are for
    for m, key, st in todo:
        old, new = outcome.metrics.get("base", {}).get(m), outcome.metrics.get("head", {}).get(m)
        hr, br = outcome.runs.get("head", {}).get(st.name), outcome.runs.get("base", {}).get(st.name)
        if new is None:
            failures.append(f"{m} is missing after the rerun")
            rows.append(Row(m, old, new, "missing", fail=True))
        elif old is None:
            notes.append(f"{m}: the base has no value; not judged")
            rows.append(Row(m, old, new, "no base"))
        elif key in PER_IMAGE and hr is not None and (key == "accuracy" or hr.test is not None):
            # accuracy: the validation split; test_accuracy: the held-out test split, judged the same way
            if key == "test_accuracy":
                hr, br = hr.test, (br.test if br is not None else None)
            if br is None:
                n = int(outcome.metrics["base"].get(f"{m.split(':')[0]}:{PER_IMAGE[key]}", 0)) or len(hr.correct[0])
                br = Runs(acc=old, n=n)
            c = compared(br, hr, alpha)
            rows.append(Row(m, c["base"], c["head"], SAME, c["diff"], c["lo"], c["hi"], c["p"],
                            detectable=c["detectable"], how=c["how"]))
        else:
            change = new - old
            bad = -change > gate.tolerance_pp + 1e-9
            rows.append(Row(m, old, new, "worse" if bad else "within tolerance", change, fail=bad, blind=True,
                            how="no per-image results: the tolerance alone"))
    classify(rows, gate.tolerance_pp)
    for r in rows:
        if r.fail and r.p_holm is not None:
            failures.append(f"{r.metric} dropped {-r.diff:.2f} pp ({r.base:.2f} -> {r.head:.2f}), beyond noise "
                            f"(Holm {stats.p_is(r.p_holm)}) and the {gate.tolerance_pp:g} pp tolerance")
        elif r.fail and r.diff is not None:
            failures.append(f"{r.metric} dropped {-r.diff:.2f} pp ({r.base:.2f} -> {r.head:.2f}), "
                            f"beyond the {gate.tolerance_pp:g} pp tolerance")
    return rows, failures, notes


def blind_spots(rows: list[Row], tolerance: float) -> list[str]:
    """One plain sentence per gated metric the check could not see a tolerance-sized drop in."""
    out = []
    for r in rows:
        if r.blind and not r.fail and r.detectable is not None:
            out.append(f"this check cannot see a {tolerance:g} pp drop in `{r.metric}`: smallest detectable "
                       f"{r.detectable:.1f} pp" + (f" ({'draw-and-seed' if 'draw-and-seed' in r.how else 'seed'} spread not measured)"
                                                 if "not measured" in r.how else ""))
        elif r.blind and not r.fail:
            out.append(f"`{r.metric}` is judged by the tolerance alone (no per-image results): "
                       "its noise is unknown")
    return out


def verdict_line(failures: list[str], blind: list[str], rows: list[Row], strict: bool) -> tuple[str, int]:
    """(the verdict line, exit status)."""
    if failures:
        return "**Verdict: FAIL** — " + "; ".join(failures), 1
    if blind:
        return ("**Verdict: INCONCLUSIVE**" + (" (--strict: fails)" if strict else "") + " — " + "; ".join(blind),
                1 if strict else 0)
    if not rows:
        return "**Verdict: OK** — no gated metric was affected", 0
    return "**Verdict: OK** — no gated metric got worse beyond noise and the tolerance, and each could have seen it", 0
