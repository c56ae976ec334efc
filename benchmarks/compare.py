"""Our training loop against the usual notebook recipe, in one process, on the same arrays.

    python -m benchmarks.compare [--train-limit N] [--epochs 1] [--json OUT]

For the Simple CNN (prepared `mnist` arrays, 28x28x1) and the AlexNet (prepared `cifar10`
arrays, 32x32x3), each trained from the same seeded initialisation with the lab variants' recipe
from params.yaml:
  ours   engine.fit + engine.evaluate: uint8 NHWC tensors, batched augmentation, channels-last,
         precision `auto` (bf16 only where the CPU/GPU runs it natively);
  usual  a torchvision-style Dataset returning PIL images, per-sample ToTensor/Normalize
         (+ RandomCrop/RandomHorizontalFlip for the AlexNet), DataLoader(shuffle=True,
         num_workers=0), a plain fp32 NCHW loop.
Then: a roofline (benchmarks/roofline.py: measured peaks, every path's FLOP/s and % of peak,
per-layer profiler times, oneDNN's ISA); fp32/bf16 x channels-last/NCHW forms of a training step
for both networks; the embed stage's t-SNE against its earlier schedule, with the maps' quality;
fp32 vs bf16 autocast in our loop; torch.compile for evaluation in a child process given a time
limit. --quick runs a small subset of all this (tests use it).

Writes the figures to benchmarks/results-<date>-<device>.json and a Markdown summary beside it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import multiprocessing as mp
import os
import platform
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Optional

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import engine, io, models
from pipelines.embed import tsne as features

# (benchmark key, params.yaml variant whose recipe it uses, prepared dataset folder, model name)
MODELS = [
    ("simple_cnn", "mnist_cnn", "mnist", "simple_cnn"),
    ("alexnet", "cifar_alexnet", "cifar10", "alexnet_cifar"),
]
# Images of fit()'s own per-epoch validation; the timed evaluation covers the whole set separately.
FIT_VAL_SLICE = 256


@dataclass
class Arrays:
    """A prepared dataset as plain arrays: uint8 NHWC images, int labels, per-channel mean/std."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    mean: list[float]
    std: list[float]
    n_classes: int
    source: str = "synthetic"


# ---------------------------------------------------------------------------- machine & memory
def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            line = next((l for l in f if l.startswith("flags")), "")
        return set(line.split(":", 1)[-1].split())
    except OSError:
        return set()


def machine_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), model)
    except OSError:
        pass
    flags = _cpu_flags()
    import torchvision

    return {
        "cpu_model": model,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")},
        "all_flags": " ".join(sorted(flags)),
        "native_bf16": engine.cpu_has_native_bf16(),
        # Other jobs shared this machine: the load says how much the figures may have suffered.
        "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
    }


class PeakRss:
    """Peak resident memory while the block runs, sampled by a thread: getrusage's ru_maxrss is a
    process-lifetime maximum, so it cannot tell apart two paths run one after the other."""

    def __init__(self, interval_s: float = 0.02):
        self.proc = psutil.Process()
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> "PeakRss":
        gc.collect()
        self.start = self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    def figures(self) -> dict:
        return {"peak_rss_mib": self.peak / 2**20, "peak_rss_increase_mib": (self.peak - self.start) / 2**20}


def _ru_maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------------------- the usual recipe
class NotebookDataset(torch.utils.data.Dataset):
    """What tutorials write: one PIL image per __getitem__, transformed one sample at a time."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        img = self.x[i]
        img = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)  # mode L or RGB
        return self.transform(img), int(self.y[i])


def notebook_transforms(data: Arrays, augment: str, train: bool):
    from torchvision import transforms as T

    steps = []
    if train and augment == "crop_flip":
        size = data.train_x.shape[1]
        # The same padding engine's crop uses, so both paths see the same augmentation.
        steps += [T.RandomCrop(size, padding=max(2, size // 8)), T.RandomHorizontalFlip()]
    elif train and augment != "none":
        raise ValueError(f"the usual-recipe path implements augment none and crop_flip, not {augment!r}")
    return T.Compose(steps + [T.ToTensor(), T.Normalize(data.mean, data.std)])


def usual_path(model: torch.nn.Module, data: Arrays, r: engine.Recipe, seed: int) -> dict:
    """The plain loop: DataLoader over PIL images, Adam, fp32, default (NCHW) memory format."""
    loader = torch.utils.data.DataLoader(
        NotebookDataset(data.train_x, data.train_y, notebook_transforms(data, r.augment, True)),
        batch_size=r.batch_size, shuffle=True, num_workers=0, generator=torch.Generator().manual_seed(seed))
    val_loader = torch.utils.data.DataLoader(
        NotebookDataset(data.val_x, data.val_y, notebook_transforms(data, r.augment, False)),
        batch_size=r.eval_batch_size, shuffle=False, num_workers=0)
    opt = engine.make_optimizer(model.parameters(), r)
    train_s, seen, loss_sum, correct = 0.0, 0, 0.0, 0
    for _ in range(r.epochs):
        model.train()
        t0 = time.perf_counter()
        for xb, yb in loader:
            opt.zero_grad()
            logits = models.logits_of(model(xb))
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        train_s += time.perf_counter() - t0
    model.eval()
    t0 = time.perf_counter()
    val_loss, val_correct = 0.0, 0
    with torch.no_grad():
        for xb, yb in val_loader:
            logits = models.logits_of(model(xb))
            val_loss += F.cross_entropy(logits, yb, reduction="sum").item()
            val_correct += (logits.argmax(1) == yb).sum().item()
    eval_s = time.perf_counter() - t0
    n_val = len(data.val_y)
    return {"train_seconds": train_s, "train_images": seen, "eval_seconds": eval_s, "eval_images": n_val,
            "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1) * 100,
            "val_loss": val_loss / n_val, "val_acc": val_correct / n_val * 100, "precision": "fp32",
            "memory_format": "contiguous (NCHW)", "loader": "DataLoader(shuffle=True, num_workers=0), PIL per sample"}


# ---------------------------------------------------------------------------- our loop
def _device_data(x, y, data: Arrays, device) -> engine.DeviceData:
    return engine.DeviceData.from_arrays(x, y, data.mean, data.std, device)


def ours_path(model: torch.nn.Module, data: Arrays, r: engine.Recipe, seed: int, device: torch.device,
              precision: str) -> tuple[dict, torch.nn.Module]:
    train_d = _device_data(data.train_x, data.train_y, data, device)
    val_d = _device_data(data.val_x, data.val_y, data, device)
    fit_val = _device_data(data.val_x[:FIT_VAL_SLICE], data.val_y[:FIT_VAL_SLICE], data, device)
    model = model.to(device, memory_format=torch.channels_last)
    res = engine.fit(model, train_d, fit_val, r, device, precision, seed, desc="bench")
    t0 = time.perf_counter()
    val_loss, val_acc, _ = engine.evaluate(model, val_d, r.eval_batch_size, device, precision)
    if device.type == "cuda":
        torch.cuda.synchronize()
    eval_s = time.perf_counter() - t0
    last = res.history[-1]
    return {"train_seconds": res.train_seconds, "train_images": res.train_images, "eval_seconds": eval_s,
            "eval_images": len(val_d), "train_loss": last["train_loss"], "train_acc": last["train_acc"],
            "val_loss": val_loss, "val_acc": val_acc, "precision": precision, "memory_format": "channels_last",
            "loader": "uint8 tensors on the device, batched augmentation"}, model


def _rates(row: dict) -> dict:
    row["train_img_per_s"] = row["train_images"] / row["train_seconds"] if row["train_seconds"] else 0.0
    row["eval_img_per_s"] = row["eval_images"] / row["eval_seconds"] if row["eval_seconds"] else 0.0
    row["seconds"] = row["train_seconds"] + row["eval_seconds"]
    return row


def _build(name: str, data: Arrays, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # same seed, same initial weights for both paths
    return models.build({"model": name, "in_channels": data.train_x.shape[-1], "image_size": data.train_x.shape[1],
                         "n_classes": data.n_classes, "hidden": 128})


def compare_model(key: str, model_name: str, data: Arrays, r: engine.Recipe, seed: int, device, precision,
                  log=print) -> tuple[dict, torch.nn.Module]:
    m_ours, m_usual = _build(model_name, data, seed), _build(model_name, data, seed)
    same_init = all(torch.equal(a, b) for a, b in zip(m_ours.state_dict().values(), m_usual.state_dict().values()))
    out = {"model": model_name, "params": sum(p.numel() for p in m_ours.parameters()),
           "input": list(data.train_x.shape[1:]), "train_n": len(data.train_y), "val_n": len(data.val_y),
           "recipe": {f.name: getattr(r, f.name) for f in fields(r)}, "same_init": same_init}
    log(f"{key}: ours ({len(data.train_y)} train / {len(data.val_y)} val images) ...")
    with PeakRss() as mem:
        ours, trained = ours_path(m_ours, data, r, seed, device, precision)
    out["ours"] = {**_rates(ours), **mem.figures()}
    log(f"{key}: usual ...")
    with PeakRss() as mem:
        usual = usual_path(m_usual, data, r, seed)
    out["usual"] = {**_rates(usual), **mem.figures()}
    u, o = out["usual"], out["ours"]
    out["ratio_ours_over_usual"] = {
        "train_img_per_s": o["train_img_per_s"] / u["train_img_per_s"] if u["train_img_per_s"] else None,
        "eval_img_per_s": o["eval_img_per_s"] / u["eval_img_per_s"] if u["eval_img_per_s"] else None,
        "seconds": o["seconds"] / u["seconds"] if u["seconds"] else None,
    }
    del m_usual
    gc.collect()
    return out, trained


# ---------------------------------------------------------------------------- t-SNE
def compare_tsne(model: torch.nn.Module, data: Arrays, seed: int, device, precision, perplexity: float = 30.0) -> dict:
    """The embed stage's t-SNE (features.tsne_2d: every core, stopped when converged) against openTSNE
    as the stage ran it before (one thread, its default 250 + 500 iterations), on the same features:
    seconds, and the map's quality (5-NN accuracy on the map, trustworthiness, silhouette)."""
    from openTSNE import TSNE

    val_d = _device_data(data.val_x, data.val_y, data, device)
    feats = engine.extract(model, {"fc1": model.fc1}, val_d, 1000, device, precision)["fc1"]
    y = data.val_y
    perp = min(perplexity, max(2.0, (len(feats) - 1) / 3))
    keep = ("knn_acc_tsne", "trustworthiness", "silhouette_tsne")
    out = {"features": list(feats.shape), "layer": "fc1 (Simple CNN trained by our loop)", "perplexity": perp}
    t0, info = time.perf_counter(), {}
    xy, backend = features.tsne_2d(feats, seed, perp, info=info)
    q = features.quality(feats, xy, y, seed)
    out["pipeline"] = {"backend": backend, "seconds": time.perf_counter() - t0 - q["seconds"],
                       "threads": torch.get_num_threads(), **info, **{k: q.get(k) for k in keep}}
    t0 = time.perf_counter()
    xy = np.asarray(TSNE(2, perplexity=perp, initialization="pca", random_state=seed, n_jobs=1).fit(
        feats.astype(np.float32)))
    secs = time.perf_counter() - t0
    q = features.quality(feats, xy, y, seed)
    out["opentsne_one_thread_750"] = {"seconds": secs, "threads": 1, "iterations": 750, **{k: q.get(k) for k in keep}}
    out["speedup"] = secs / out["pipeline"]["seconds"] if out["pipeline"]["seconds"] else None
    return out


# ---------------------------------------------------------------------------- fp32 vs bf16
def compare_precision(model_name: str, data: Arrays, r: engine.Recipe, batches: int, seed: int, device) -> dict:
    n = min(len(data.train_y), batches * r.batch_size)
    sub = _device_data(data.train_x[:n], data.train_y[:n], data, device)
    tiny_val = _device_data(data.val_x[:FIT_VAL_SLICE], data.val_y[:FIT_VAL_SLICE], data, device)
    out = {"model": model_name, "batches": -(-n // r.batch_size), "batch_size": r.batch_size, "images": n,
           "auto_picks": engine.pick_precision("auto", device), "native_bf16": engine.cpu_has_native_bf16()}
    for prec in ("fp32", "bf16"):
        m = _build(model_name, data, seed).to(device, memory_format=torch.channels_last)
        res = engine.fit(m, sub, tiny_val, replace(r, epochs=1), device, prec, seed, desc=f"bench {prec}")
        out[prec] = {"train_seconds": res.train_seconds, "train_img_per_s": res.train_images / res.train_seconds,
                     "train_loss": res.history[-1]["train_loss"]}
    out["bf16_speedup"] = out["bf16"]["train_img_per_s"] / out["fp32"]["train_img_per_s"]
    return out


# Numerical forms of a training step measured against each other (interleaved rounds, best of each:
# other jobs on a shared machine slow whichever form they happen to meet, not one form throughout).
FORMS = {
    "fp32 channels-last": ("fp32", True),
    "fp32 NCHW": ("fp32", False),
    "bf16 autocast channels-last": ("bf16", True),
    "bf16 autocast NCHW": ("bf16", False),
}


def compare_forms(model_name: str, data: Arrays, r: engine.Recipe, seed: int, steps: int, rounds: int,
                  forms: dict = FORMS) -> dict:
    """img/s of training steps and of evaluation batches in each numerical form, same weights and batch."""
    n = min(len(data.train_y), r.batch_size)
    d = _device_data(data.train_x[:n], data.train_y[:n], data, torch.device("cpu"))
    xb, yb = d.normalise(d.x), d.y
    ev = _device_data(data.val_x[: r.eval_batch_size], data.val_y[: r.eval_batch_size], data, torch.device("cpu"))
    xe = ev.normalise(ev.x)
    nets = {}
    for name, (prec, cl) in forms.items():
        m = _build(model_name, data, seed)
        fmt = torch.channels_last if cl else torch.contiguous_format
        nets[name] = (m.to(memory_format=fmt), engine.make_optimizer(m.parameters(), r), prec,
                      xb.contiguous(memory_format=fmt), xe.contiguous(memory_format=fmt))
    best = {name: {"train": 0.0, "eval": 0.0} for name in forms}
    losses = {}
    for _ in range(rounds):
        for name, (m, opt, prec, x, x_eval) in nets.items():
            dev = torch.device("cpu")
            m.train()
            t0 = time.perf_counter()
            for _ in range(steps):
                with engine.autocast(dev, prec):
                    loss = F.cross_entropy(models.logits_of(m(x)).float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            best[name]["train"] = max(best[name]["train"], steps * len(yb) / (time.perf_counter() - t0))
            losses[name] = float(loss.detach())
            m.eval()
            with torch.no_grad(), engine.autocast(dev, prec):
                t0 = time.perf_counter()
                m(x_eval)
                best[name]["eval"] = max(best[name]["eval"], len(x_eval) / (time.perf_counter() - t0))
    base = best["fp32 channels-last"]
    return {"model": model_name, "batch_size": len(yb), "eval_batch": len(xe), "steps": steps, "rounds": rounds,
            "forms": {name: {"train_img_per_s": b["train"], "eval_img_per_s": b["eval"],
                             "train_vs_fp32": b["train"] / base["train"], "eval_vs_fp32": b["eval"] / base["eval"],
                             "loss_after": losses[name]} for name, b in best.items()}}


def compare_roofline(datasets: dict[str, Arrays], recipes: dict[str, engine.Recipe], results: dict, seed: int,
                     precision: str, quick: bool) -> dict:
    """The machine's measured peaks, every path of `results` as FLOP/s and % of peak, per-layer times."""
    from benchmarks import roofline
    from pipelines.train.stage import flops_per_image

    out: dict = {"onednn": roofline.onednn_info()}
    nets, convs = {}, {}
    for key, _v, _d, model_name in MODELS:
        data = datasets[key]
        m = _build(model_name, data, seed)
        cfg = {"in_channels": data.train_x.shape[-1], "image_size": data.train_x.shape[1]}
        nets[key] = (m, flops_per_image(m, cfg))
        name, conv, shape, _f = roofline.heaviest_conv(m, torch.zeros(1, cfg["in_channels"], cfg["image_size"],
                                                                       cfg["image_size"]))
        convs[f"{key}.{name}"] = (conv, shape, _f)
    out["peak"] = roofline.peaks(convs, gemm_n=256 if quick else 2048, batch=16 if quick else 128,
                                 repeats=1 if quick else 3, min_seconds=0.02 if quick else 0.3)
    out["paths"] = {}
    for key, (m, flops) in nets.items():
        for path in ("ours", "usual"):
            row = results[key][path]
            prec = row["precision"]
            out["paths"][f"{key}/{path}"] = {
                "flops_per_image": flops, "precision": prec,
                "train": roofline.achieved(flops, row["train_img_per_s"], True, prec, out["peak"]),
                "eval": roofline.achieved(flops, row["eval_img_per_s"], False, prec, out["peak"])}
        data, r = datasets[key], recipes[key]
        n = min(len(data.train_y), r.batch_size)
        d = _device_data(data.train_x[:n], data.train_y[:n], data, torch.device("cpu"))
        layers = roofline.layer_times(m.to(memory_format=torch.channels_last), d.normalise(d.x), d.y, precision,
                                      steps=1 if quick else 5)
        out[f"layers_{key}"] = layers
    return out


# ---------------------------------------------------------------------------- torch.compile
def _compile_child(q, cfg: dict, state: dict, x, y, mean, std, batch: int, threads: int, precision: str) -> None:
    # Own process group, so a timed-out compile is stopped together with inductor's worker processes.
    os.setsid()
    torch.set_num_threads(threads)
    try:
        device = torch.device("cpu")
        model = models.build(cfg)
        model.load_state_dict(state)
        model = model.to(memory_format=torch.channels_last).eval()
        d = engine.DeviceData.from_arrays(x, y, mean, std, device)
        # Every batch shape the timed evaluation will meet (a full batch and the remainder), so
        # the warm-up compiles them all and the timed pass compiles nothing.
        n_warm = min(len(y), batch + (len(y) % batch if len(y) > batch else 0))
        warm = engine.DeviceData(d.x[:n_warm], d.y[:n_warm], d.mean, d.std)

        def timed(m, data):
            t0 = time.perf_counter()
            _, acc, logits = engine.evaluate(m, data, batch, device, precision)
            return time.perf_counter() - t0, acc, logits

        eager_s, eager_acc, eager_logits = timed(model, d)
        q.put(("eager", {"eager_seconds": eager_s, "eager_img_per_s": len(y) / eager_s, "eager_acc": eager_acc}))
        compiled = torch.compile(model)
        compile_s, _, _ = timed(compiled, warm)
        q.put(("compiled", {"compile_seconds": compile_s, "compile_warmup_images": n_warm}))
        comp_s, comp_acc, comp_logits = timed(compiled, d)
        q.put(("done", {"status": "ok", "compiled_seconds": comp_s, "compiled_img_per_s": len(y) / comp_s,
                        "speedup": eager_s / comp_s, "compiled_acc": comp_acc,
                        "max_abs_logit_diff": float((eager_logits - comp_logits).abs().max())}))
    except Exception as e:  # noqa: BLE001  (any compile failure is a result to report, not a crash)
        msg = str(e).splitlines()[0][:300] if str(e) else ""
        q.put(("done", {"status": f"failed: {type(e).__name__}: {msg}"}))


def compare_compile(model: torch.nn.Module, model_name: str, data: Arrays, batch: int, timeout_s: float,
                    precision: str) -> dict:
    """torch.compile'd evaluation against eager, in a child process. timeout_s bounds the compilation
    (the first compiled calls); the eager pass before it and the timed pass after it get their own,
    looser bounds, since neither can hang on a compiler."""
    if timeout_s <= 0:
        return {"status": "skipped (--compile-timeout 0)"}
    import queue

    cfg = {"model": model_name, "in_channels": data.val_x.shape[-1], "image_size": data.val_x.shape[1],
           "n_classes": data.n_classes, "hidden": 128}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    ctx = mp.get_context("spawn")  # fork after torch's thread pools started is unsafe
    q = ctx.Queue()
    p = ctx.Process(target=_compile_child, args=(q, cfg, state, data.val_x, data.val_y, data.mean, data.std,
                                                 batch, torch.get_num_threads(), precision))
    t0 = time.perf_counter()
    res: dict = {}
    p.start()
    stage, limits = "start", {"start": max(300.0, timeout_s), "eager": timeout_s}
    try:
        while True:
            # After compiling, the compiled pass is bounded like eager: a few times its time at most.
            limit = limits.get(stage, 60.0 + 10 * res.get("eager_seconds", 60.0))
            waited, got = 0.0, None
            # Short waits, so a child that dies (out of memory, a crash in the compiler) is seen at once.
            while got is None and waited < limit and p.is_alive():
                try:
                    got = q.get(timeout=min(1.0, limit - waited))
                except queue.Empty:
                    waited += 1.0
            if got is None:
                try:
                    got = q.get(timeout=0.5)  # a last message may have raced the exit
                except queue.Empty:
                    pass
            if got is None:
                what = "compiling" if stage == "eager" else f"after stage {stage!r}"
                res["status"] = (f"timed out {what} after {limit:.0f} s (skipped)" if p.is_alive() else
                                 f"failed: child process exited with code {p.exitcode} {what}")
                break
            stage, figures = got
            res.update(figures)
            if stage == "done":
                break
    finally:
        if p.is_alive():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                p.kill()  # still starting up: not yet its own group leader
        p.join(5)
        q.close()
    res["wall_seconds"] = time.perf_counter() - t0
    res["limit_s"] = timeout_s
    return res


# ---------------------------------------------------------------------------- run & report
def run(datasets: dict[str, Arrays], recipes: dict[str, engine.Recipe], *, seed: int = 42,
        precision_batches: int = 200, compile_timeout_s: float = 60.0, device_name: str = "auto",
        log=print, progress=lambda result: None, quick: bool = False, tsne: bool = True) -> dict:
    """Every measurement; datasets and recipes are keyed by the MODELS' benchmark key. progress(result)
    is called after each section, so a long run stopped part-way still leaves its figures."""
    engine.seed_everything(seed)
    device = engine.pick_device(device_name)
    precision = engine.pick_precision("auto", device)
    result = {"date": dt.date.today().isoformat(), "device": str(device), "machine": machine_info(),
              "seed": seed, "models": {}}
    trained = {}
    for key, _variant, _ds, model_name in MODELS:
        result["models"][key], trained[key] = compare_model(key, model_name, datasets[key], recipes[key], seed,
                                                            device, precision, log)
        progress(result)
    if device.type == "cpu":
        log("roofline: peaks, FLOP/s of every path, per-layer times ...")
        result["roofline"] = compare_roofline(datasets, recipes, result["models"], seed, precision, quick)
        progress(result)
        log("numerical forms: fp32/bf16 x channels-last/NCHW ...")
        result["forms"] = {key: compare_forms(model_name, datasets[key], recipes[key], seed,
                                              steps=2 if quick else 10, rounds=1 if quick else 3)
                           for key, _v, _d, model_name in MODELS}
        progress(result)
    if tsne:
        log("t-SNE: the pipeline's (every core, converged) vs openTSNE on one thread, 750 iterations ...")
        result["tsne"] = compare_tsne(trained["simple_cnn"], datasets["simple_cnn"], seed, device, precision)
        progress(result)
    log(f"precision: fp32 vs bf16 autocast, {precision_batches} batches ...")
    result["precision"] = compare_precision("simple_cnn", datasets["simple_cnn"], recipes["simple_cnn"],
                                            precision_batches, seed, device)
    progress(result)
    result["compile_eval"] = {}
    for key, _v, _d, model_name in MODELS:
        if device.type != "cpu":
            result["compile_eval"][key] = {"status": "skipped (measured on CPU only)"}
            continue
        log(f"torch.compile evaluation of {key} (limit {compile_timeout_s:.0f} s) ...")
        result["compile_eval"][key] = compare_compile(trained[key].cpu(), model_name, datasets[key],
                                                      recipes[key].eval_batch_size, compile_timeout_s, precision)
    result["process_ru_maxrss_mib"] = _ru_maxrss_mib()
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["notes"] = [
        "usual path: DataLoader(batch_size as the recipe, shuffle=True, num_workers=0); PIL image per sample, "
        "ToTensor + Normalize (+ RandomCrop with padding size//8 and RandomHorizontalFlip for crop_flip); fp32, NCHW",
        f"ours: engine.fit + engine.evaluate, precision auto -> {precision}, channels-last; fit's own per-epoch "
        f"validation runs on the first {FIT_VAL_SLICE} validation images, the timed evaluation on all of them",
        "both paths start from identical weights (same seed) and run in this one process, ours first; "
        "peak RSS is sampled every 20 ms during each path (increase = over the RSS at the path's start)",
        "t-SNE: the pipeline's features.tsne_2d (every core, stopped when converged) against openTSNE on one "
        "thread with its default 250 + 500 iterations (the embed stage's earlier settings), same features",
        "roofline: training FLOP/s = 3 x flops_per_image x img/s (forward + a backward of about twice the "
        "forward), evaluation 1 x; % of the best GEMM/convolution peak measured here in the path's precision",
        "bf16 autocast on a CPU without AVX-512 BF16/AMX is emulated: it is the slow case, and why "
        "precision auto picks fp32 there",
    ]
    return result


def _fmt(v, spec=",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def _roofline_md(res: dict) -> list[str]:
    if "roofline" not in res:
        return []
    rf, pk = res["roofline"], res["roofline"]["peak"]
    od = rf["onednn"]
    lines = ["", "## Roofline", "",
             f"oneDNN {od.get('version', '?')}, ISA: {od.get('isa', '?')}; convolution kernels: "
             f"{', '.join(od.get('conv_kernels', [])) or '?'}.", "",
             f"Measured peaks ({pk['threads']} threads): GEMM {pk['gemm_n']}^3 fp32 {pk['gemm_fp32_flops'] / 1e9:,.0f} "
             f"GFLOP/s, bf16 {pk['gemm_bf16_flops'] / 1e9:,.0f} GFLOP/s; "
             + "; ".join(f"conv {k[5:-6]} ({pk[k[:-11] + '_shape']}) {v / 1e9:,.0f}"
                         for k, v in pk.items() if k.startswith("conv_") and k.endswith("_flops"))
             + " GFLOP/s (batch " + str(pk["conv_batch"]) + "). Peak used: the best of these per precision.", "",
             "| path | precision | MFLOP/img (fwd) | train GFLOP/s | train % of peak | eval GFLOP/s | eval % of peak |",
             "|---|---|---|---|---|---|---|"]
    for key, p in rf["paths"].items():
        lines.append(f"| {key} | {p['precision']} | {p['flops_per_image'] / 1e6:.1f} | {p['train']['gflop_per_s']:.1f} | "
                     f"{p['train']['pct_of_peak']:.0f} % | {p['eval']['gflop_per_s']:.1f} | {p['eval']['pct_of_peak']:.0f} % |")
    for key in (k for k in rf if k.startswith("layers_")):
        top = [r for r in rf[key] if r["forward_mflop"] > 0][:4]
        lines += ["", f"{key[7:]}, forward time per layer of a training step (torch.profiler), heaviest first: "
                  + "; ".join(f"{r['layer']} ({r['type']}) {r['forward_ms']:.2f} ms, {r['share_pct']:.0f} %, "
                              f"{_fmt(r['gflop_per_s'], '.0f')} GFLOP/s" for r in top) + "."]
    if "forms" in res:
        lines += ["", "| model | form | train img/s | x fp32 | eval img/s | x fp32 |", "|---|---|---|---|---|---|"]
        for key, f in res["forms"].items():
            for name, r in f["forms"].items():
                lines.append(f"| {key} | {name} | {r['train_img_per_s']:,.0f} | {r['train_vs_fp32']:.2f} | "
                             f"{r['eval_img_per_s']:,.0f} | {r['eval_vs_fp32']:.2f} |")
    return lines


def render_markdown(res: dict) -> str:
    m = res["machine"]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in m["flags"].items())
    lines = [f"# Benchmark {res['date']} ({res['device']})", "",
             f"{m['cpu_model']}, {m['cpu_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), "
             f"torchvision {m['torchvision']}, {m['memory_gib']} GiB; {flags}; load average "
             f"{m['load_average_at_start'][0]} at start, {m.get('load_average_at_end', ['?'])[0]} at end", "",
             "| model | path | train img/s | eval img/s | train s | eval s | val acc % | peak RSS MiB (+increase) |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in res["models"].items():
        for path in ("ours", "usual"):
            p = r[path]
            lines.append(f"| {key} | {path} ({p['precision']}) | {_fmt(p['train_img_per_s'])} | "
                         f"{_fmt(p['eval_img_per_s'])} | {p['train_seconds']:.1f} | {p['eval_seconds']:.1f} | "
                         f"{p['val_acc']:.2f} | {p['peak_rss_mib']:.0f} (+{p['peak_rss_increase_mib']:.0f}) |")
        q = r["ratio_ours_over_usual"]
        lines.append(f"| {key} | ratio ours/usual | {_fmt(q['train_img_per_s'], '.2f')}x | "
                     f"{_fmt(q['eval_img_per_s'], '.2f')}x | | | | |")
    lines += _roofline_md(res)
    if "tsne" in res:
        t = res["tsne"]
        a, b = t["pipeline"], t["opentsne_one_thread_750"]
        lines += ["", f"t-SNE of {t['features'][0]:,} x {t['features'][1]} {t['layer']} features:", "",
                  "| t-SNE | seconds | iterations | 5-NN on map % | trustworthiness | silhouette |", "|---|---|---|---|---|---|",
                  f"| pipeline ({a['threads']} threads, converged) | {a['seconds']:.1f} | {a.get('iterations')} | "
                  f"{_fmt(a['knn_acc_tsne'], '.2f')} | {_fmt(a['trustworthiness'], '.4f')} | {_fmt(a['silhouette_tsne'], '.3f')} |",
                  f"| openTSNE 1 thread, 750 iterations | {b['seconds']:.1f} | 750 | {_fmt(b['knn_acc_tsne'], '.2f')} | "
                  f"{_fmt(b['trustworthiness'], '.4f')} | {_fmt(b['silhouette_tsne'], '.3f')} |",
                  "", f"speed-up {_fmt(t['speedup'], '.2f')}x."]
    p = res["precision"]
    lines += ["", f"Our loop, {p['model']}, {p['batches']} batches of {p['batch_size']}: fp32 "
              f"{p['fp32']['train_img_per_s']:,.0f} img/s, bf16 autocast {p['bf16']['train_img_per_s']:,.0f} img/s "
              f"({p['bf16_speedup']:.2f}x); native bf16: {'yes' if p['native_bf16'] else 'no'}, "
              f"precision auto picks {p['auto_picks']}."]
    for key, c in res["compile_eval"].items():
        if c.get("status") == "ok":
            lines.append(f"\ntorch.compile evaluation, {key}: eager {c['eager_img_per_s']:,.0f} img/s, compiled "
                         f"{c['compiled_img_per_s']:,.0f} img/s ({c['speedup']:.2f}x), compiling "
                         f"{c['compile_seconds']:.1f} s.")
        else:
            lines.append(f"\ntorch.compile evaluation, {key}: {c.get('status')}.")
    lines += ["", "Notes:", *[f"- {n}" for n in res["notes"]]]
    return "\n".join(lines) + "\n"


def print_table(res: dict, out=sys.stdout) -> None:
    out.write("\n" + render_markdown(res))
    out.flush()


def load_arrays(folder: Path, train_limit: int, val_limit: int, seed: int) -> Arrays:
    from pipelines.train.setup import load_prepared

    prep = load_prepared(folder)

    def take(split: dict, limit: int):
        x, y = split["x"], split["y"]
        if limit and limit < len(y):
            idx = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
            x, y = x[idx], y[idx]
        return np.ascontiguousarray(x), y.astype(np.int64)

    tx, ty = take(prep.train, train_limit)
    vx, vy = take(prep.val, val_limit)
    return Arrays(tx, ty, vx, vy, list(prep.meta["mean"]), list(prep.meta["std"]), len(prep.meta["classes"]),
                  prep.meta.get("source", "?"))


def recipes_from_params(epochs: int) -> dict[str, engine.Recipe]:
    from pipelines import config

    params = config.load()
    out = {}
    for key, variant, _ds, _m in MODELS:
        v = params.variant(variant)
        out[key] = engine.Recipe(**{f.name: getattr(v, f.name) for f in fields(engine.Recipe)})
        out[key] = replace(out[key], epochs=epochs)
    return out


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="our training loop vs the usual notebook recipe")
    ap.add_argument("--train-limit", type=int, default=0, help="seeded subset of N training images (0 = all)")
    ap.add_argument("--val-limit", type=int, default=0, help="seeded subset of N validation images (0 = all)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--precision-batches", type=int, default=200, help="batches of the fp32 vs bf16 run")
    ap.add_argument("--compile-timeout", type=float, default=60.0, help="seconds torch.compile may take (0 = skip)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--quick", action="store_true",
                    help="a minute's subset: 2,000/1,000 images, small peak problems, no t-SNE or torch.compile")
    ap.add_argument("--data", type=Path, default=Path("data/prepared"), help="folder of the prepared datasets")
    ap.add_argument("--json", type=Path, default=None,
                    help="output file (default benchmarks/results-<date>-<cpu|cuda>.json); a .md goes beside it")
    a = ap.parse_args(argv)
    if a.quick:
        a.train_limit, a.val_limit = a.train_limit or 2000, a.val_limit or 1000
        a.precision_batches, a.compile_timeout = min(a.precision_batches, 10), 0
    from pipelines import config

    try:
        seed = config.load().seed
        recipes = recipes_from_params(a.epochs)
        datasets = {key: load_arrays(a.data / ds, a.train_limit, a.val_limit, seed) for key, _v, ds, _m in MODELS}
    except (OSError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    device = engine.pick_device(a.device)
    out = a.json or Path(f"benchmarks/results-{dt.date.today().isoformat()}-{device.type}.json")
    data_info = {key: {"folder": str(a.data / ds), "source": datasets[key].source, "train": len(datasets[key].train_y),
                       "val": len(datasets[key].val_y)} for key, _v, ds, _m in MODELS}

    def partial(result: dict) -> None:
        io.write_json(out, {**result, "data": data_info, "complete": False})

    res = run(datasets, recipes, seed=seed, precision_batches=a.precision_batches,
              compile_timeout_s=a.compile_timeout, device_name=a.device,
              log=lambda s: print(s, file=sys.stderr, flush=True), progress=partial, quick=a.quick, tsne=not a.quick)
    res["data"] = data_info
    res["complete"] = True
    io.write_json(out, res)
    io.write_text(out.with_suffix(".md"), render_markdown(res))
    print_table(res)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
