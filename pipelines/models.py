"""Model registry: the lab's two CNNs and an ImageNet backbone with a new head.

Every model is rebuilt from a plain config dict, which the checkpoint carries beside its
state dict, so a checkpoint loads with `weights_only=True` and no pickled classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipelines import io

# Normalisation each pretrained backbone was trained with (and is therefore fed with).
BACKBONE_NORM = {
    "resnet18": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # EfficientNet-Lite (TF-ported weights) expects inputs scaled to [-1, 1].
    "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


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
        self.drop1 = nn.Dropout(0.25)
        flat = 32 * (image_size // 2) ** 2
        if hidden:
            self.fc1 = nn.Linear(flat, hidden)
            self.drop2 = nn.Dropout(0.5)
            self.fc2 = nn.Linear(hidden, n_classes)
        else:
            self.fc1 = None
            self.fc2 = nn.Linear(flat, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.drop1(self.pool(x)).flatten(1)
        if self.fc1 is not None:
            x = self.drop2(torch.relu(self.fc1(x)))
        return self.fc2(x)


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
            nn.Dropout(0.5), nn.Linear(128 * 2 * 2, 2048), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(2048, 2048), nn.ReLU(inplace=True),
            nn.Linear(2048, n_classes),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # As in the lab: logits and the flattened convolutional features.
        h = self.features(x).flatten(1)
        return self.classifier(h), h


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def _efficientnet_lite0() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False)


_BACKBONES: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    # name: (builder, classifier attribute replaced by the new head, a mid-depth block)
    "resnet18": (_resnet18, "fc", "layer3"),
    "efficientnet_lite0": (_efficientnet_lite0, "classifier", "blocks.4"),
}


class BackboneClassifier(nn.Module):
    """Part 1.3: an ImageNet architecture whose 1000-way classifier is replaced by a new head."""

    def __init__(self, backbone: str, n_classes: int = 2):
        super().__init__()
        if backbone not in _BACKBONES:
            raise RuntimeError(f"unknown backbone {backbone!r}; supported: {', '.join(sorted(_BACKBONES))}")
        build, head_attr, mid = _BACKBONES[backbone]
        self.body = build()
        width = getattr(self.body, head_attr).in_features
        setattr(self.body, head_attr, nn.Identity())
        self.head = nn.Linear(width, n_classes)
        self.mid_block = "body." + mid
        self.feature_dim = width

    def load_backbone(self, path: Path, expected_sha256: str) -> None:
        """Load ImageNet weights: hash first, then tensors only (no code runs from the file)."""
        io.verify_sha256(path, expected_sha256, "rerun the preprocess stage (dvc repro) to rebuild it")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "classifier."))}
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        if unexpected or missing:
            raise RuntimeError(f"{path}: backbone weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# Layer aliases usable in params `layers:`; anything else is a module path (named_modules()).
def layer_aliases(model: nn.Module) -> dict[str, str]:
    if isinstance(model, BackboneClassifier):
        return {"mid": model.mid_block, "pooled": "body", "logits": "head"}
    if isinstance(model, AlexNetCifar):
        return {"flatten": "features", "logits": "classifier.6"}
    return {"logits": "fc2"}


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    path = layer_aliases(model).get(name, name)
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        allowed = sorted(set(layer_aliases(model)) | {n for n in modules if n})
        raise RuntimeError(f"layer {name!r} not found in {type(model).__name__}; allowed: {', '.join(allowed)}")
    return path, modules[path]


def build(config: dict) -> nn.Module:
    """Build a model from its config dict (the one stored in every checkpoint)."""
    name = config["model"]
    if name == "simple_cnn":
        return SimpleCNN(config["in_channels"], config["image_size"], config["n_classes"], config.get("hidden", 128))
    if name == "alexnet_cifar":
        if config["image_size"] != 32:
            raise RuntimeError(f"alexnet_cifar needs 32x32 inputs, got image_size {config['image_size']}")
        return AlexNetCifar(config["in_channels"], config["n_classes"])
    if name == "backbone":
        return BackboneClassifier(config["backbone"], config["n_classes"])
    raise RuntimeError(f"unknown model {name!r}; supported: simple_cnn, alexnet_cifar, backbone")


def parameter_table(model: nn.Module) -> list[tuple[str, str, int]]:
    """(name, shape, count) of every trainable tensor; the counts sum to the trainable total."""
    return [(n, "x".join(map(str, p.shape)), p.numel()) for n, p in model.named_parameters() if p.requires_grad]


def logits_of(out: torch.Tensor | tuple) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def save_checkpoint(path: Path, model: nn.Module, config: dict, state_dict: dict | None = None) -> None:
    with io.atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict or model.state_dict(), "config": config}, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    model = build(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model, ckpt["config"]
