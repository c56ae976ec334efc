"""train@<variant>: see pipelines/experiment.py:train and docs/outputs.md for what it writes.

    python -m stages.train --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/train --metrics metrics/mnist_cnn/train.json
"""
import sys

from pipelines import experiment
from pipelines.cli import edge

if __name__ == "__main__":
    sys.exit(edge.variant_stage("train", experiment.train))
