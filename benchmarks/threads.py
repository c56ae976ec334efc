"""Several pipeline processes on one machine: every core each (torch's default) against each its
share of the cores (pipelines/hardware.thread_share), as `dvc queue start -j N` runs them.

    python -m benchmarks.threads [--workers 2] [--steps 40] [--rounds 3]

Each round starts N processes at once, each training the Simple CNN for `steps` steps of 64 random
28x28 images (the pipeline's network, channels-last, fp32), first with every core per process, then
with the share, then one process alone with every core (the quiet figure). The two settings
alternate within a round, so a machine's changing load falls on both alike. Prints images/s summed
over the processes, per round and as the median, and the ratio share / every core.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from pipelines import hardware

CHILD = """
import sys, time, torch
from pipelines.networks.simple_cnn import SimpleCNN
threads, steps = int(sys.argv[1]), int(sys.argv[2])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
net = SimpleCNN().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(net.parameters(), 1e-3)
x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (64,))
def step():
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(3):
    step()
t0 = time.perf_counter()
for _ in range(steps):
    step()
print(64 * steps / (time.perf_counter() - t0))
"""


def concurrent(workers: int, threads: int, steps: int) -> float:
    """Images/s summed over `workers` processes started together, each on `threads` (0: torch's default)."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(threads), str(steps)], stdout=subprocess.PIPE,
                              text=True) for _ in range(workers)]
    return sum(float(p.communicate()[0].strip()) for p in procs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    share = max(1, hardware.cores() // a.workers)
    rows = {"every core": [], f"share ({share})": [], "one process alone": []}
    for r in range(a.rounds):
        t0 = time.time()
        got = (concurrent(a.workers, 0, a.steps), concurrent(a.workers, share, a.steps), concurrent(1, 0, a.steps))
        for key, val in zip(rows, got):
            rows[key].append(val)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:,.0f} img/s" for k, v in zip(rows, got))
              + f" ({time.time() - t0:.0f} s)", flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{hardware.cpu().model}, {hardware.cores()} cores, {a.workers} processes, {a.steps} steps each; "
          f"median img/s summed: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()))
    every, shared = med["every core"], med[f"share ({share})"]
    print(f"share / every core: {shared / every:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
