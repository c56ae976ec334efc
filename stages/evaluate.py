"""evaluate@<variant>: see pipelines/evaluate/stage.py:evaluate and docs/outputs.md for what it writes.

    python -m stages.evaluate --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/evaluate --metrics metrics/mnist_cnn/evaluate.json
"""
import sys

from pipelines.cli.variant_stage import variant_stage
from pipelines.evaluate.stage import evaluate

if __name__ == "__main__":
    sys.exit(variant_stage("evaluate", evaluate))
