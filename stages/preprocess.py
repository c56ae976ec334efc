"""preprocess@<dataset>: decode verified raw files into data/prepared/<dataset>/.

    python -m stages.preprocess --dataset mnist --raw data/raw/mnist --out data/prepared/mnist
"""
from __future__ import annotations

import argparse
import sys
import time

from pipelines import config
from pipelines.io import IntegrityError

# Failures a user can act on get one line and exit status 2; anything else is a bug and keeps
# its traceback.
EXPECTED = (config.ParamsError, IntegrityError, OSError)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.preprocess", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a key of params datasets")
    ap.add_argument("--raw", required=True, help="raw folder written by the download stage")
    ap.add_argument("--out", required=True, help="prepared folder, data/prepared/<dataset>")
    args = ap.parse_args(argv)
    try:
        from pipelines.data import DataError, prepare
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        params = config.load()
        params.dataset(args.dataset)
        print(f"preprocess {args.dataset}: {args.raw} -> {args.out}", flush=True)
        meta = prepare(args.dataset, params, args.raw, args.out, log=lambda m: print(m, flush=True))
    except (*EXPECTED, DataError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    s = meta["splits"]
    print(f"preprocess {args.dataset}: train {s['train']}, val {s['val']}, "
          f"{meta['height']}x{meta['width']}x{meta['channels']}, {len(meta['classes'])} classes "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
