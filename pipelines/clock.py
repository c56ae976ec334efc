"""When a stage process started, when its body began and when it wrote its metrics, as wall-clock
(Unix epoch) seconds. Each variant stage records these in its metrics file (`clock`), so the report
can say where a run's time went outside the stages' own work: the process start-up before the body
(interpreter, imports), and the gap between one stage's metrics and the next stage's process
(process exit, MLflow closing its run, DVC hashing and caching outputs, DVC starting the next).
"""
from __future__ import annotations

import time

import psutil


def process_start() -> float:
    """This process's creation time (epoch seconds), as the kernel recorded it."""
    return psutil.Process().create_time()


class StageClock:
    """Started where a stage's body begins; `record()` just before its metrics are written."""

    def __init__(self) -> None:
        self.body_start = time.time()

    def record(self) -> dict:
        return {"process_start_epoch_seconds": process_start(), "body_start_epoch_seconds": self.body_start,
                "end_epoch_seconds": time.time()}
