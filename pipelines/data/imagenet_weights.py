"""Turn downloaded ImageNet weights into the plain state dict later stages load with strict=True.

The weights file is a pickle. It is opened only after its digest has been checked, and even
then with weights_only=True, so a substituted file can neither match nor run code.
"""
from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import torch

from pipelines import imagenet
from pipelines.errors import DataError, IntegrityError


def load_weights(path: Path | str) -> dict[str, torch.Tensor]:
    """torch.load restricted to tensors and containers; anything else is refused, not executed."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise IntegrityError(f"{path}: refused by torch.load(weights_only=True): {first}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise DataError(f"{path}: not a state dict of tensors")
    return sd


def convert(name: str, sd: dict[str, torch.Tensor]) -> "OrderedDict[str, torch.Tensor]":
    """A state dict keyed like the model the training stage builds for `name`."""
    if name not in imagenet.BACKBONES:
        raise DataError(f"unknown backbone {name!r}")
    spec = imagenet.BACKBONES[name]
    target = spec.build().state_dict()
    if spec.keys == "same":
        # Same code base, same keys: anything else means the wrong file, caught here rather
        # than as a confusing strict-load error in the training stage.
        missing = sorted(set(target) - set(sd))
        extra = sorted(set(sd) - set(target))
        if missing or extra:
            raise DataError(f"{name} weights: missing keys {missing[:3]}, unexpected keys {extra[:3]}")
        triples = [(k, k, sd[k]) for k in target]
    else:
        # Key names from another code base, tensors registered in the same order (pipelines/imagenet.py):
        # map by position and let the shape check catch any misalignment.
        if len(sd) != len(target):
            raise DataError(f"{name} weights: {len(sd)} tensors, timm's model has {len(target)}")
        triples = [(k, src, t) for k, (src, t) in zip(target, sd.items())]
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, src_key, tensor in triples:
        if tuple(tensor.shape) != tuple(target[key].shape):
            raise DataError(f"{name} weights: {src_key} has shape {tuple(tensor.shape)}, "
                            f"the model's {key} needs {tuple(target[key].shape)}")
        out[key] = tensor.detach().clone().contiguous()
    return out


def save(path: Path | str, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, path)
