"""train@<variant>: see pipelines/train/stage.py:train and docs/outputs.md for what it writes.

    python -m stages.train --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/train --metrics metrics/mnist_cnn/train.json
"""
import argparse
import os
import sys
from pathlib import Path

from pipelines.cli.variant_stage import variant_stage
from pipelines.train.stage import train


def train_options(ap: argparse.ArgumentParser) -> None:
    """The train stage's own flags, beside the paths every variant stage takes."""
    ap.add_argument("--seed", type=int, help="train with this seed instead of params' (replicates)")
    ap.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint file (not a DVC output)")
    ap.add_argument("--resume", action="store_true", default=os.environ.get("LAB_RESUME") == "1",
                    help="continue from --checkpoint if it matches params and data (or LAB_RESUME=1)")


if __name__ == "__main__":
    sys.exit(variant_stage("train", train, options=train_options))
