"""train@<variant>: train one variant (or one replicate seed of it) and write its model, history,
per-layer parameter table, curves and metrics; docs/outputs.md lists the files.

Called by stages/train.py with the validated params and the exact paths dvc.yaml names; it writes
only those paths, each file atomically.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from pipelines import config, hardware, io, models, plots
from pipelines.config import Params, Variant
from pipelines.errors import DataError, ParamsError
from pipelines.outputs import HistoryRow, ParamsRow, RunRecord, TrainMetrics
from pipelines.tracking import Run, flat_params
from pipelines.train import diagnosis, engine
from pipelines.train.recipes import recipe_for
from pipelines.train.setup import (Prepared, dataset_inputs, device_split, load_prepared, model_config,
                                   seeded_device, write_test_predictions)
from pipelines.train.svm import fit_svm_head

CURVE_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")   # logged per epoch to MLflow


def flops_per_image(model: torch.nn.Module, cfg: dict) -> int:
    """Forward-pass FLOPs for one image, counted by torch's own operator-level counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.cpu()(x)
    model.train(was_training)
    return int(counter.get_total_flops())


def _fingerprint(params: Params, name: str, seed: int, meta: dict, world: int) -> dict:
    """What a resumable checkpoint must match: the recipe, the seed, the exact data, the process count."""
    return {"variant": params.variant(name).model_dump(), "seed": seed, "data": meta["files"], "world": world}


@dataclass
class _Net:
    """The model as built for training, on its device, with what the summary reports about it."""
    model: torch.nn.Module
    cfg: dict
    flops: int
    table: list
    total: int


def _build(params: Params, name: str, v: Variant, prep: Prepared, data_dir: Path, device) -> _Net:
    cfg = model_config(params, name, v, prep.meta)
    model = models.build(cfg)
    if v.pretrained:
        bb = prep.meta["backbone"]
        model.load_backbone(data_dir / bb["file"], bb["sha256"])
    if v.freeze_backbone:
        model.body.requires_grad_(False)
    flops = flops_per_image(model, cfg)
    model = model.to(device, memory_format=torch.channels_last)
    table = models.parameter_table(model)
    return _Net(model, cfg, flops, table, sum(c for _, _, c in table))


def _start_state(params: Params, name: str, v: Variant, seed: int, prep: Prepared, world: int,
                 checkpoint: Optional[Path], resume: bool) -> tuple[Optional[dict], list[dict]]:
    """The training state to continue from: the source variant's (params `start`), then this
    variant's own checkpoint when `resume` and it matches; None to start afresh. Also the source
    variant's history rows, the epochs this variant reuses rather than trains."""
    state, reused_rows = None, []
    source = config.start_variant(v.start)
    if source is not None:
        # Continue the source variant's last epoch: its weights, optimiser, RNG and history, checked
        # to come from its current params and data, so its epochs are not trained a second time.
        saved = torch.load(Path(v.start), map_location="cpu", weights_only=True) if Path(v.start).exists() else {}
        if saved.get("fingerprint") != _fingerprint(params, source, seed, prep.meta, world):
            raise DataError(f"variants.{name}.start: {v.start} is missing or was made with other params, "
                               f"seed or data than variants.{source}'s; rerun train@{source} (dvc repro)")
        state = saved["state"]
        reused_rows = list(state["history"])
        print(f"train {name}: continuing {source} after epoch {state['epoch']} ({v.start})", flush=True)
    if resume and checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == _fingerprint(params, name, seed, prep.meta, world):
            state = saved["state"]
            print(f"train {name}: resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
        else:
            print(f"train {name}: {checkpoint} was made with other params or data; starting afresh", flush=True)
    return state, reused_rows


def _run_tags(name: str, v: Variant, seed: int, world: int, meta: dict) -> dict:
    tags = {"dataset": v.dataset, "data_source": meta["source"], "variant": name, "seed": seed,
            "world_size": world, "data_classes": ", ".join(meta["classes"])[:5000]}
    if isinstance(meta.get("folder"), dict):   # your own images: which folder, exactly
        own = meta["folder"]
        tags.update(data_folder=own["path"], data_files=own["files"], data_digest=own["digest"])
    return tags


# long: its steps run in the order that fixes the random streams (seed, build, per-rank reseed, resume)
# and share the distributed rank, the checkpoint writer and the open MLflow run; each helper above
# takes one step of it.
def train(params: Params, name: str, data_dir: Path, model_dir: Path, out_dir: Path, metrics_path: Path,
          seed: Optional[int] = None, checkpoint: Optional[Path] = None, resume: bool = False) -> dict:
    """Train one variant (with `seed`, default the global one); write the model, history, tables."""
    t_start = time.perf_counter()
    v = params.variant(name)
    seed = params.seed if seed is None else seed
    prep = load_prepared(data_dir)
    if v.batch_size > len(prep.train["y"]):
        raise ParamsError(f"variants.{name}.batch_size = {v.batch_size}: larger than the "
                         f"{len(prep.train['y'])} training samples of {v.dataset}")
    device, precision = seeded_device(params, seed)
    rank, world = engine.init_distributed(device)
    if world > 1 and v.classifier == "svm":
        raise ParamsError(f"variants.{name}: the SVM option fits on one process; run it without torchrun")
    built = _build(params, name, v, prep, data_dir, device)
    train_d, val_d = device_split(prep.train, built.cfg, device), device_split(prep.val, built.cfg, device)
    net = built.model
    if world > 1:
        # Same initial weights everywhere (DDP broadcasts rank 0's), then per-rank dropout streams.
        net = torch.nn.parallel.DistributedDataParallel(built.model)
        torch.manual_seed(seed * 1000 + rank)
    fingerprint = _fingerprint(params, name, seed, prep.meta, world)
    state, reused_rows = _start_state(params, name, v, seed, prep, world, checkpoint, resume)
    last_state: dict = {}

    def save_checkpoint(st: dict) -> None:
        last_state["state"] = st
        if checkpoint is not None and rank == 0:
            with io.atomic_path(checkpoint) as tmp:
                torch.save({"fingerprint": fingerprint, "state": st}, tmp)

    if rank != 0:
        # Other ranks train in lockstep; only rank 0 logs and writes outputs.
        engine.fit(net, train_d, val_d, recipe_for(v), device, precision, seed, desc=f"{name} rank {rank}",
                   resume=state)
        engine.finish_distributed()
        return {}
    run_name = name if seed == params.seed else f"{name}@seed{seed}"
    with Run(params, "train", run_name, tags=_run_tags(name, v, seed, world, prep.meta), variant_run=True) as run:
        run.log_datasets(dataset_inputs(prep, {"train": "training", "val": "validation"}), variant_too=True)
        run.log_params({**flat_params("", v), "seed": seed, "protocol": params.protocol,
                        "device": str(device), "precision": precision, "params_total": built.total,
                        "data.source": prep.meta["source"], "data.train": len(train_d), "data.val": len(val_d)})
        print(f"train {run_name}: {v.model} ({built.total:,} trainable parameters) on {prep.meta['source']} "
              f"[{len(train_d)}/{len(val_d)}], {device}, {precision}", flush=True)
        # The ceiling this stage's arithmetic is compared with, measured before it starts.
        peak = hardware.gemm_peak(precision, str(device))
        if v.classifier == "svm":
            res = fit_svm_head(built.model, train_d, val_d, v, device, precision, seed)
        else:
            res = _fit_epochs(run, net, train_d, val_d, v, device, precision, seed, name, state, reused_rows,
                              save_checkpoint)
        if v.save_state and last_state:
            # Written before load_state_dict below swaps the best epoch's weights in.
            with io.atomic_path(model_dir / "state.pt") as tmp:
                torch.save({"fingerprint": fingerprint, "state": last_state["state"]}, tmp)
        built.model.load_state_dict(res.best_state)
        test = {}
        if prep.test is not None:
            # The held-out split, read once, for the epoch the validation split picked.
            test = write_test_predictions(built.model, prep, built.cfg, v, device, precision, out_dir)
        summary = _summary(params, name, v, seed, built, res, (len(train_d), len(val_d)), test, len(reused_rows),
                           device, precision, peak)
        _write_and_log(run, run_name, built, res, summary, model_dir, out_dir)
        log_s = _log_model(run, params, name, v, built, prep, precision, model_dir)
        # The whole stage body, data loading to the logged model (only the metrics write comes after).
        summary.update(mlflow_run_id=run.run_id, model_log_seconds=log_s, seconds=time.perf_counter() - t_start)
        run.log_metrics({"model_log_seconds": log_s, "stage_seconds": summary["seconds"],
                         "peak_gflop_per_s": summary["peak_gflop_per_s"],
                         "train_pct_of_peak": summary["train_pct_of_peak"], "floor_seconds": summary["floor_seconds"]})
        summary = TrainMetrics.model_validate(summary).dump()
        io.write_json(metrics_path, summary)
        io.write_json(model_dir / "run.json", RunRecord.model_validate(run.record()).dump())
    engine.finish_distributed()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # finished: the outputs above supersede it
    print(f"train {run_name}: best val acc {res.best_val_acc:.2f}% at epoch {res.best_epoch}"
          + (f", test acc {test['test_acc']:.2f}%" if test else "")
          + f" ({summary['train_img_per_s']:.0f} img/s); {summary['diagnosis']['verdict']}; MLflow model logged in "
          f"{summary['model_log_seconds']:.1f} s of the stage's {summary['seconds']:.1f} s", flush=True)
    return summary


def _log_model(run: Run, params: Params, name: str, v: Variant, built: _Net, prep: Prepared, precision: str,
               model_dir: Path) -> float:
    """Log models/<v>/model.pt as the variant run's MLflow Model; the seconds it took."""
    logged = run.log_model(
        model_dir / "model.pt", prep.val["x"][:2],
        options={"precision": precision, "eval_batch_size": v.eval_batch_size},
        metadata={"variant": name, "dataset": v.dataset, "protocol": params.protocol,
                  "classes": built.cfg["classes"], "image_size": built.cfg["image_size"],
                  "channels": built.cfg["in_channels"]})
    return logged["seconds"]


def _fit_epochs(run: Run, net, train_d, val_d, v: Variant, device, precision, seed: int, name: str,
                state: Optional[dict], reused_rows: list[dict],
                save_checkpoint: Callable[[dict], None]) -> engine.FitResult:
    """Gradient training, epoch by epoch, each epoch's curves logged to MLflow as it ends."""
    def on_epoch(row: dict) -> None:
        print(f"[{row['epoch']:03d}] train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
              f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}% | {row['seconds']:.1f} s", flush=True)
        run.log_metrics({k: row[k] for k in CURVE_KEYS}, step=row["epoch"])

    for row in reused_rows:
        # The continued variant's epochs, logged under this run too, so its curves are whole.
        run.log_metrics({k: row[k] for k in CURVE_KEYS}, step=row["epoch"])
    return engine.fit(net, train_d, val_d, recipe_for(v), device, precision, seed, on_epoch, name,
                      resume=state, checkpoint=save_checkpoint)


def _arithmetic(v: Variant, flops: int, sizes: tuple[int, int], epochs_here: int, test_n: int) -> tuple[int, float]:
    """(FLOPs of one training image, FLOPs this stage computed). A gradient step costs about three
    forward passes (the backward pass about two); the SVM option only runs the frozen backbone
    forward. Each epoch adds a forward pass over the validation split; the test split one more."""
    train_n, val_n = sizes
    per_train_image = flops if v.classifier == "svm" else 3 * flops
    return per_train_image, epochs_here * (per_train_image * train_n + flops * val_n) + flops * test_n


def _summary(params: Params, name: str, v: Variant, seed: int, built: _Net, res: engine.FitResult,
             sizes: tuple[int, int], test: dict, reused: int, device, precision: str, peak: float) -> dict:
    """metrics/<v>/train.json without the MLflow run and the stage time, which come last."""
    hist = res.history
    val_n = sizes[1]
    diag = diagnosis.diagnose(hist, val_n)
    img_per_s = res.train_images / res.train_seconds if res.train_seconds else 0.0
    per_image, done = _arithmetic(v, built.flops, sizes, len(hist) - reused, test.get("test_n", 0))
    return {
        "variant": name, "dataset": v.dataset, "model": v.model, "protocol": params.protocol, "seed": seed,
        "params_total": built.total, "flops_per_image": built.flops,
        "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
        "final_val_acc": hist[-1]["val_acc"], "min_val_loss_epoch": diag.get("min_val_loss_epoch", 1),
        "epochs": len(hist), "val_n": val_n, **test,
        "start": v.start, "epochs_reused": reused,
        "train_seconds_here": sum(r["seconds"] for r in hist[reused:]),
        "train_seconds": res.train_seconds,
        "train_img_per_s": img_per_s,
        "peak_gflop_per_s": peak / 1e9, "train_gflop_per_s": per_image * img_per_s / 1e9,
        "train_pct_of_peak": 100 * per_image * img_per_s / peak, "floor_seconds": done / peak,
        "device": str(device), "precision": precision, "diagnosis": diag,
    }


def _write_and_log(run: Run, run_name: str, built: _Net, res: engine.FitResult, summary: dict,
                   model_dir: Path, out_dir: Path) -> None:
    """Write the model, history, parameter table and curves; log them and the headline metrics to
    the train run, close it, and put the headline metrics on the variant run."""
    hist = res.history
    models.save_checkpoint(model_dir / "model.pt", built.model, built.cfg, res.best_state)
    io.write_csv(out_dir / "history.csv", HistoryRow.columns(), [HistoryRow.model_validate(r).cells() for r in hist])
    io.write_csv(out_dir / "params.csv", ParamsRow.columns(),
                 [ParamsRow(layer=n, shape=s, params=c).cells() for n, s, c in built.table])
    plots.save_figure(plots.curves(hist, res.best_epoch, f"{run_name}: loss and accuracy"), out_dir / "curves.png")
    test = {k: summary[k] for k in ("test_acc", "test_n") if k in summary}
    headline = {"val_accuracy": res.best_val_acc, **({"test_accuracy": test["test_acc"]} if test else {}),
                "best_epoch": res.best_epoch, "train_img_per_s": summary["train_img_per_s"],
                "train_seconds": res.train_seconds}
    verdict = summary["diagnosis"]["verdict"][:250]
    run.log_metrics({"best_val_acc": res.best_val_acc, **test, **headline})
    run.set_tags({"diagnosis": verdict})
    for p in (out_dir / "history.csv", out_dir / "params.csv", out_dir / "curves.png"):
        run.log_artifact(p, "train")
    run.finish_stage()
    # The variant run: its headline metrics and the model, loadable as runs:/<run_id>/model.
    run.log_metrics(headline)
    run.set_tags({"diagnosis": verdict})
