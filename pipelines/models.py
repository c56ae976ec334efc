"""The model registry: network name -> builder, and what every caller needs of a model.

One module per network sits in pipelines/networks/ (the lab's two CNNs and an ImageNet backbone
with a new head), named by its file; NETWORKS below imports each. Every model is rebuilt from a plain config dict,
which the checkpoint carries beside its state dict, so a checkpoint loads with `weights_only=True`
and no pickled classes.

This file's path is also the value of params `start` that means from scratch (config.SCRATCH): a
path, because train's DVC stage depends on `start`.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from pipelines import imagenet, io
from pipelines.errors import ParamsError
from pipelines.networks import network_names
from pipelines.networks.alexnet_cifar import AlexNetCifar
from pipelines.networks.backbone import BackboneClassifier
from pipelines.networks.simple_cnn import SimpleCNN

__all__ = ["NETWORKS", "BACKBONE_NORM", "SimpleCNN", "AlexNetCifar", "BackboneClassifier", "build", "layer_aliases",
           "resolve_layer", "parameter_table", "logits_of", "save_checkpoint", "load_checkpoint"]

# Every module of this package is a network (its file name is its name). The string below is how
# pipelines/cli/deps.py sees that this module imports each of them, so dvc.yaml lists them all.
NETWORK_MODULES = "pipelines.networks.*"
NETWORKS = {name: importlib.import_module(f"{NETWORK_MODULES[:-2]}.{name}") for name in network_names()}

# Normalisation each pretrained backbone was trained with (and is therefore fed with).
BACKBONE_NORM = {b.name: (b.mean, b.std) for b in imagenet.BACKBONES.values()}


def build(config: dict) -> nn.Module:
    """Build a model from its config dict (the one stored in every checkpoint)."""
    name = config["model"]
    if name not in NETWORKS:
        raise RuntimeError(f"unknown model {name!r}; supported: {', '.join(NETWORKS)}")
    return NETWORKS[name].build(config)


# Layer aliases usable in params `layers:`; anything else is a module path (named_modules()).
def layer_aliases(model: nn.Module) -> dict[str, str]:
    return model.layer_aliases() if hasattr(model, "layer_aliases") else {}


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    path = layer_aliases(model).get(name, name)
    modules = dict(model.named_modules())
    if path not in modules or path == "":
        allowed = sorted(set(layer_aliases(model)) | {n for n in modules if n})
        raise ParamsError(f"layer {name!r} not found in {type(model).__name__}; allowed: {', '.join(allowed)}")
    return path, modules[path]


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
