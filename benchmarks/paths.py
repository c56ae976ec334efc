"""The two training paths the benchmark compares, on the same arrays: the usual notebook recipe
(torchvision Dataset of PIL images, DataLoader, fp32 NCHW) and the pipeline's own loop; the machine's
description and a peak-RSS sampler; the prepared arrays the comparison runs on."""
from __future__ import annotations

import gc
import os
import platform
import resource
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines import compute, hardware, inference, models
from pipelines.train import engine


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
def machine_info() -> dict:
    cpu = hardware.cpu()
    flags = cpu.flags
    import torchvision

    return {
        "cpu_model": cpu.model,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "flags": {f: f in flags for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")},
        "all_flags": " ".join(sorted(flags)),
        "native_bf16": cpu.native_bf16,
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


def ru_maxrss_mib() -> float:
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
def device_data(x, y, data: Arrays, device) -> compute.DeviceData:
    return compute.DeviceData.from_arrays(x, y, data.mean, data.std, device)


def ours_path(model: torch.nn.Module, data: Arrays, r: engine.Recipe, seed: int, device: torch.device,
              precision: str) -> tuple[dict, torch.nn.Module]:
    train_d = device_data(data.train_x, data.train_y, data, device)
    val_d = device_data(data.val_x, data.val_y, data, device)
    fit_val = device_data(data.val_x[:FIT_VAL_SLICE], data.val_y[:FIT_VAL_SLICE], data, device)
    model = model.to(device, memory_format=torch.channels_last)
    res = engine.fit(model, train_d, fit_val, r, device, precision, seed, desc="bench")
    t0 = time.perf_counter()
    val_loss, val_acc, _ = inference.evaluate(model, val_d, r.eval_batch_size, device, precision)
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


def build_model(name: str, data: Arrays, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)  # same seed, same initial weights for both paths
    return models.build({"model": name, "in_channels": data.train_x.shape[-1], "image_size": data.train_x.shape[1],
                         "n_classes": data.n_classes, "hidden": 128})


def compare_model(key: str, model_name: str, data: Arrays, r: engine.Recipe, seed: int, device, precision,
                  log=print) -> tuple[dict, torch.nn.Module]:
    m_ours, m_usual = build_model(model_name, data, seed), build_model(model_name, data, seed)
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


def load_arrays(folder: Path, train_limit: int, val_limit: int, seed: int) -> Arrays:
    from pipelines.runtime import load_prepared

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

