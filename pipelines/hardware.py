"""The CPU probe: model name, feature flags and whether bf16 matmuls run natively; the measured
ceiling of a matrix product, the peak every path's FLOP/s is compared with; and the share of the
cores one pipeline process takes when several run side by side (docs/speed.md, "Threads").

Read from /proc/cpuinfo (Linux); elsewhere the model falls back to what `platform` says and the
flags are empty, so bf16 is then never picked automatically.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from pipelines.errors import ParamsError

CPUINFO = Path("/proc/cpuinfo")
PROC = Path("/proc")
THREADS_ENV = "LAB_THREADS"
# Set by pytest-xdist in each worker: that many test processes (and the stages they start) share the cores.
XDIST_ENV = "PYTEST_XDIST_WORKER_COUNT"
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


# ---------------------------------------------------------------------------- threads per process
def cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a cgroup's cpuset), else every core."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dvc_queue_workers(proc: Path = PROC) -> int:
    """How many `dvc exp queue-worker` processes run on this machine (`dvc queue start -j N` starts N;
    each runs one experiment's stages at a time)."""
    n = 0
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"queue-worker" in argv and b"exp" in argv:
            n += 1
    return n


def thread_share(requested: int, environ: Optional[dict] = None, proc: Path = PROC) -> tuple[int, str]:
    """(threads for this process, why): params `threads` when > 0; else LAB_THREADS when set; else,
    when several pipeline processes run side by side (DVC queue workers, pytest-xdist workers), the
    cores divided among them, at least one; else 0, torch's default (every core).

    Several processes each taking every core do not share them: their threads spin waiting for one
    another and a run gets many times slower than its share (docs/speed.md measures it)."""
    env = os.environ if environ is None else environ
    if requested > 0:
        return requested, "params threads"
    raw = env.get(THREADS_ENV, "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ParamsError(f"{THREADS_ENV}={raw!r}: expected a whole number of threads >= 1, or unset")
        return int(raw), THREADS_ENV
    xdist = env.get(XDIST_ENV, "").strip()
    workers, why = max((dvc_queue_workers(proc), "DVC queue workers"),
                       (int(xdist) if xdist.isdigit() else 0, "pytest-xdist workers"))
    if workers > 1:
        n = cores()
        return max(1, n // workers), f"{n} cores / {workers} {why}"
    return 0, "torch's default"
