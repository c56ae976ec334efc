"""Part 1.1: the Simple CNN (two 3x3 convs, one max-pool, fc1, fc2)."""
from __future__ import annotations

import torch
from torch import nn

from pipelines.layers import BitDropout, channels_last_grad


class SimpleCNN(nn.Module):
    """Part 1.1: two 3x3 convs, one max-pool, fc1 (hidden units) and fc2.

    With hidden=128 on 28x28x1 input this is the lab's 813,802-parameter network;
    hidden=0 drops fc1 (the lab's "cheaper network" question).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, n_classes: int = 10, hidden: int = 128):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = BitDropout(0.25)   # nn.Dropout's job with a cheaper mask (pipelines/layers.py)
        flat = 32 * (image_size // 2) ** 2
        if hidden:
            self.fc1 = nn.Linear(flat, hidden)
            self.drop2 = BitDropout(0.5)
            self.fc2 = nn.Linear(hidden, n_classes)
        else:
            self.fc1 = None
            self.fc2 = nn.Linear(flat, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        # The flatten hands back an NCHW gradient; the pool's backward runs faster on channels-last.
        x = self.drop1(channels_last_grad(self.pool(x))).flatten(1)
        if self.fc1 is not None:
            x = self.drop2(torch.relu(self.fc1(x)))
        return self.fc2(x)

    def layer_aliases(self) -> dict[str, str]:
        return {"logits": "fc2"}


def build(config: dict) -> nn.Module:
    return SimpleCNN(config["in_channels"], config["image_size"], config["n_classes"], config.get("hidden", 128))
