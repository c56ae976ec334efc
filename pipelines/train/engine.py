"""The one training/evaluation loop every variant uses, and its on-device data path.

Prepared uint8 NHWC arrays are moved to the device once; each batch is indexed, augmented
and normalised there. Permuting NHWC to NCHW gives a channels-last tensor for free, which is
the fast layout for convolutions on both CPU (oneDNN) and GPU. No DataLoader, no PIL.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipelines import hardware
from pipelines.errors import ParamsError
from pipelines.models import logits_of
from pipelines.train.recipes import Recipe, make_optimizer, make_schedule


# ---------------------------------------------------------------------------- device & precision
def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("device 'cuda' requested but torch sees no CUDA GPU; use device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:  # torchrun: one GPU per process
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if hardware.native_bf16() else "fp32"


def autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed torch and numpy; set this process's CPU threads (params `threads`, or its share of the
    cores when several pipeline processes run: hardware.thread_share)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    threads, why = hardware.thread_share(threads)
    if threads:
        torch.set_num_threads(threads)
        if why != "params threads":
            print(f"threads: {threads} ({why})", flush=True)
    # Same seed, same CPU numbers: forbid nondeterministic kernels where torch has a choice. The
    # debug-mode setter sets the same flag as use_deterministic_algorithms(True, warn_only=True)
    # without importing the compiler stack (torch._inductor, torch._dynamo) to set its flag too:
    # nothing here compiles, and that import cost every evaluate and embed stage about 1.4 CPU-seconds.
    torch.set_deterministic_debug_mode("warn")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False


def dist_info() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torch.distributed (torchrun)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist_info()


def finish_distributed() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- data on device
@dataclass
class DeviceData:
    """A split held on the device: uint8 images NHWC and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor
    mean: torch.Tensor  # (C,) in 0..1 units
    std: torch.Tensor

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device) -> "DeviceData":
        return cls(
            torch.from_numpy(np.ascontiguousarray(x)).to(device),
            torch.from_numpy(y.astype(np.int64)).to(device),
            torch.tensor(mean, dtype=torch.float32, device=device),
            torch.tensor(std, dtype=torch.float32, device=device),
        )

    def __len__(self) -> int:
        return self.x.shape[0]

    def normalise(self, xb: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float NCHW (channels-last memory), normalised."""
        xf = xb.float().div_(255).sub_(self.mean).div_(self.std)
        return xf.permute(0, 3, 1, 2)


def _random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    n, h, w, _ = x.shape
    padded = F.pad(x, (0, 0, pad, pad, pad, pad))  # zero padding of H and W on NHWC
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


def _random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(2), x)


def _random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """Per-sample crop of random area and aspect, resized back to the input size, as one grid_sample."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    r = torch.exp(log_r)
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sw, cx, sh, cy
    theta = theta.to(x.device)
    xf = x.permute(0, 3, 1, 2).float()
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    out = F.grid_sample(xf, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


AUGMENTS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": lambda x, g: x,
    "flip": _random_flip,
    "crop": lambda x, g: _random_crop(x, max(2, x.shape[1] // 8), g),
    "crop_flip": lambda x, g: _random_flip(_random_crop(x, max(2, x.shape[1] // 8), g), g),
    "resized_crop_flip": lambda x, g: _random_flip(_random_resized_crop(x, g), g),
}


def augment(name: str, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    if name not in AUGMENTS:
        raise RuntimeError(f"unknown augment {name!r}; supported: {', '.join(AUGMENTS)}")
    return AUGMENTS[name](x, gen)


def batch_indices(n: int, batch_size: int, gen: Optional[torch.Generator]) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


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
        # Under DDP every rank draws the same global batch and trains on its own slice of it;
        # averaged gradients then match one process training on the whole batch.
        idx = idx[rank::world].to(train.x.device)
        if not len(idx):
            continue
        xb = train.normalise(augment(r.augment, train.x[idx], gen))
        yb = train.y[idx]
        with autocast(device, precision):
            logits = logits_of(model(xb))
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=r.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        loss_sum += loss.detach() * len(idx)
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
