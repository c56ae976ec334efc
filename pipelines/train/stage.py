"""train@<variant>: train one variant (or one replicate seed of it) and write its model, history,
per-layer parameter table, curves and metrics; docs/outputs.md lists the files.

Called by stages/train.py with the validated params and the exact paths dvc.yaml names; it writes
only those paths, each file atomically. `train` reads top to bottom: open the runtime, build the
model and its starting state (`_Training`), train inside the MLflow run, write and log the outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from pipelines import config, hardware, io, models, plots
from pipelines.clock import StageClock
from pipelines.compute import DeviceData
from pipelines.config import Params
from pipelines.errors import DataError, ParamsError
from pipelines.outputs import HistoryRow, ParamsRow, RunRecord, TrainMetrics
from pipelines.runtime import Runtime, StagePaths
from pipelines.tracking import Run, flat_params
from pipelines.train import diagnosis, engine
from pipelines.train.svm import fit_svm_head

CURVE_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")   # logged per epoch to MLflow


def train(params: Params, name: str, paths: StagePaths, seed: Optional[int] = None,
          checkpoint: Optional[Path] = None, resume: bool = False) -> dict:
    """Train one variant (with `seed`, default the global one); write the model, history, tables."""
    t_start, clock = time.perf_counter(), StageClock()
    rt = Runtime.open(params, name, paths, seed, distributed=True)
    job = _Training.start(rt, checkpoint, resume)
    if rt.rank != 0:
        # Other ranks train in lockstep; only rank 0 logs and writes outputs.
        engine.fit(job.net, job.train, job.val, engine.recipe_for(rt.variant), rt.device, rt.precision, rt.seed,
                   desc=f"{name} rank {rt.rank}", resume=job.state)
        rt.close()
        return {}
    with Run(params, "train", rt.run_name, tags=_run_tags(rt), variant_run=True) as run:
        job.log_inputs(run)
        # The ceiling this stage's arithmetic is compared with, measured before it starts.
        peak = hardware.gemm_peak(rt.precision, str(rt.device))
        if rt.variant.classifier == "svm":
            res = fit_svm_head(job.built.model, job.train, job.val, rt.variant, rt.device, rt.precision, rt.seed)
        else:
            res = job.fit_epochs(run)
        job.write_state()   # before the best epoch's weights are swapped in below
        job.built.model.load_state_dict(res.best_state)
        # The held-out split, read once, for the epoch the validation split picked.
        test = rt.write_test_predictions(job.built.model, job.built.cfg)
        summary = job.summary(res, test, peak)
        _write_and_log(run, job, res, summary)
        log_s = _log_model(run, rt, job.built.cfg)
        # The whole stage body, data loading to the logged model (only the metrics write comes after).
        summary.update(mlflow_run_id=run.run_id, model_log_seconds=log_s, seconds=time.perf_counter() - t_start,
                       clock=clock.record())
        run.log_metrics({"model_log_seconds": log_s, "stage_seconds": summary["seconds"],
                         **{k: summary[k] for k in ("peak_gflop_per_s", "train_pct_of_peak", "floor_seconds")}})
        summary = TrainMetrics.model_validate(summary).dump()
        io.write_json(paths.metrics, summary)
        io.write_json(paths.model / "run.json", RunRecord.model_validate(run.record()).dump())
    rt.close()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # finished: the outputs above supersede it
    print(f"train {rt.run_name}: best val acc {res.best_val_acc:.2f}% at epoch {res.best_epoch}"
          + (f", test acc {test['test_acc']:.2f}%" if test else "")
          + f" ({summary['train_img_per_s']:.0f} img/s); {summary['diagnosis']['verdict']}; MLflow model logged in "
          f"{summary['model_log_seconds']:.1f} s of the stage's {summary['seconds']:.1f} s", flush=True)
    return summary


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


def _fingerprint(rt: Runtime, name: str) -> dict:
    """What a resumable checkpoint of variant `name` must match: the recipe, the seed, the exact data,
    the process count."""
    return {"variant": rt.params.variant(name).model_dump(), "seed": rt.seed, "data": rt.prep.meta["files"],
            "world": rt.world}


@dataclass
class _Net:
    """The model as built for training, on its device, with what the summary reports about it."""
    model: torch.nn.Module
    cfg: dict
    flops: int
    table: list
    total: int

    @classmethod
    def build(cls, rt: Runtime) -> "_Net":
        v, cfg = rt.variant, rt.model_config()
        model = models.build(cfg)
        if v.pretrained:
            bb = rt.prep.meta["backbone"]
            model.load_backbone(rt.paths.data / bb["file"], bb["sha256"])
        if v.freeze_backbone:
            model.body.requires_grad_(False)
        flops = flops_per_image(model, cfg)
        model = model.to(rt.device, memory_format=torch.channels_last)
        table = models.parameter_table(model)
        return cls(model, cfg, flops, table, sum(c for _, _, c in table))


@dataclass
class _Training:
    """What the loop runs with, set up in the order that fixes the random streams (seed, build,
    resume): the model (`net`: DDP-wrapped under torchrun), the splits on the device,
    the state it starts from, and the checkpoint it writes after every epoch."""
    rt: Runtime
    built: _Net
    net: torch.nn.Module
    train: DeviceData
    val: DeviceData
    state: Optional[dict]           # the training state continued from; None: afresh
    reused: list[dict]              # history rows of the variant this one continues (params `start`)
    checkpoint: Optional[Path]
    last: dict = field(default_factory=dict)   # the latest epoch's state, for models/<v>/state.pt

    @classmethod
    def start(cls, rt: Runtime, checkpoint: Optional[Path], resume: bool) -> "_Training":
        v = rt.variant
        if v.batch_size > len(rt.prep.train["y"]):
            raise ParamsError(f"variants.{rt.name}.batch_size = {v.batch_size}: larger than the "
                              f"{len(rt.prep.train['y'])} training samples of {v.dataset}")
        if rt.world > 1 and v.classifier == "svm":
            raise ParamsError(f"variants.{rt.name}: the SVM option fits on one process; run it without torchrun")
        built = _Net.build(rt)
        train_d, val_d = rt.on_device(rt.prep.train, built.cfg), rt.on_device(rt.prep.val, built.cfg)
        net = built.model
        if rt.world > 1:
            # Same initial weights everywhere (DDP broadcasts rank 0's), and the same random stream:
            # each rank keeps its rows of the masks one process draws (pipelines/layers.py, batch_part).
            net = torch.nn.parallel.DistributedDataParallel(built.model)
        state, reused = _start_state(rt, checkpoint, resume)
        return cls(rt, built, net, train_d, val_d, state, reused, checkpoint)

    def log_inputs(self, run: Run) -> None:
        """The datasets and params to the MLflow run, and the stage's opening line."""
        rt, v, meta = self.rt, self.rt.variant, self.rt.prep.meta
        run.log_datasets(rt.dataset_inputs({"train": "training", "val": "validation"}), variant_too=True)
        run.log_params({**flat_params("", v), "seed": rt.seed, "protocol": rt.params.protocol,
                        "device": str(rt.device), "precision": rt.precision, "params_total": self.built.total,
                        "data.source": meta["source"], "data.train": len(self.train), "data.val": len(self.val)})
        print(f"train {rt.run_name}: {v.model} ({self.built.total:,} trainable parameters) on {meta['source']} "
              f"[{len(self.train)}/{len(self.val)}], {rt.device}, {rt.precision}", flush=True)

    def save_checkpoint(self, st: dict) -> None:
        self.last["state"] = st
        if self.checkpoint is not None and self.rt.rank == 0:
            with io.atomic_path(self.checkpoint) as tmp:
                torch.save({"fingerprint": _fingerprint(self.rt, self.rt.name), "state": st}, tmp)

    def fit_epochs(self, run: Run) -> engine.FitResult:
        """Gradient training, epoch by epoch, each epoch's curves logged to MLflow as it ends."""
        def on_epoch(row: dict) -> None:
            print(f"[{row['epoch']:03d}] train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
                  f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}% | {row['seconds']:.1f} s", flush=True)
            run.log_metrics({k: row[k] for k in CURVE_KEYS}, step=row["epoch"])

        for row in self.reused:
            # The continued variant's epochs, logged under this run too, so its curves are whole.
            run.log_metrics({k: row[k] for k in CURVE_KEYS}, step=row["epoch"])
        rt = self.rt
        return engine.fit(self.net, self.train, self.val, engine.recipe_for(rt.variant), rt.device, rt.precision,
                          rt.seed, on_epoch, rt.name, resume=self.state, checkpoint=self.save_checkpoint)

    def write_state(self) -> None:
        """models/<v>/state.pt, the last epoch's state a longer variant continues (params save_state)."""
        if self.rt.variant.save_state and self.last:
            with io.atomic_path(self.rt.paths.model / "state.pt") as tmp:
                torch.save({"fingerprint": _fingerprint(self.rt, self.rt.name), "state": self.last["state"]}, tmp)

    def summary(self, res: engine.FitResult, test: dict, peak: float) -> dict:
        """metrics/<v>/train.json without the MLflow run and the stage time, which come last."""
        rt, v, built, hist, reused = self.rt, self.rt.variant, self.built, res.history, len(self.reused)
        val_n = len(self.val)
        diag = diagnosis.diagnose(hist, val_n)
        img_per_s = res.train_images / res.train_seconds if res.train_seconds else 0.0
        per_image, done = _arithmetic(v.classifier, built.flops, (len(self.train), val_n), len(hist) - reused,
                                      test.get("test_n", 0))
        return {
            "variant": rt.name, "dataset": v.dataset, "model": v.model, "protocol": rt.params.protocol, "seed": rt.seed,
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
            "device": str(rt.device), "precision": rt.precision, "diagnosis": diag,
        }


def _start_state(rt: Runtime, checkpoint: Optional[Path], resume: bool) -> tuple[Optional[dict], list[dict]]:
    """The training state to continue from: the source variant's (params `start`), then this
    variant's own checkpoint when `resume` and it matches; None to start afresh. Also the source
    variant's history rows, the epochs this variant reuses rather than trains."""
    state, reused_rows, start = None, [], rt.variant.start
    source = config.start_variant(start)
    if source is not None:
        # Continue the source variant's last epoch: its weights, optimiser, RNG and history, checked
        # to come from its current params and data, so its epochs are not trained a second time.
        saved = torch.load(Path(start), map_location="cpu", weights_only=True) if Path(start).exists() else {}
        if saved.get("fingerprint") != _fingerprint(rt, source):
            raise DataError(f"variants.{rt.name}.start: {start} is missing or was made with other params, "
                            f"seed or data than variants.{source}'s; rerun train@{source} (dvc repro)")
        state = saved["state"]
        reused_rows = list(state["history"])
        print(f"train {rt.name}: continuing {source} after epoch {state['epoch']} ({start})", flush=True)
    if resume and checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == _fingerprint(rt, rt.name):
            state = saved["state"]
            print(f"train {rt.name}: resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
        else:
            print(f"train {rt.name}: {checkpoint} was made with other params or data; starting afresh", flush=True)
    return state, reused_rows


def _run_tags(rt: Runtime) -> dict:
    meta = rt.prep.meta
    tags = {"dataset": rt.variant.dataset, "data_source": meta["source"], "variant": rt.name, "seed": rt.seed,
            "world_size": rt.world, "data_classes": ", ".join(meta["classes"])[:5000]}
    if isinstance(meta.get("folder"), dict):   # your own images: which folder, exactly
        own = meta["folder"]
        tags.update(data_folder=own["path"], data_files=own["files"], data_digest=own["digest"])
    return tags


def _arithmetic(classifier: str, flops: int, sizes: tuple[int, int], epochs_here: int,
                test_n: int) -> tuple[int, float]:
    """(FLOPs of one training image, FLOPs this stage computed). A gradient step costs about three
    forward passes (the backward pass about two); the SVM option only runs the frozen backbone
    forward. Each epoch adds a forward pass over the validation split; the test split one more."""
    train_n, val_n = sizes
    per_train_image = flops if classifier == "svm" else 3 * flops
    return per_train_image, epochs_here * (per_train_image * train_n + flops * val_n) + flops * test_n


def _log_model(run: Run, rt: Runtime, cfg: dict) -> float:
    """Log models/<v>/model.pt as the variant run's MLflow Model; the seconds it took."""
    v = rt.variant
    logged = run.log_model(
        rt.paths.model / "model.pt", rt.prep.val["x"][:2],
        options={"precision": rt.precision, "eval_batch_size": v.eval_batch_size},
        metadata={"variant": rt.name, "dataset": v.dataset, "protocol": rt.params.protocol,
                  "classes": cfg["classes"], "image_size": cfg["image_size"], "channels": cfg["in_channels"]})
    return logged["seconds"]


def _write_and_log(run: Run, job: _Training, res: engine.FitResult, summary: dict) -> None:
    """Write the model, history, parameter table and curves; log them and the headline metrics to
    the train run, close it, and put the headline metrics on the variant run."""
    hist, out_dir, built = res.history, job.rt.paths.out, job.built
    models.save_checkpoint(job.rt.paths.model / "model.pt", built.model, built.cfg, res.best_state)
    io.write_csv(out_dir / "history.csv", HistoryRow.columns(), [HistoryRow.model_validate(r).cells() for r in hist])
    io.write_csv(out_dir / "params.csv", ParamsRow.columns(),
                 [ParamsRow(layer=n, shape=s, params=c).cells() for n, s, c in built.table])
    plots.save_figure(plots.curves(hist, res.best_epoch, f"{job.rt.run_name}: loss and accuracy"),
                      out_dir / "curves.png")
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
