"""The CPU probe: model name, feature flags and whether bf16 matmuls run natively; and the
measured ceiling of a matrix product, the peak every path's FLOP/s is compared with.

Read from /proc/cpuinfo (Linux); elsewhere the model falls back to what `platform` says and the
flags are empty, so bf16 is then never picked automatically.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

CPUINFO = Path("/proc/cpuinfo")
# bf16 matmuls are only fast on CPUs with AVX-512 BF16 or AMX; elsewhere they are emulated.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Cpu:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> bool:
        return any(f in self.flags for f in BF16_FLAGS)


def cpu(path: Path = CPUINFO) -> Cpu:
    """The first processor's model name and flags."""
    model, flags = "", None
    try:
        text = path.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
    return Cpu(model or platform.processor() or platform.machine() or "unknown", flags or frozenset())


def native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls in hardware (AVX-512 BF16 or AMX)."""
    return cpu().native_bf16


def best_seconds(fn: Callable[[], object], repeats: int, min_seconds: float) -> float:
    """The fastest of `repeats` timed calls after one warm-up, each call repeated to last min_seconds."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        best = min(best, elapsed / n)
    return best


def gemm_peak(precision: str, device: str = "cpu", n: Optional[int] = None, repeats: int = 3,
              min_seconds: float = 0.2) -> float:
    """FLOP/s of an n^3 matrix product in `precision` ("fp32" or "bf16") on `device`, on torch's
    threads: the ceiling a training or evaluation path in that precision is measured against.
    n defaults to 2048 on a CPU (under a second) and 8192 on a GPU, which a smaller product leaves idle."""
    import torch

    cuda = torch.device(device).type == "cuda"
    n = n or (8192 if cuda else 2048)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    # Its own generator: timing the product must not move the seeded stream training draws from.
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)

    def mm() -> None:
        torch.mm(a, b)
        if cuda:
            torch.cuda.synchronize()

    return 2 * n**3 / best_seconds(mm, repeats, min_seconds)
