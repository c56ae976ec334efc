"""The transfer options' network (EfficientNet-Lite0 at 112 px, a two-class head) in fp32 against bf16
autocast on this machine: training steps (batch 16, SGD with momentum) and inference (batch 128),
channels-last, on every thread torch has, the two precisions interleaved in each round.

    python -m benchmarks.transfer_precision [--rounds 5]

Prints the median img/s of each and every round's. Random inputs: speed only, no accuracy.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipelines import hardware, models

PRECISIONS = ("fp32", "bf16")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    m = models.build({"model": "backbone", "backbone": "efficientnet_lite0", "n_classes": 2})
    m = m.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(16, 3, 112, 112).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (16,))
    xb = torch.randn(128, 3, 112, 112).to(memory_format=torch.channels_last)

    def train(prec: str, steps: int = 8) -> float:
        m.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
                loss = torch.nn.functional.cross_entropy(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return len(x) * steps / (time.perf_counter() - t0)

    def infer(prec: str, batches: int = 2) -> float:
        m.eval()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
            for _ in range(batches):
                m(xb)
        return len(xb) * batches / (time.perf_counter() - t0)

    for p in PRECISIONS:   # warm-up: oneDNN picks and caches its kernels on first use
        train(p, 2)
        infer(p, 1)
    got = {(k, p): [] for k in ("train", "inference") for p in PRECISIONS}
    for _ in range(a.rounds):
        for p in PRECISIONS:
            got[("train", p)].append(train(p))
            got[("inference", p)].append(infer(p))
    cpu = hardware.cpu()
    print(f"CPU {cpu.model}; bf16-related flags {sorted(f for f in cpu.flags if 'bf16' in f or 'amx' in f)}; "
          f"{torch.get_num_threads()} threads; torch {torch.__version__}")
    for (kind, p), v in got.items():
        print(f"{kind:9s} {p}: median {statistics.median(v):,.0f} img/s  rounds {[round(r) for r in v]}")
    for kind in ("train", "inference"):
        ratio = statistics.median(got[(kind, "fp32")]) / statistics.median(got[(kind, "bf16")])
        print(f"{kind}: fp32 / bf16 = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
