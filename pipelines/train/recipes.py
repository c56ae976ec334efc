"""Training recipes: the Recipe a run trains with, its optimiser and schedule, and the one place a
Recipe is built from a params variant (recipe_for)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pipelines.config import Variant


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    label_smoothing: float
    augment: str


def make_optimizer(params, r: Recipe) -> torch.optim.Optimizer:
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay)
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, nesterov=True)
    raise RuntimeError(f"unknown optimizer {r.optimizer!r}; supported: adam, adamw, sgd")


def make_schedule(opt: torch.optim.Optimizer, r: Recipe, steps_per_epoch: int):
    total = r.epochs * steps_per_epoch
    if r.schedule == "constant":
        return None
    if r.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    if r.schedule == "onecycle":
        # OneCycleLR divides by zero unless each of its two phases spans more than a step: a run of a
        # few batches (tiny data, one epoch) warms up for 1.5 steps instead of a quarter of the run.
        total = max(total, 4)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=total,
                                                   pct_start=max(0.25, 1.5 / total))
    raise RuntimeError(f"unknown schedule {r.schedule!r}; supported: constant, cosine, onecycle")


def recipe_for(v: "Variant", **changes) -> Recipe:
    """The recipe a variant trains with: each Recipe field read from the variant's params field of the
    same name, then `changes` (e.g. epochs=1 for a benchmark) applied on top."""
    return replace(Recipe(**{f.name: getattr(v, f.name) for f in fields(Recipe)}), **changes)
