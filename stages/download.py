"""download@<dataset>: put the verified raw files of a dataset in data/raw/<dataset>/.

    python -m stages.download --dataset mnist --out data/raw/mnist
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
    ap = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a key of params datasets")
    ap.add_argument("--out", required=True, help="raw folder, data/raw/<dataset>")
    args = ap.parse_args(argv)
    try:
        # Imported here so a torchvision import problem is reported like any other failure.
        from pipelines.data import DataError, acquire
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        params = config.load()
        ds = params.dataset(args.dataset)
        print(f"download {args.dataset}: source {ds.source(params.protocol)} "
              f"(protocol {params.protocol}) -> {args.out}", flush=True)
        record = acquire(args.dataset, params, args.out, log=lambda m: print(m, flush=True))
    except (*EXPECTED, DataError) as err:
        print(f"error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        return 2
    print(f"download {args.dataset}: {len(record['files'])} file(s) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
