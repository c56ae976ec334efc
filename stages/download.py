"""download@<dataset>: put the verified raw files of a dataset in data/raw/<dataset>/.

    python -m stages.download --dataset mnist --out data/raw/mnist
"""
from __future__ import annotations

import argparse
import sys
import time

from pipelines import config
from pipelines.cli import edge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.download", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a key of params datasets")
    ap.add_argument("--out", required=True, help="raw folder, data/raw/<dataset>")
    args = ap.parse_args(argv)

    def body() -> None:
        from pipelines.data.sources import acquire

        start = time.perf_counter()
        params = config.load()
        ds = params.dataset(args.dataset)
        print(f"download {args.dataset}: source {ds.source(params.protocol)} "
              f"(protocol {params.protocol}) -> {args.out}", flush=True)
        record = acquire(args.dataset, params, args.out, log=lambda m: print(m, flush=True))
        print(f"download {args.dataset}: {len(record['files'])} file(s) in {time.perf_counter() - start:.1f} s")

    return edge.guarded(f"download {args.dataset}", body, [args.out])


if __name__ == "__main__":
    sys.exit(main())
