"""Shared command-line wrapper of the variant stages: paths in, one-line errors out."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

from pipelines import config
from pipelines.errors import LabError

# The project's own errors, and the built-in ones a user can act on as raised by the libraries the
# stages call (a full disk, a missing file, an array of the wrong shape).
EXPECTED: tuple[type[BaseException], ...] = (LabError, OSError, ValueError, RuntimeError)


def expected_errors() -> tuple[type[BaseException], ...]:
    return EXPECTED


def guarded(label: str, body: Callable[[], object]) -> int:
    """Run a stage body: failures a user can act on become one `error:` line and exit status 2;
    anything else is a bug and keeps its traceback."""
    try:
        body()
    except expected_errors() as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {label}: {msg}", file=sys.stderr)
        return 2
    return 0


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

    return guarded(f"{stage} {args.variant}", body)
