"""embed@<variant>: see pipelines/embed/stage.py:embed and docs/outputs.md for what it writes.

    python -m stages.embed --variant mnist_cnn --data data/prepared/mnist --model models/mnist_cnn \
        --out results/mnist_cnn/embed --metrics metrics/mnist_cnn/embed.json
"""
import sys

from pipelines.cli.variant_stage import variant_stage
from pipelines.embed.stage import embed

if __name__ == "__main__":
    sys.exit(variant_stage("embed", embed))
