"""preprocess@<dataset>: decode verified raw files into data/prepared/<dataset>/.

    python -m stages.preprocess --dataset mnist --raw data/raw/mnist --out data/prepared/mnist [--seed N]

--seed draws the seeded subsets (training, validation, test) with N instead of params' `seed`; the
params gate uses it for extra runs on other draws of the data (pipelines/gate/evidence.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional

from pipelines import config
from pipelines.cli import edge
from pipelines.errors import ParamsError

SEED_MAX = 2**32 - 1   # params' `seed` bounds (pipelines/config.py)


def seed_of(text: Optional[str]) -> Optional[int]:
    """--seed as an int in params' seed range; None when not given. A ParamsError (one line) otherwise."""
    if text is None:
        return None
    try:
        seed = int(text)
    except ValueError:
        raise ParamsError(f"--seed {text!r}: not an integer") from None
    if not 0 <= seed <= SEED_MAX:
        raise ParamsError(f"--seed {seed}: must be between 0 and {SEED_MAX}")
    return seed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.preprocess", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a key of params datasets")
    ap.add_argument("--raw", required=True, help="raw folder written by the download stage")
    ap.add_argument("--out", required=True, help="prepared folder, data/prepared/<dataset>")
    ap.add_argument("--seed", help="draw the seeded subsets with this seed instead of params' `seed`")
    args = ap.parse_args(argv)

    def body() -> None:
        from pipelines.data.prepare import prepare

        start = time.perf_counter()
        seed = seed_of(args.seed)
        params = config.load()
        params.dataset(args.dataset)
        print(f"preprocess {args.dataset}: {args.raw} -> {args.out}"
              + ("" if seed is None else f", seed {seed}"), flush=True)
        meta = prepare(args.dataset, params, args.raw, args.out, log=lambda m: print(m, flush=True), seed=seed)
        print(f"preprocess {args.dataset}: " + ", ".join(f"{k} {n}" for k, n in meta["splits"].items())
              + f", {meta['height']}x{meta['width']}x{meta['channels']}, {len(meta['classes'])} classes"
              f" in {time.perf_counter() - start:.1f} s")

    return edge.guarded(f"preprocess {args.dataset}", body, [args.out])


if __name__ == "__main__":
    sys.exit(main())
