"""embed@<variant>: see pipelines/experiment.py:embed and docs/outputs.md for what it writes.

    python -m stages.embed --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/embed --metrics metrics/mnist_cnn/embed.json
"""
import sys

from pipelines import experiment
from pipelines.cli import edge

if __name__ == "__main__":
    sys.exit(edge.variant_stage("embed", experiment.embed))
