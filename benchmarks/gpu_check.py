"""The offline protocol's training and evaluation of the lab's variants on one CUDA GPU, timed.

    python -m benchmarks.gpu_check [--raw data/raw/mnist] [--out benchmarks] [--tiny]

Made for a machine with a GPU and no network whose image has torch, torchvision, scikit-learn and
matplotlib but not dvc, mlflow or pydantic: it needs this working tree, the raw Fashion-MNIST files
of the offline protocol (data/raw/mnist, about 30 MB, from which both prepared datasets are made
here with the pipeline's own prepare code) and pydantic's wheels (`make gpu-wheels`). docs/scaling.md
("GPU check") gives the command. Per stage it records seconds, img/s, the GPU's memory peak and the
training's % of the GPU's measured bf16 matrix peak; then the cost of torch's deterministic
algorithms (one epoch with and without), and whether MLflow's system metrics logged GPU
utilisation (or that mlflow is not installed there). Writes results-<date>-cuda.json and .md to
--out. Without a GPU it runs the same code on the CPU on a tiny subset (--tiny, implied), writing
results-<date>-gpu-check-cpu.json: the test suite runs that, so the script cannot rot.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from pipelines import config, hardware, io, models
from pipelines.errors import DataError, LabError, ParamsError, one_line
from pipelines.train import engine, setup
from pipelines.train.recipes import recipe_for
from pipelines.train.stage import flops_per_image

# The lab's variants that train on the packaged data of the offline protocol (the transfer-learning
# ones also need the EfficientNet-Lite0 weights package, which that image lacks).
VARIANTS = ["mnist_cnn", "mnist_cnn_20ep", "mnist_cnn_small", "mnist_cnn_plus", "cifar_alexnet", "cifar_alexnet_plus"]
GPU_EVAL_BATCH = 10_000  # evaluation batch on the GPU: the whole validation split in one or two batches


def load_params(path: Path, tiny: bool) -> config.Params:
    if not path.is_file():
        raise ParamsError(f"params file {str(path)!r} not found (run from the repository root or pass --params)")
    raw = yaml.safe_load(path.read_text())
    raw["protocol"] = "offline"
    if tiny:
        for ds in ("mnist", "cifar10"):
            raw["datasets"][ds].update(train_limit=128, val_limit=64)
        for name, v in raw["variants"].items():
            if name in VARIANTS:
                v["epochs"] = 3 if name == "mnist_cnn_20ep" else 2
    return config.parse(raw)


def prepare_all(params: config.Params, raw: Path, root: Path, log) -> dict[str, float]:
    """Prepared mnist and cifar10 from one folder of raw Fashion-MNIST files (both offline datasets
    read the same four files; each prepare checks them against the SOURCE.json it is given)."""
    from pipelines.data.prepare import prepare

    seconds = {}
    for name in ("mnist", "cifar10"):
        src = root / "raw" / name
        src.mkdir(parents=True)
        record = io.read_json(raw / "SOURCE.json")
        io.write_json(src / "SOURCE.json", {**record, "dataset": name})
        for f in record["files"]:
            (src / f).symlink_to((raw / f).resolve())
        t0 = time.perf_counter()
        prepare(name, params, src, root / "prepared" / name)
        seconds[name] = time.perf_counter() - t0
        log(f"prepare {name}: {seconds[name]:.1f} s")
    return seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_variant(params: config.Params, name: str, data_root: Path, device, precision: str, eval_batch: int,
                states: dict, peak: float) -> dict:
    v = params.variant(name)
    prep = setup.load_prepared(data_root / v.dataset)
    cfg = setup.model_config(params, name, v, prep.meta)
    t_stage = time.perf_counter()
    engine.seed_everything(params.seed, params.threads)
    model = models.build(cfg)
    flops = flops_per_image(model, cfg)
    model = model.to(device, memory_format=torch.channels_last)
    train_d = setup.device_split(prep.train, cfg, device)
    val_d = setup.device_split(prep.val, cfg, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    source = config.start_variant(v.start)
    resume = states.get(source) if source else None
    if source and resume is None:
        raise RuntimeError(f"{name} continues {source}, which this check has not trained first")
    last: dict = {}
    res = engine.fit(model, train_d, val_d, recipe_for(v), device, precision, params.seed, desc=name,
                     resume=resume, checkpoint=lambda st: last.update(st))
    _sync(device)
    train_wall = time.perf_counter() - t_stage
    states[name] = copy.deepcopy(last)  # the live weights change when the best epoch is loaded below
    reused = resume["epoch"] if resume else 0
    seconds_here = sum(r["seconds"] for r in res.history[reused:])
    images_here = len(train_d) * (len(res.history) - reused)
    model.load_state_dict(res.best_state)
    t0 = time.perf_counter()
    _, acc, _ = engine.evaluate(model, val_d, eval_batch, device, precision)
    _sync(device)
    eval_s = time.perf_counter() - t0
    img_s = images_here / seconds_here if seconds_here else 0.0
    row = {"variant": name, "epochs": len(res.history), "epochs_reused": reused, "train_n": len(train_d),
           "train_stage_seconds": train_wall, "train_epochs_seconds": seconds_here, "train_img_per_s": img_s,
           "eval_seconds": eval_s, "eval_img_per_s": len(val_d) / eval_s if eval_s else 0.0,
           "eval_batch": eval_batch, "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
           "final_eval_acc": acc, "flops_per_image": flops,
           "train_pct_of_bf16_peak": 100 * 3 * flops * img_s / peak if peak else None}
    if device.type == "cuda":
        row["gpu_memory_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def determinism_cost(params: config.Params, data_root: Path, device, precision: str) -> dict:
    """One epoch of mnist_cnn with torch's deterministic algorithms (the pipeline's setting) and without."""
    v = params.variant("mnist_cnn")
    prep = setup.load_prepared(data_root / v.dataset)
    cfg = setup.model_config(params, "mnist_cnn", v, prep.meta)
    out = {}
    for mode in (True, False, True):  # deterministic first and last: warm-up effects fall on both sides
        engine.seed_everything(params.seed, params.threads)
        torch.use_deterministic_algorithms(mode, warn_only=True)
        model = models.build(cfg).to(device, memory_format=torch.channels_last)
        d = setup.device_split(prep.train, cfg, device)
        val = setup.device_split(prep.val, cfg, device)
        res = engine.fit(model, d, val, recipe_for(v, epochs=1), device, precision,
                         params.seed, desc=f"deterministic={mode}")
        key = "deterministic_seconds" if mode else "nondeterministic_seconds"
        out[key] = min(out.get(key, float("inf")), res.train_seconds)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out["cost"] = out["deterministic_seconds"] / out["nondeterministic_seconds"]
    return out


def mlflow_gpu_metrics(tmp: Path, device) -> dict:
    """Does MLflow's system-metrics sampler log GPU utilisation here? A 6-second run of matrix products."""
    try:
        import mlflow
    except ImportError as e:
        return {"status": f"mlflow is not installed on this machine ({e}); GPU utilisation through MLflow "
                          f"not checked", "gpu_utilization_logged": None}
    try:
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        mlflow.set_system_metrics_sampling_interval(1)
        exp = mlflow.set_experiment("gpu-check")  # of this store: an experiment set earlier may be another's
        a = torch.randn(2048, 2048, device=device)
        with mlflow.start_run(experiment_id=exp.experiment_id, log_system_metrics=True) as run:
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 6:
                a = torch.tanh(a @ a)
                _sync(device)
        keys = sorted(mlflow.MlflowClient().get_run(run.info.run_id).data.metrics)
        gpu = [k for k in keys if "gpu" in k]
        return {"status": "ok", "mlflow": mlflow.__version__, "gpu_metrics": gpu,
                "gpu_utilization_logged": any("utilization" in k for k in gpu)}
    except Exception as e:  # noqa: BLE001  (a broken MLflow is a finding, not a reason to lose the timings)
        return {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
                "gpu_utilization_logged": None}


def render_markdown(res: dict) -> str:
    lines = [f"# GPU check {res['date']} ({res['device_name']})", "",
             f"torch {res['torch']}, precision {res['precision']}, measured bf16 matrix peak "
             f"{res['bf16_peak_flops'] / 1e12:,.1f} TFLOP/s; whole check {res['total_seconds']:.0f} s "
             f"(preparing the data {sum(res['prepare_seconds'].values()):.0f} s).", "",
             "| variant | epochs (reused) | train s | train img/s | % of bf16 peak | eval s | eval img/s | "
             "GPU memory peak MiB | best val acc % |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["variants"]:
        mem = r.get("gpu_memory_peak_mib")
        lines.append(f"| {r['variant']} | {r['epochs']} ({r['epochs_reused']}) | {r['train_epochs_seconds']:.1f} | "
                     f"{r['train_img_per_s']:,.0f} | {r['train_pct_of_bf16_peak']:.2f} | {r['eval_seconds']:.2f} | "
                     f"{r['eval_img_per_s']:,.0f} | {'n/a' if mem is None else f'{mem:,.0f}'} | {r['best_val_acc']:.2f} |")
    d, m = res["determinism"], res["mlflow"]
    lines += ["", f"Deterministic algorithms: one epoch of mnist_cnn {d['deterministic_seconds']:.2f} s against "
              f"{d['nondeterministic_seconds']:.2f} s without ({d['cost']:.2f}x).", "",
              f"MLflow system metrics: {m['status']}" + (f"; GPU utilisation logged: {m['gpu_utilization_logged']}"
                                                          if m.get("gpu_utilization_logged") is not None else "") + "."]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, default=Path("data/raw/mnist"), help="raw Fashion-MNIST with SOURCE.json")
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks"))
    ap.add_argument("--tiny", action="store_true", help="128/64 images, 2-3 epochs (implied without a GPU)")
    a = ap.parse_args(argv)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts, as seed_everything asks
    t_all = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = a.tiny or device.type != "cuda"
    try:
        params = load_params(a.params, tiny)
        if not (a.raw / "SOURCE.json").is_file():
            raise DataError(f"{a.raw}/SOURCE.json not found: --raw must be a downloaded raw folder "
                                    f"(data/raw/mnist after `dvc repro download@mnist`)")
    except LabError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    precision = engine.pick_precision(params.precision, device)
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        prep_s = prepare_all(params, a.raw, tmp, log)
        peak = hardware.gemm_peak("bf16", str(device), 8192 if device.type == "cuda" else 256)
        states: dict = {}
        rows = []
        for name in VARIANTS:
            if name in params.variants:
                rows.append(run_variant(params, name, tmp / "prepared", device, precision,
                                        GPU_EVAL_BATCH if device.type == "cuda" else params.variant(name).eval_batch_size,
                                        states, peak))
                log(f"{name}: {rows[-1]['train_epochs_seconds']:.1f} s training, "
                    f"{rows[-1]['train_img_per_s']:,.0f} img/s, best {rows[-1]['best_val_acc']:.2f} %")
        det = determinism_cost(params, tmp / "prepared", device, precision)
        ml = mlflow_gpu_metrics(tmp, device)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res = {"date": dt.date.today().isoformat(), "device": device.type,
           "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU fallback (tiny data)",
           "torch": torch.__version__, "precision": precision, "tiny": tiny, "prepare_seconds": prep_s,
           "bf16_peak_flops": peak, "variants": rows, "determinism": det, "mlflow": ml,
           "total_seconds": time.perf_counter() - t_all}
    name = f"results-{res['date']}-cuda" if device.type == "cuda" else f"results-{res['date']}-gpu-check-cpu"
    io.write_json(a.out / f"{name}.json", res)
    io.write_text(a.out / f"{name}.md", render_markdown(res))
    print(render_markdown(res))
    print(f"wrote {a.out / name}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
