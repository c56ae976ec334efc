"""The command-line edge of the stages: run a body, turn a LabError into one line and its exit code.

Only `LabError` is caught: an unexpected exception (a ValueError from a library, an OSError the code
did not anticipate) is a bug, and Python prints its traceback and exits 1. Exit codes: see
pipelines/errors.py and docs/setup.md, "Exit codes".
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from pipelines import io
from pipelines.errors import OK, LabError, one_line


def guarded(label: str, body: Callable[[], object], outputs: Iterable[Optional[Path | str]] = ()) -> int:
    """Run a stage body: a LabError becomes one `error: <label>: <message>` line and its exit code
    (2 for bad input, 1 for other failures); anything else propagates with its traceback.

    First the temporary files and folders that a killed earlier run left of the stage's `outputs` are
    removed (pipelines.io.remove_stale_temps): a kill -9 runs no cleanup, so the next start does it."""
    io.remove_stale_temps(outputs, log=lambda msg: print(f"{label}: {msg}", flush=True))
    try:
        body()
    except LabError as err:
        print(f"error: {label}: {one_line(err)}", file=sys.stderr)
        return err.exit_code
    return OK
