"""Part 1.2: the lab's reduced AlexNet for 32x32 inputs."""
from __future__ import annotations

import torch
from torch import nn

from pipelines.errors import ParamsError
from pipelines.layers import BitDropout

class AlexNetCifar(nn.Module):
    """Part 1.2: the lab's reduced AlexNet for 32x32 inputs (6,199,498 parameters)."""

    def __init__(self, in_channels: int = 3, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 48, 5, 2, 2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(48, 128, 5, 1, 2), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(128, 192, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, 3, 1, 1), nn.ReLU(inplace=True),
            nn.Conv2d(192, 128, 3, 1, 1), nn.MaxPool2d(2), nn.ReLU(inplace=True),
        )
        self.classifier = nn.Sequential(
            # nn.Dropout's job with a cheaper mask (pipelines/layers.py); the layer indices stay the lab's.
            BitDropout(0.5), nn.Linear(128 * 2 * 2, 2048), nn.ReLU(inplace=True),
            BitDropout(0.5), nn.Linear(2048, 2048), nn.ReLU(inplace=True),
            nn.Linear(2048, n_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # As in the lab: logits and the flattened convolutional features.
        h = self.features(x).flatten(1)
        return self.classifier(h), h

    def layer_aliases(self) -> dict[str, str]:
        return {"flatten": "features", "logits": "classifier.6"}


def build(config: dict) -> nn.Module:
    if config["image_size"] != 32:
        raise ParamsError(f"alexnet_cifar needs 32x32 inputs, got image_size {config['image_size']}")
    return AlexNetCifar(config["in_channels"], config["n_classes"])
