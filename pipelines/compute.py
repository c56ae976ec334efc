"""Where the arithmetic runs: the device, its precision, the seeded random streams, the DDP process
group, and a split held on the device.

Prepared uint8 NHWC arrays are moved to the device once; each batch is indexed and normalised there.
Permuting NHWC to NCHW gives a channels-last tensor for free, which is the fast layout for
convolutions on both CPU (oneDNN) and GPU. No DataLoader, no PIL.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from pipelines import hardware
from pipelines.errors import ParamsError


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


# ---------------------------------------------------------------------------- DDP (torchrun)
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


def batch_indices(n: int, batch_size: int, gen: Optional[torch.Generator]) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]
