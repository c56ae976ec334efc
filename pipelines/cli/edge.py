"""The command-line edge of the stages: run a body, turn a LabError into one line and its exit code.

Only `LabError` is caught: an unexpected exception (a ValueError from a library, an OSError the code
did not anticipate) is a bug, and Python prints its traceback and exits 1. Exit codes: see
pipelines/errors.py and docs/setup.md, "Exit codes".
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional

from pipelines import config, io
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


def variant_stage(stage: str, fn: Callable, argv: list[str] | None = None) -> int:
    """`python -m stages.<stage> --variant V --data D --model M --out O --metrics J`."""
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    ap.add_argument("--variant", required=True, help="a key of params variants")
    ap.add_argument("--data", required=True, type=Path, help="data/prepared/<dataset>")
    ap.add_argument("--model", required=True, type=Path, help="models/<variant>")
    ap.add_argument("--out", required=True, type=Path, help=f"results/<variant>/{stage}")
    ap.add_argument("--metrics", required=True, type=Path, help=f"metrics/<variant>/{stage}.json")
    extra = {}
    if stage == "train":
        ap.add_argument("--seed", type=int, help="train with this seed instead of params' (replicates)")
        ap.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint file (not a DVC output)")
        ap.add_argument("--resume", action="store_true", default=os.environ.get("LAB_RESUME") == "1",
                        help="continue from --checkpoint if it matches params and data (or LAB_RESUME=1)")
    args = ap.parse_args(argv)
    if stage == "train":
        extra = {"seed": args.seed, "checkpoint": args.checkpoint, "resume": args.resume}
    def body() -> None:
        # Validate everything before anything is written.
        params = config.load()
        params.variant(args.variant)
        fn(params, args.variant, args.data, args.model, args.out, args.metrics, **extra)

    # Under torchrun every rank starts this; only rank 0 writes outputs, so only it clears their leftovers.
    outputs = [args.model, args.out, args.metrics, extra.get("checkpoint")] if os.environ.get("RANK", "0") == "0" else []
    return guarded(f"{stage} {args.variant}", body, outputs)
