"""How far each training/evaluation path is from what this machine's arithmetic can do.

peaks():        the machine's own ceilings, measured on every torch thread: a large square GEMM in
                fp32 and bf16, and each network's heaviest convolution (by FLOPs) in both;
achieved():     a path's FLOP/s from the pipeline's flops_per_image (x3 for a training step:
                forward, and a backward of about twice the forward) and img/s, as % of the peak of
                the precision it ran in;
layer_times():  per-layer forward time of a training step from torch.profiler (each leaf module
                wrapped in a record_function), with each layer's FLOPs: the layer furthest below
                the peak while holding the most time is what holds a path back;
onednn_info():  the oneDNN version, and the ISA and kernels it dispatched (ONEDNN_VERBOSE), read
                from a child process.
"""
from __future__ import annotations

import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from torch import nn

from pipelines import hardware, models


def heaviest_conv(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Conv2d, tuple, int]:
    """(name, module, input shape for one image, forward FLOPs per image) of the conv with most FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    shapes: dict[str, tuple] = {}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: shapes.__setitem__(n, tuple(a[0].shape[1:])))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x[:1])
    for h in hooks:
        h.remove()
    per_module = fc.get_flop_counts()
    convs = {n: sum(per_module.get(f"{type(model).__name__}.{n}", {}).values()) for n in shapes}
    name = max(convs, key=convs.get)
    return name, dict(model.named_modules())[name], shapes[name], int(convs[name])


def peaks(conv_layers: dict[str, tuple[nn.Conv2d, tuple, int]], gemm_n: int = 2048, batch: int = 128,
          repeats: int = 3, min_seconds: float = 0.3) -> dict:
    """FLOP/s of a gemm_n^3 matrix product and of each given convolution (forward, `batch` images),
    in fp32 and bf16, on torch's threads. The convolutions run channels-last, as the pipeline does."""
    out: dict = {"threads": torch.get_num_threads(), "gemm_n": gemm_n, "conv_batch": batch}
    for prec in ("fp32", "bf16"):
        out[f"gemm_{prec}_flops"] = hardware.gemm_peak(prec, "cpu", gemm_n, repeats, min_seconds)
    for key, (conv, shape, flops) in conv_layers.items():
        x = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
        w = conv.weight.detach().contiguous(memory_format=torch.channels_last)
        bias = conv.bias.detach() if conv.bias is not None else None
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            xx, ww = x.to(dtype), w.to(dtype)
            bb = bias.to(dtype) if bias is not None else None
            s = hardware.best_seconds(lambda: F.conv2d(xx, ww, bb, conv.stride, conv.padding), repeats, min_seconds)
            out[f"conv_{key}_{prec}_flops"] = flops * batch / s
        out[f"conv_{key}_shape"] = (f"{conv.in_channels}->{conv.out_channels}, {conv.kernel_size[0]}x"
                                    f"{conv.kernel_size[1]}/{conv.stride[0]} on {shape[1]}x{shape[2]}")
    for prec in ("fp32", "bf16"):
        # The ceiling a path is judged against: the best this machine showed in that precision.
        out[f"peak_{prec}_flops"] = max(v for k, v in out.items() if k.endswith(f"_{prec}_flops"))
    return out


def achieved(flops_per_image: float, img_per_s: float, training: bool, precision: str, peak: dict) -> dict:
    flops = flops_per_image * (3 if training else 1) * img_per_s
    ceiling = peak[f"peak_{precision}_flops"]
    return {"gflop_per_s": flops / 1e9, "pct_of_peak": 100 * flops / ceiling, "peak_used": f"peak_{precision}"}


def layer_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, steps: int = 5) -> list[dict]:
    """Per leaf module: forward milliseconds per training step (torch.profiler), FLOPs, GFLOP/s, share."""
    from torch.profiler import ProfilerActivity, profile, record_function
    from torch.utils.flop_counter import FlopCounterMode

    leaves = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.eval()(x)
    counts = fc.get_flop_counts()
    root = type(model).__name__
    opened: dict[str, list] = {}

    def pre(_m, _a, n):
        ctx = record_function(f"layer::{n}")
        ctx.__enter__()
        opened.setdefault(n, []).append(ctx)

    def post(_m, _a, _o, n):
        opened[n].pop().__exit__(None, None, None)

    hooks = []
    for n, m in leaves.items():
        hooks.append(m.register_forward_pre_hook(lambda mm, a, n=n: pre(mm, a, n)))
        hooks.append(m.register_forward_hook(lambda mm, a, o, n=n: post(mm, a, o, n)))
    model.train()
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = F.cross_entropy(models.logits_of(model(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    finally:
        for h in hooks:
            h.remove()
    ms = {e.key.removeprefix("layer::"): e.cpu_time_total / 1e3 / steps
          for e in prof.key_averages() if e.key.startswith("layer::")}
    total = sum(ms.values()) or 1.0
    rows = []
    for n in leaves:
        flops = sum(counts.get(f"{root}.{n}", {}).values())
        t = ms.get(n, 0.0)
        rows.append({"layer": n, "type": type(leaves[n]).__name__, "forward_ms": t, "share_pct": 100 * t / total,
                     "forward_mflop": flops / 1e6, "gflop_per_s": flops / (t / 1e3) / 1e9 if t and flops else None})
    return sorted(rows, key=lambda r: -r["forward_ms"])


_ONEDNN_PROBE = """
import torch
m = torch.nn.Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
x = torch.randn(8, 32, 28, 28).contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
"""


def onednn_info() -> dict:
    """oneDNN's version and the ISA/kernels it chose for an fp32 and a bf16 convolution (ONEDNN_VERBOSE=1
    in a child process: the verbose lines are written by the C++ library, outside Python's streams)."""
    out: dict = {}
    try:
        proc = subprocess.run([sys.executable, "-c", _ONEDNN_PROBE], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"})
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": str(e)}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("onednn_verbose", "dnnl_verbose"))]
    kernels = set()
    for ln in lines:
        parts = ln.split(",")
        if "info" in parts and "oneDNN v" in ln:
            out["version"] = ln.split("oneDNN ", 1)[1].split(" (")[0]
        elif "isa:" in ln and "info" in parts:
            out["isa"] = ln.split("isa:", 1)[1]
        elif "exec" in parts and "convolution" in parts:
            i = parts.index("convolution")
            kernels.add(f"{parts[i + 1]} ({parts[i + 3].split(':')[1]})")  # implementation (src data type)
    out["conv_kernels"] = sorted(kernels)
    out["verbose_lines"] = len(lines)
    return out
