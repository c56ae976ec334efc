"""The CPU probe: model name, feature flags and whether bf16 matmuls run natively.

Read from /proc/cpuinfo (Linux); elsewhere the model falls back to what `platform` says and the
flags are empty, so bf16 is then never picked automatically.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

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
