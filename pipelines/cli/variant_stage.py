"""The command line of the variant stages (train, evaluate, embed): the paths dvc.yaml gives each,
plus the stage's own flags; params validated before the stage body runs.

    python -m stages.<stage> --variant V --data D --model M --out O --metrics J [the stage's own flags]
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Optional

from pipelines import config
from pipelines.cli.edge import guarded
from pipelines.runtime import StagePaths


def variant_stage(stage: str, fn: Callable[..., object], argv: list[str] | None = None,
                  options: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> int:
    """Parse the command line and run `fn(params, variant, StagePaths, **the stage's own flags)`
    under `guarded`. `options(parser)` adds the stage's own flags (their values go to `fn` by name)."""
    ap = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    ap.add_argument("--variant", required=True, help="a key of params variants")
    ap.add_argument("--data", required=True, type=Path, help="data/prepared/<dataset>")
    ap.add_argument("--model", required=True, type=Path, help="models/<variant>")
    ap.add_argument("--out", required=True, type=Path, help=f"results/<variant>/{stage}")
    ap.add_argument("--metrics", required=True, type=Path, help=f"metrics/<variant>/{stage}.json")
    if options is not None:
        options(ap)
    own = vars(ap.parse_args(argv))
    name = own.pop("variant")
    paths = StagePaths(*(own.pop(k) for k in ("data", "model", "out", "metrics")))

    def body() -> None:
        # Validate everything before anything is written.
        params = config.load()
        params.variant(name)
        fn(params, name, paths, **own)

    # Under torchrun every rank starts this; only rank 0 writes outputs, so only it clears their leftovers.
    outputs = ([paths.model, paths.out, paths.metrics, own.get("checkpoint")]
               if os.environ.get("RANK", "0") == "0" else [])
    return guarded(f"{stage} {name}", body, outputs)
