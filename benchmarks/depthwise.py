"""Depthwise convolutions under CPU bf16 autocast: oneDNN's bf16 backward against the float32
gradients of pipelines/layers.py (DepthwiseConv2d), per layer and per EfficientNet-Lite0 step.

    python -m benchmarks.depthwise [--rounds 3] [--calls 10] [--steps 4] [--batch 32] [--eval-batch 100] [--size 112]

layers: forward + backward of single depthwise layers at EfficientNet-Lite0's shapes for 112 px
inputs (batch 32, channels-last) in bf16, in float32, and as DepthwiseConv2d under bf16 autocast;
median ms of 10 calls per round. steps: training steps of the transfer backbone (EfficientNet-Lite0
with a 2-way head, 112 px, batch 32, Adam, bf16 autocast) with plain depthwise layers and with
DepthwiseConv2d, then evaluation (batch 100) of both, each round in turn so that the machine's load
falls on both alike; median img/s. The sizes above are the defaults; the options change them.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from pipelines.layers import fp32_depthwise_backward
from pipelines.networks.backbone import BackboneClassifier

SHAPES = [(1152, 4, 5, 1), (144, 28, 5, 2), (96, 56, 3, 2), (672, 7, 5, 1), (240, 14, 5, 1)]


def layer_ms(channels: int, size: int, k: int, stride: int, form: str, calls: int = 10, batch: int = 32) -> float:
    dtype = torch.float32 if form == "fp32" else torch.bfloat16
    conv = nn.Conv2d(channels, channels, k, stride, k // 2, groups=channels, bias=False)
    if form == "ours":
        fp32_depthwise_backward(conv)
        dtype = torch.float32
    conv = conv.to(dtype=dtype if form == "bf16" else torch.float32, memory_format=torch.channels_last)
    x = torch.randn(batch, channels, size, size, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=form == "ours"):
            y = conv(x)
        y.backward(torch.ones_like(y))

    once()
    t0 = time.perf_counter()
    for _ in range(calls):
        once()
    return (time.perf_counter() - t0) / calls * 1e3


def step_rate(model: nn.Module, train: bool, steps: int = 4, bs: int = 32, size: int = 112) -> float:
    x = torch.randn(bs, 3, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (bs,))
    opt = torch.optim.Adam(model.parameters(), 3e-4)
    model.train(train)

    def once():
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(train):
            out = model(x)
            if train:
                loss = nn.functional.cross_entropy(out, y)
        if train:
            opt.zero_grad()
            loss.backward()
            opt.step()

    once()
    t0 = time.perf_counter()
    for _ in range(steps):
        once()
    return steps * bs / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.depthwise", description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=10, help="timed calls of each layer per round")
    ap.add_argument("--steps", type=int, default=4, help="timed steps of each model per round")
    ap.add_argument("--batch", type=int, default=32, help="training batch, and the layers' batch")
    ap.add_argument("--eval-batch", type=int, default=100)
    ap.add_argument("--size", type=int, default=112, help="the backbone's input size in px")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("layer (channels, size, kernel, stride): forward + backward ms, bf16 / fp32 / float32 gradients")
    for shape in SHAPES:
        got = {f: statistics.median(layer_ms(*shape, f, args.calls, args.batch) for _ in range(args.rounds))
               for f in ("bf16", "fp32", "ours")}
        print(f"  {shape}: {got['bf16']:.1f} / {got['fp32']:.1f} / {got['ours']:.1f}")
    torch.manual_seed(0)
    plain = BackboneClassifier("efficientnet_lite0")
    for m in plain.modules():   # back to plain convolutions: the comparison's other side
        if type(m) is not nn.Conv2d and isinstance(m, nn.Conv2d):
            m.__class__ = nn.Conv2d
    ours = copy.deepcopy(plain)
    fp32_depthwise_backward(ours)
    models = {"bf16": plain.to(memory_format=torch.channels_last), "float32 gradients": ours.to(memory_format=torch.channels_last)}
    for train in (True, False):
        rates: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.rounds):
            for name, m in models.items():
                rates[name].append(step_rate(m, train, args.steps, args.batch if train else args.eval_batch, args.size))
        print(("training" if train else "evaluation") + " img/s (median): " +
              ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in rates.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
