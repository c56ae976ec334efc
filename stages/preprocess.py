"""preprocess@<dataset>: decode verified raw files into data/prepared/<dataset>/.

    python -m stages.preprocess --dataset mnist --raw data/raw/mnist --out data/prepared/mnist
"""
from __future__ import annotations

import argparse
import sys
import time

from pipelines import config
from pipelines.cli import edge


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stages.preprocess", description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="a key of params datasets")
    ap.add_argument("--raw", required=True, help="raw folder written by the download stage")
    ap.add_argument("--out", required=True, help="prepared folder, data/prepared/<dataset>")
    args = ap.parse_args(argv)

    def body() -> None:
        from pipelines.data.prepare import prepare

        start = time.perf_counter()
        params = config.load()
        params.dataset(args.dataset)
        print(f"preprocess {args.dataset}: {args.raw} -> {args.out}", flush=True)
        meta = prepare(args.dataset, params, args.raw, args.out, log=lambda m: print(m, flush=True))
        print(f"preprocess {args.dataset}: " + ", ".join(f"{k} {n}" for k, n in meta["splits"].items())
              + f", {meta['height']}x{meta['width']}x{meta['channels']}, {len(meta['classes'])} classes"
              f" in {time.perf_counter() - start:.1f} s")

    return edge.guarded(f"preprocess {args.dataset}", body, [args.out])


if __name__ == "__main__":
    sys.exit(main())
