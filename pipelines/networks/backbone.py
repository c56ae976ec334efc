"""Part 1.3: the `backbone` network, an ImageNet architecture (pipelines/imagenet.py) with a new classification head."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pipelines import imagenet, io
from pipelines.errors import DataError
from pipelines.layers import fp32_depthwise_backward

class BackboneClassifier(nn.Module):
    """Part 1.3: an ImageNet architecture whose 1000-way classifier is replaced by a new head."""

    def __init__(self, backbone: str, n_classes: int = 2):
        super().__init__()
        spec = imagenet.get(backbone)
        self.body = spec.build()
        # The depthwise convolutions' gradients in float32 under CPU bf16 autocast: oneDNN's bf16
        # depthwise backward is several times slower than its float32 one (pipelines/layers.py).
        fp32_depthwise_backward(self.body)
        width = getattr(self.body, spec.head).in_features
        setattr(self.body, spec.head, nn.Identity())
        self.head = nn.Linear(width, n_classes)
        self.mid_block = "body." + spec.mid
        self.feature_dim = width

    def load_backbone(self, path: Path, expected_sha256: str) -> None:
        """Load ImageNet weights: hash first, then tensors only (no code runs from the file)."""
        io.verify_sha256(path, expected_sha256, "rerun the preprocess stage (dvc repro) to rebuild it")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise DataError(f"{path}: backbone weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def layer_aliases(self) -> dict[str, str]:
        return {"mid": self.mid_block, "pooled": "body", "logits": "head"}


def build(config: dict) -> nn.Module:
    return BackboneClassifier(config["backbone"], config["n_classes"])
