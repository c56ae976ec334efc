"""Inference with a trained model over a split on the device: its logits, its loss and accuracy,
and the outputs of named layers. The training loop's validation pass, the evaluate and embed stages
and the logged MLflow model all predict through these, in the same batches and precision."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.compute import DeviceData, autocast, batch_indices
from pipelines.models import logits_of


@torch.no_grad()
def predict_logits(model: nn.Module, data: DeviceData, batch_size: int, device: torch.device,
                   precision: str) -> torch.Tensor:
    """float32 logits over a whole split, in order, batch by batch (on the data's device)."""
    model.eval()
    outs = []
    for idx in batch_indices(len(data), batch_size, None):
        idx = idx.to(data.x.device)
        with autocast(device, precision):
            outs.append(logits_of(model(data.normalise(data.x[idx]))).float())
    return torch.cat(outs)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int, device: torch.device, precision: str,
             label_smoothing: float = 0.0) -> tuple[float, float, torch.Tensor]:
    """Mean loss, accuracy (%) and the logits (float32, on CPU) over a whole split."""
    logits = predict_logits(model, data, batch_size, device, precision)
    loss = F.cross_entropy(logits, data.y, label_smoothing=label_smoothing).item()
    acc = (logits.argmax(1) == data.y).float().mean().item() * 100
    return loss, acc, logits.cpu()


@torch.no_grad()
def extract(model: nn.Module, modules: dict[str, nn.Module], data: DeviceData, batch_size: int,
            device: torch.device, precision: str) -> dict[str, np.ndarray]:
    """Outputs of the named modules over a split, read by forward hooks (4-D maps are flattened)."""
    store: dict[str, list[torch.Tensor]] = {k: [] for k in modules}
    hooks = [m.register_forward_hook(lambda _m, _i, out, k=k: store[k].append(logits_of(out).float().flatten(1).cpu()))
             for k, m in modules.items()]
    try:
        model.eval()
        for idx in batch_indices(len(data), batch_size, None):
            with autocast(device, precision):
                model(data.normalise(data.x[idx.to(data.x.device)]))
    finally:
        for h in hooks:
            h.remove()
    return {k: torch.cat(v).numpy() for k, v in store.items()}
