"""The report's account of the time outside the stages' bodies, from the clocks the stages record."""
from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from pipelines.clock import StageClock
from pipelines.report.doc import Document
from pipelines.report.timing import GAP_LIMIT_S, TimeRow, outside_rows, outside_section


def row(stage: str, start: float, body: float, end: float) -> TimeRow:
    clock = {"process_start_epoch_seconds": start, "body_start_epoch_seconds": body, "end_epoch_seconds": end}
    return TimeRow(stage, end - body, None, None, None, None, clock)


def test_startup_body_and_the_gap_before_each_stage():
    rows = [row("evaluate@a", 1_000_060.0, 1_000_063.0, 1_000_070.0),   # listed out of order on purpose
            row("train@a", 1_000_000.0, 1_000_004.0, 1_000_050.0),
            row("embed@a", 1_000_075.5, 1_000_078.0, 1_000_090.0)]
    got = {o.stage: o for o in outside_rows(rows)}
    assert [o.stage for o in outside_rows(rows)] == ["train@a", "evaluate@a", "embed@a"]
    assert got["train@a"].gap is None                       # nothing clocked before it
    assert got["train@a"].startup == pytest.approx(4.0) and got["train@a"].body == pytest.approx(46.0)
    assert got["evaluate@a"].gap == pytest.approx(10.0)      # train's metrics at 50, evaluate's process at 60
    assert got["embed@a"].gap == pytest.approx(5.5) and got["embed@a"].wall == pytest.approx(14.5)


def test_a_stage_from_an_earlier_run_gives_no_gap():
    rows = [row("train@a", 0.0, 3.0, 40.0), row("evaluate@a", 40.0 + GAP_LIMIT_S + 1, 40.0 + GAP_LIMIT_S + 3, 200.0)]
    assert [o.gap for o in outside_rows(rows)] == [None, None]
    assert outside_rows([TimeRow("train@a", 5.0, None, None, None, None)]) == []   # older metrics: no clock


def test_the_section_total_is_the_sum_of_its_rows(tmp_path):
    rows = [row("train@a", 100.0, 104.0, 150.0), row("evaluate@a", 152.0, 155.0, 160.0),
            row("embed@a", 163.0, 166.5, 180.0)]
    doc = Document(tmp_path)
    outside_section(doc, rows)
    text = "\n".join(doc.lines)
    # start-up 4 + 3 + 3.5 = 10.5; gaps 2 + 3 = 5
    assert re.search(r"\*\*16 s outside the 3 clocked stages' bodies\*\*: 10 s of process start-up", text), text
    assert "5 s between one stage's metrics" in text and "(2 gaps" in text
    assert "| `embed@a` | 17.0 | 3.5 | 13.5 | 3.0 | 6.5 |" in text


def test_a_stage_clock_reads_this_process_start_from_the_kernel():
    # A fresh interpreter records its own clock: its process started before the body, before the end,
    # and after this test asked for it.
    asked = time.time()
    code = "from pipelines.clock import StageClock; import json; print(json.dumps(StageClock().record()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    import json
    c = json.loads(out)
    assert asked - 1.0 <= c["process_start_epoch_seconds"] <= c["body_start_epoch_seconds"] <= c["end_epoch_seconds"]
    assert c["body_start_epoch_seconds"] - c["process_start_epoch_seconds"] < 60
    here = StageClock().record()
    assert here["process_start_epoch_seconds"] < asked   # this test process began before the test did
