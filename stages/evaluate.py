"""evaluate@<variant>: see pipelines/experiment.py:evaluate and docs/outputs.md for what it writes.

    python -m stages.evaluate --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/evaluate --metrics metrics/mnist_cnn/evaluate.json
"""
import sys

from pipelines import experiment
from pipelines.cli import edge

if __name__ == "__main__":
    sys.exit(edge.variant_stage("evaluate", experiment.evaluate))
