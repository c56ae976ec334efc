"""The one training loop every variant uses: the recipe it trains with (the one place a Recipe is
built from a params variant, recipe_for), its optimiser and schedule, on-device augmentation, the
epoch, and `fit` with its checkpoint and resume.

Each batch is indexed, augmented and normalised on the device its split lives on (pipelines/compute.py
puts it there); the validation pass after each epoch predicts as the evaluate stage does
(pipelines/inference.py).
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipelines.compute import DeviceData, autocast, batch_indices, dist_info
from pipelines.inference import evaluate
from pipelines.layers import BatchPart, batch_part
from pipelines.models import logits_of

if TYPE_CHECKING:
    from pipelines.config import Variant


# ---------------------------------------------------------------------------- recipe
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


# ---------------------------------------------------------------------------- augmentation on device
# Each random draw is one value per row of the global batch (`part`: this process's rows of it under
# data parallelism; None: x is the whole batch), of which x's rows keep theirs: every rank then
# augments its images as one process would, and all ranks' generators stay in step.
def _rows(x: torch.Tensor, part: Optional[BatchPart]) -> int:
    return x.shape[0] if part is None else part.rows


def _mine(t: torch.Tensor, part: Optional[BatchPart]) -> torch.Tensor:
    return t if part is None else part.take(t)


def _random_crop(x: torch.Tensor, pad: int, gen: torch.Generator, part: Optional[BatchPart] = None) -> torch.Tensor:
    n, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))  # zero padding of H and W on NHWC
    dy = _mine(torch.randint(0, 2 * pad + 1, (_rows(x, part),), generator=gen), part).to(x.device)
    dx = _mine(torch.randint(0, 2 * pad + 1, (_rows(x, part),), generator=gen), part).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


def _random_flip(x: torch.Tensor, gen: torch.Generator, part: Optional[BatchPart] = None) -> torch.Tensor:
    mask = _mine(torch.rand(_rows(x, part), generator=gen) < 0.5, part).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(2), x)


def _random_resized_crop(x: torch.Tensor, gen: torch.Generator, part: Optional[BatchPart] = None,
                         scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample crop of random area and aspect, resized back to the input size, as one grid_sample."""
    n = _rows(x, part)
    area = torch.empty(n).uniform_(*scale, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    theta = _mine(theta, part).to(x.device)
    xf = x.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Generator, Optional[BatchPart]], torch.Tensor]] = {
    "none": lambda x, g, part: x,
    "flip": _random_flip,
    "crop": lambda x, g, part: _random_crop(x, max(2, x.shape[1] // 8), g, part),
    "crop_flip": lambda x, g, part: _random_flip(_random_crop(x, max(2, x.shape[1] // 8), g, part), g, part),
    "resized_crop_flip": lambda x, g, part: _random_flip(_random_resized_crop(x, g, part), g, part),
}


def augment(name: str, x: torch.Tensor, gen: torch.Generator, part: Optional[BatchPart] = None) -> torch.Tensor:
    """x (NHWC uint8) randomly augmented by `name`; `part`: x is this process's rows of a global batch."""
    if name not in AUGMENTS:
        raise RuntimeError(f"unknown augment {name!r}; supported: {', '.join(AUGMENTS)}")
    return AUGMENTS[name](x, gen, part)


# ---------------------------------------------------------------------------- loop
@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)
    best_state: Optional[dict] = None
    best_epoch: int = 0
    best_val_acc: float = -1.0
    train_seconds: float = 0.0
    train_images: int = 0


def _progress(iterable, total: int, desc: str):
    # A bar on a terminal; under DVC/CI (not a tty) a line every 30 s instead of thousands.
    return tqdm(iterable, total=total, desc=desc, leave=False, file=sys.stderr,
                disable=None, mininterval=0.5 if sys.stderr.isatty() else 30)


@dataclass
class TrainState:
    """Everything needed to continue a run exactly after `epoch`: weights, optimiser, schedule, RNG
    and the progress so far. A checkpoint holds it as one plain dict (to_dict: tensors, numbers and
    lists under eleven fixed keys), which torch.load(weights_only=True) reads back."""

    epoch: int
    model: dict
    optimizer: dict
    schedule: Optional[dict]
    torch_rng: torch.Tensor
    progress: FitResult

    @classmethod
    def capture(cls, epoch: int, model: nn.Module, opt: torch.optim.Optimizer, sched, progress: FitResult) -> "TrainState":
        return cls(epoch, model.state_dict(), opt.state_dict(), sched.state_dict() if sched is not None else None,
                   torch.get_rng_state(), progress)

    def restore(self, model: nn.Module, opt: torch.optim.Optimizer, sched) -> FitResult:
        """Load weights, optimiser, schedule and RNG back; the progress to continue from."""
        model.load_state_dict(self.model)
        opt.load_state_dict(self.optimizer)
        if sched is not None:
            sched.load_state_dict(self.schedule)
        torch.set_rng_state(self.torch_rng)
        return self.progress

    def to_dict(self) -> dict:
        head = {"epoch": self.epoch, "model": self.model, "optimizer": self.optimizer,
                "schedule": self.schedule, "torch_rng": self.torch_rng}
        return head | {f.name: getattr(self.progress, f.name) for f in fields(FitResult)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        progress = FitResult(**{f.name: d[f.name] for f in fields(FitResult)})
        progress.history = list(progress.history)
        return cls(d["epoch"], d["model"], d["optimizer"], d["schedule"], d["torch_rng"], progress)


def _train_epoch(model: nn.Module, train: DeviceData, r: Recipe, opt: torch.optim.Optimizer, sched,
                 gen: torch.Generator, device: torch.device, precision: str, desc: str) -> tuple[float, float, float]:
    """One pass over the training split: (mean loss, accuracy %, seconds), summed over all ranks."""
    rank, world = dist_info()
    model.train()
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    steps = math.ceil(len(train) / r.batch_size)
    for idx in _progress(batch_indices(len(train), r.batch_size, gen), steps, desc):
        # Under DDP every rank draws the same global batch and trains on its own slice of it, with
        # the augmentation and dropout one process would draw for those rows (batch_part). Each rank's
        # loss is its rows' sum over rows / world, so the gradients DDP averages add up to the mean over
        # the whole batch, as one process computes it, also when the slices differ in size (a rank with
        # no rows still steps, with zero gradients, as DDP needs every rank in each reduction).
        rows = len(idx)
        idx = idx[rank::world].to(train.x.device)
        with batch_part(rank, world, rows) as part:
            xb = train.normalise(augment(r.augment, train.x[idx], gen, part))
            yb = train.y[idx]
            with autocast(device, precision):
                logits = logits_of(model(xb))
                if world == 1:
                    loss = F.cross_entropy(logits.float(), yb, label_smoothing=r.label_smoothing)
                    summed = loss.detach() * len(idx)
                else:
                    summed = F.cross_entropy(logits.float(), yb, label_smoothing=r.label_smoothing, reduction="sum")
                    loss = summed * (world / rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += summed.detach()
        correct += (logits.argmax(1) == yb).sum()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    return loss_sum.item() / len(train), correct.item() / len(train) * 100, seconds


def fit(model: nn.Module, train: DeviceData, val: DeviceData, r: Recipe, device: torch.device, precision: str,
        seed: int, on_epoch: Callable[[dict], None] = lambda row: None, desc: str = "train",
        resume: Optional[dict] = None, checkpoint: Optional[Callable[[dict], None]] = None) -> FitResult:
    """Train for r.epochs, evaluating on `val` after each; keep the best-accuracy weights.

    `checkpoint(state)` receives, after every epoch, everything needed to continue exactly
    (TrainState.to_dict: weights, optimiser, schedule, RNG, history); `resume=state` continues from
    it, giving the same numbers on CPU as a run that was never interrupted.
    """
    core = getattr(model, "module", model)  # the model itself, unwrapped from DistributedDataParallel
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], r)
    sched = make_schedule(opt, r, math.ceil(len(train) / r.batch_size))
    res, first = FitResult(), 1
    if resume is not None:
        res, first = TrainState.from_dict(resume).restore(core, opt, sched), resume["epoch"] + 1
    for epoch in range(first, r.epochs + 1):
        # One generator per epoch, derived from the seed: resuming at epoch k replays epoch k exactly.
        gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        train_loss, train_acc, seconds = _train_epoch(model, train, r, opt, sched, gen, device, precision,
                                                      f"{desc} epoch {epoch}/{r.epochs}")
        res.train_seconds += seconds
        res.train_images += len(train)
        val_loss, val_acc, _ = evaluate(core, val, r.eval_batch_size, device, precision, r.label_smoothing)
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "val_loss": val_loss,
               "val_acc": val_acc, "lr": opt.param_groups[0]["lr"], "seconds": seconds}
        res.history.append(row)
        if val_acc > res.best_val_acc:  # strict: ties keep the earlier epoch
            res.best_val_acc, res.best_epoch = val_acc, epoch
            res.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in core.state_dict().items()})
        on_epoch(row)
        if checkpoint is not None:
            checkpoint(TrainState.capture(epoch, core, opt, sched, res).to_dict())
    return res
