"""torch's dropout against the bit-cut one (pipelines/layers.py): speed, and accuracy over seeds.

    python -m benchmarks.dropout speed [--rounds 5] [--threads 1]
    python -m benchmarks.dropout accuracy [--variant mnist_cnn] [--seeds 1 2 3] [--train-limit 10000] [--epochs 3]
                                          [--data data/prepared]

speed: per round, nn.Dropout and BitDropout in turn, so a machine's changing load falls on both:
the dropout layers alone (forward + backward, at the shapes the networks give them: the Simple CNN's
64x32x14x14 at p = 0.25 and 64x128 at p = 0.5, the AlexNet's 128x512 and 128x2048 at p = 0.5), then
one training step of each network (batch 64 and 128, channels-last, Adam, in the precision
`precision: auto` picks here: bf16 autocast on a CPU with AVX-512 BF16 or AMX, else fp32). Medians of the
per-call milliseconds and their ratios.

accuracy: a variant's recipe (params.yaml; mnist_cnn, the Simple CNN, or cifar_alexnet) trained from each
seed with each dropout, with the pipeline's own loop on the prepared arrays (`dvc repro preprocess@<dataset>`),
on a seeded subset of `train-limit` training images for `epochs` epochs, validated on the whole
validation split, in fp32 (or --precision bf16); Welch's test on the per-seed best accuracies, as `make precision` does.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipelines import config, hardware, models, stats
from pipelines.networks.alexnet_cifar import AlexNetCifar
from pipelines.layers import BitDropout
from pipelines.networks.simple_cnn import SimpleCNN

KINDS = ("nn.Dropout", "BitDropout")


def with_torch_dropout(model: nn.Module) -> nn.Module:
    """The model with each BitDropout replaced by nn.Dropout of the same p (the networks as they were)."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, BitDropout):
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], nn.Dropout(mod.p))
    return model


def ms_per_call(fn: Callable[[], object], reps: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def layer_case(kind: str, p: float, shape: tuple, channels_last: bool) -> Callable[[], None]:
    mod = (nn.Dropout(p) if kind == "nn.Dropout" else BitDropout(p)).train()
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(*shape)
    return lambda: mod(x).backward(g)


def step_case(kind: str, net: str, precision: str) -> Callable[[], None]:
    torch.manual_seed(0)
    model, shape = (SimpleCNN(), (64, 1, 28, 28)) if net == "simple_cnn" else (AlexNetCifar(), (128, 3, 32, 32))
    if kind == "nn.Dropout":
        with_torch_dropout(model)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (shape[0],))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = nn.functional.cross_entropy(models.logits_of(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


CASES = {
    "layer: Simple CNN drop1, 64x32x14x14, p 0.25": lambda k: layer_case(k, 0.25, (64, 32, 14, 14), True),
    "layer: Simple CNN drop2, 64x128, p 0.5": lambda k: layer_case(k, 0.5, (64, 128), False),
    "layer: AlexNet classifier.0, 128x512, p 0.5": lambda k: layer_case(k, 0.5, (128, 512), False),
    "layer: AlexNet classifier.3, 128x2048, p 0.5": lambda k: layer_case(k, 0.5, (128, 2048), False),
    "training step: Simple CNN, batch 64": lambda k, precision: step_case(k, "simple_cnn", precision),
    "training step: AlexNet, batch 128": lambda k, precision: step_case(k, "alexnet_cifar", precision),
}
STEPS = ("training step: Simple CNN, batch 64", "training step: AlexNet, batch 128")


def speed(rounds: int, reps: int, precision: str) -> None:
    got = {(c, k): [] for c in CASES for k in KINDS}
    for r in range(rounds):
        for case, make in CASES.items():
            for kind in KINDS:
                fn = make(kind, precision) if case in STEPS else make(kind)
                got[(case, kind)].append(ms_per_call(fn, reps))
        print(f"round {r + 1} of {rounds} done", file=sys.stderr, flush=True)
    print(f"{hardware.cpu().model}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, training steps "
          f"in {precision}; median ms per call over {rounds} rounds of {reps} calls\n")
    print("| case | nn.Dropout ms | BitDropout ms | speed-up |\n|---|---|---|---|")
    for case in CASES:
        a, b = (statistics.median(got[(case, k)]) for k in KINDS)
        print(f"| {case} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


def accuracy(name: str, seeds: list[int], train_limit: int, epochs: int, data: Path, precision: str) -> None:
    from pipelines.train import engine
    from pipelines.train.recipes import recipe_for
    from pipelines.train.setup import device_split, load_prepared, model_config

    params = config.load()
    v = params.variant(name)
    prep = load_prepared(data / v.dataset)
    pick = np.sort(np.random.default_rng(0).permutation(len(prep.train["y"]))[:train_limit])
    train = {"x": prep.train["x"][pick], "y": prep.train["y"][pick]}
    cfg = model_config(params, name, v, prep.meta)
    device = torch.device("cpu")
    best = {k: [] for k in KINDS}
    for seed in seeds:
        for kind in KINDS:   # the two dropouts alternate, so the machine's load falls on both alike
            engine.seed_everything(seed, params.threads)
            model = models.build(cfg)
            if kind == "nn.Dropout":
                with_torch_dropout(model)
            model = model.to(device, memory_format=torch.channels_last)
            t0 = time.perf_counter()
            res = engine.fit(model, device_split(train, cfg, device), device_split(prep.val, cfg, device),
                             recipe_for(v, epochs=epochs), device, precision, seed, desc=f"{kind} seed {seed}")
            best[kind].append(res.best_val_acc)
            print(f"seed {seed} {kind}: best val acc {res.best_val_acc:.2f} % at epoch {res.best_epoch} "
                  f"({res.train_images / res.train_seconds:.0f} img/s, {time.perf_counter() - t0:.0f} s)", flush=True)
    (m0, s0), (m1, s1) = (stats.mean_std(best[k]) for k in KINDS)
    p = stats.welch_p(best["nn.Dropout"], best["BitDropout"]) if len(seeds) > 1 else None
    says = ("one seed: no noise to compare with" if p is None else
            f"within the seeds' noise (Welch p = {p:.2f} > {stats.ALPHA})" if p > stats.ALPHA else
            f"BitDropout {'lower' if m1 < m0 else 'higher'} beyond the noise (Welch p = {p:.3f})")
    print(f"\n{name}, {train_limit:,} training images, {epochs} epochs, {len(prep.val['y']):,} validation images, "
          f"{precision}, seeds {seeds}: nn.Dropout {m0:.2f} ± {s0:.2f} %, BitDropout {m1:.2f} ± {s1:.2f} % "
          f"({m1 - m0:+.2f} pp); {says}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--reps", type=int, default=20)
    s.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    s.add_argument("--precision", choices=["fp32", "bf16"], default="bf16" if hardware.native_bf16() else "fp32",
                   help="of the training steps (default: what precision auto picks on this CPU)")
    a = sub.add_parser("accuracy")
    a.add_argument("--variant", default="mnist_cnn", help="a variant of params.yaml with dropout layers")
    a.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    a.add_argument("--train-limit", type=int, default=10000)
    a.add_argument("--epochs", type=int, default=3)
    a.add_argument("--data", type=Path, default=Path("data/prepared"))
    a.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args(argv)
    if args.what == "speed":
        if args.threads:
            torch.set_num_threads(args.threads)
        speed(args.rounds, args.reps, args.precision)
    else:
        accuracy(args.variant, args.seeds, args.train_limit, args.epochs, args.data, args.precision)
    return 0


if __name__ == "__main__":
    sys.exit(main())
