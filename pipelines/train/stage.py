"""What the train, evaluate and embed stages do, as functions tests call without DVC.

Every function takes the validated params and the exact paths dvc.yaml names; it writes only
those paths, each file atomically.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from pipelines import config, diagnosis, engine, features, io, models, plots
from pipelines.config import Params, Variant
from pipelines.tracking import Run, flat_params


# ---------------------------------------------------------------------------- shared
@dataclass
class Prepared:
    meta: dict
    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    folder: Path
    test: Optional[dict[str, np.ndarray]] = None  # held out: never used to pick an epoch


def load_prepared(folder: Path | str) -> Prepared:
    """Read a prepared dataset, checking every array file against the digest meta.json recorded."""
    folder = Path(folder)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path} not found: run the preprocess stage first (dvc repro)")
    meta = io.read_json(meta_path)
    fix = "rerun the preprocess stage (dvc repro --force preprocess@<dataset>)"
    splits = {}
    for split in ("train", "val", "test"):
        if split == "test" and "test.npz" not in meta["files"]:
            continue
        path = folder / f"{split}.npz"
        io.verify_sha256(path, meta["files"][f"{split}.npz"], fix)
        splits[split] = io.load_npz(path)
    return Prepared(meta, splits["train"], splits["val"], folder, splits.get("test"))


def model_config(params: Params, name: str, v: Variant, meta: dict) -> dict:
    cfg = {
        "variant": name, "model": v.model, "n_classes": len(meta["classes"]), "classes": meta["classes"],
        "in_channels": meta["channels"], "image_size": meta["height"], "hidden": v.hidden,
        "mean": meta["mean"], "std": meta["std"], "protocol": params.protocol, "dataset": v.dataset,
    }
    if v.model == "backbone":
        bb = meta.get("backbone") or {}
        if not bb.get("name"):
            raise RuntimeError(f"{v.dataset}: prepared data has no backbone; rerun preprocess@{v.dataset}")
        cfg["backbone"] = bb["name"]
        # The backbone's own input normalisation, pretrained or not, so the runs differ only in init.
        cfg["mean"], cfg["std"] = map(list, models.BACKBONE_NORM[bb["name"]])
    return cfg


def _setup(params: Params):
    engine.seed_everything(params.seed, params.threads)
    device = engine.pick_device(params.device)
    return device, engine.pick_precision(params.precision, device)


def _device_split(split: dict, cfg: dict, device) -> engine.DeviceData:
    return engine.DeviceData.from_arrays(split["x"], split["y"], cfg["mean"], cfg["std"], device)


def dataset_inputs(prep: Prepared, contexts: dict[str, str]) -> list[dict]:
    """The prepared splits as MLflow dataset inputs ({split: context}); the digest is the file's
    sha256 that meta.json records, so the UI names exactly the bytes a run read."""
    out = []
    for split, context in contexts.items():
        arrays = getattr(prep, split)
        if arrays is None:
            continue
        out.append({"name": f"{prep.meta['dataset']}-{split}", "x": arrays["x"], "y": arrays["y"],
                    "source": (prep.folder / f"{split}.npz").resolve(), "digest": prep.meta["files"][f"{split}.npz"],
                    "context": context, "classes": prep.meta["classes"], "data_source": prep.meta["source"]})
    return out


def _recipe(v: Variant) -> engine.Recipe:
    return engine.Recipe(v.epochs, v.batch_size, v.eval_batch_size, v.optimizer, v.lr, v.momentum,
                         v.weight_decay, v.schedule, v.label_smoothing, v.augment)


TEST_PREDICTIONS = "test_predictions.csv"   # index,label,pred: one row per held-out test image, in test.npz order


def _test_predictions(model, prep: Prepared, cfg: dict, v: Variant, device, precision, out_dir: Path) -> dict:
    """Accuracy on the held-out test split; writes each image's prediction so options compare pairwise."""
    _, acc, logits = engine.evaluate(model, _device_split(prep.test, cfg, device), v.eval_batch_size, device, precision)
    y, pred = prep.test["y"], logits.argmax(1).numpy()
    io.write_csv(out_dir / TEST_PREDICTIONS, ["index", "label", "pred"],
                 [[i, int(a), int(b)] for i, (a, b) in enumerate(zip(y, pred))])
    return {"test_acc": acc, "test_n": int(len(y))}


# ---------------------------------------------------------------------------- train
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


def _fingerprint(params: Params, name: str, seed: int, meta: dict) -> dict:
    """What a resumable checkpoint must match: the recipe, the seed and the exact data."""
    return {"variant": params.variant(name).model_dump(), "seed": seed, "data": meta["files"]}


def train(params: Params, name: str, data_dir: Path, model_dir: Path, out_dir: Path, metrics_path: Path,
          seed: Optional[int] = None, checkpoint: Optional[Path] = None, resume: bool = False) -> dict:
    """Train one variant (with `seed`, default the global one); write the model, history, tables."""
    t_start = time.perf_counter()
    v = params.variant(name)
    seed = params.seed if seed is None else seed
    prep = load_prepared(data_dir)
    if v.batch_size > len(prep.train["y"]):
        raise ValueError(f"variants.{name}.batch_size = {v.batch_size}: larger than the "
                         f"{len(prep.train['y'])} training samples of {v.dataset}")
    engine.seed_everything(seed, params.threads)
    device = engine.pick_device(params.device)
    precision = engine.pick_precision(params.precision, device)
    rank, world = engine.init_distributed(device)
    if world > 1 and v.classifier == "svm":
        raise ValueError(f"variants.{name}: the SVM option fits on one process; run it without torchrun")
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
    total = sum(c for _, _, c in table)
    train_d, val_d = _device_split(prep.train, cfg, device), _device_split(prep.val, cfg, device)

    net = model
    if world > 1:
        # Same initial weights everywhere (DDP broadcasts rank 0's), then per-rank dropout streams.
        net = torch.nn.parallel.DistributedDataParallel(model)
        torch.manual_seed(seed * 1000 + rank)
    fingerprint = _fingerprint(params, name, seed, prep.meta) | {"world": world}
    state, reused, reused_rows = None, 0, []
    source = config.start_variant(v.start)
    if source is not None:
        # Continue the source variant's last epoch: its weights, optimiser, RNG and history, checked
        # to come from its current params and data, so its epochs are not trained a second time.
        saved = torch.load(Path(v.start), map_location="cpu", weights_only=True) if Path(v.start).exists() else {}
        if saved.get("fingerprint") != _fingerprint(params, source, seed, prep.meta) | {"world": world}:
            raise RuntimeError(f"variants.{name}.start: {v.start} is missing or was made with other params, "
                               f"seed or data than variants.{source}'s; rerun train@{source} (dvc repro)")
        state = saved["state"]
        reused, reused_rows = state["epoch"], list(state["history"])
        print(f"train {name}: continuing {source} after epoch {state['epoch']} ({v.start})", flush=True)
    if resume and checkpoint is not None and checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("fingerprint") == fingerprint:
            state = saved["state"]
            print(f"train {name}: resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
        else:
            print(f"train {name}: {checkpoint} was made with other params or data; starting afresh", flush=True)

    last_state: dict = {}

    def save_checkpoint(st: dict) -> None:
        last_state["state"] = st
        if checkpoint is not None and rank == 0:
            with io.atomic_path(checkpoint) as tmp:
                torch.save({"fingerprint": fingerprint, "state": st}, tmp)

    run_name = name if seed == params.seed else f"{name}@seed{seed}"
    run_tags = {"dataset": v.dataset, "data_source": prep.meta["source"], "variant": name, "seed": seed,
                "world_size": world, "data_classes": ", ".join(prep.meta["classes"])[:5000]}
    if isinstance(prep.meta.get("folder"), dict):   # your own images: which folder, exactly
        own = prep.meta["folder"]
        run_tags.update(data_folder=own["path"], data_files=own["files"], data_digest=own["digest"])
    if rank != 0:
        # Other ranks train in lockstep; only rank 0 logs and writes outputs.
        engine.fit(net, train_d, val_d, _recipe(v), device, precision, seed, desc=f"{name} rank {rank}",
                   resume=state)
        engine.finish_distributed()
        return {}
    with Run(params, "train", run_name, tags=run_tags, variant_run=True) as run:
        run.log_datasets(dataset_inputs(prep, {"train": "training", "val": "validation"}), variant_too=True)
        run.log_params({**flat_params("", v), "seed": seed, "protocol": params.protocol,
                        "device": str(device), "precision": precision, "params_total": total,
                        "data.source": prep.meta["source"], "data.train": len(train_d), "data.val": len(val_d)})
        print(f"train {run_name}: {v.model} ({total:,} trainable parameters) on {prep.meta['source']} "
              f"[{len(train_d)}/{len(val_d)}], {device}, {precision}", flush=True)
        if v.classifier == "svm":
            res = _train_svm(model, train_d, val_d, v, device, precision, seed)
        else:
            def on_epoch(row: dict) -> None:
                print(f"[{row['epoch']:03d}] train loss {row['train_loss']:.4f} acc {row['train_acc']:.2f}% | "
                      f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}% | {row['seconds']:.1f} s", flush=True)
                run.log_metrics({k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")},
                                step=row["epoch"])

            for row in reused_rows:
                # The continued variant's epochs, logged under this run too, so its curves are whole.
                run.log_metrics({k: row[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr")},
                                step=row["epoch"])
            res = engine.fit(net, train_d, val_d, _recipe(v), device, precision, seed, on_epoch, name,
                             resume=state, checkpoint=save_checkpoint)
        hist = res.history
        if v.save_state and last_state:
            # Written before load_state_dict below swaps the best epoch's weights in.
            with io.atomic_path(model_dir / "state.pt") as tmp:
                torch.save({"fingerprint": fingerprint, "state": last_state["state"]}, tmp)
        model.load_state_dict(res.best_state)
        test = {}
        if prep.test is not None:
            # The held-out split, read once, for the epoch the validation split picked.
            test = _test_predictions(model, prep, cfg, v, device, precision, out_dir)
        diag = diagnosis.diagnose(hist, len(val_d))
        summary = {
            "variant": name, "dataset": v.dataset, "model": v.model, "protocol": params.protocol, "seed": seed,
            "params_total": total, "flops_per_image": flops,
            "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
            "final_val_acc": hist[-1]["val_acc"], "min_val_loss_epoch": diag.get("min_val_loss_epoch", 1),
            "epochs": len(hist), "val_n": len(val_d), **test,
            "start": v.start, "epochs_reused": reused,
            "train_seconds_here": sum(r["seconds"] for r in hist[reused:]),
            "train_seconds": res.train_seconds,
            "train_img_per_s": res.train_images / res.train_seconds if res.train_seconds else 0.0,
            "device": str(device), "precision": precision, "diagnosis": diag,
        }
        models.save_checkpoint(model_dir / "model.pt", model, cfg, res.best_state)
        io.write_csv(out_dir / "history.csv", list(hist[0]),
                     [[("" if isinstance(x, float) and x != x else x) for x in r.values()] for r in hist])
        io.write_csv(out_dir / "params.csv", ["layer", "shape", "params"], table)
        plots.save_figure(plots.curves(hist, res.best_epoch, f"{run_name}: loss and accuracy"), out_dir / "curves.png")
        headline = {"val_accuracy": res.best_val_acc, **({"test_accuracy": test["test_acc"]} if test else {}),
                    "best_epoch": res.best_epoch, "train_img_per_s": summary["train_img_per_s"],
                    "train_seconds": res.train_seconds}
        run.log_metrics({"best_val_acc": res.best_val_acc, **test, **headline})
        run.set_tags({"diagnosis": diag["verdict"][:250]})
        for p in (out_dir / "history.csv", out_dir / "params.csv", out_dir / "curves.png"):
            run.log_artifact(p, "train")
        run.finish_stage()
        # The variant run: its headline metrics and the model, loadable as runs:/<run_id>/model.
        run.log_metrics(headline)
        run.set_tags({"diagnosis": diag["verdict"][:250]})
        logged = run.log_model(
            model_dir / "model.pt", prep.val["x"][:2],
            options={"precision": precision, "eval_batch_size": v.eval_batch_size},
            metadata={"variant": name, "dataset": v.dataset, "protocol": params.protocol, "classes": cfg["classes"],
                      "image_size": cfg["image_size"], "channels": cfg["in_channels"]})
        # The whole stage body, data loading to the logged model (only the metrics write comes after).
        summary.update(mlflow_run_id=run.run_id, model_log_seconds=logged["seconds"],
                       seconds=time.perf_counter() - t_start)
        run.log_metrics({"model_log_seconds": logged["seconds"], "stage_seconds": summary["seconds"]})
        io.write_json(metrics_path, summary)
        io.write_json(model_dir / "run.json", run.record())
    engine.finish_distributed()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)  # finished: the outputs above supersede it
    print(f"train {run_name}: best val acc {res.best_val_acc:.2f}% at epoch {res.best_epoch}"
          + (f", test acc {test['test_acc']:.2f}%" if test else "")
          + f" ({summary['train_img_per_s']:.0f} img/s); {diag['verdict']}; MLflow model logged in "
          f"{summary['model_log_seconds']:.1f} s of the stage's {summary['seconds']:.1f} s", flush=True)
    return summary


def _train_svm(model, train_d, val_d, v: Variant, device, precision, seed: int) -> engine.FitResult:
    t0 = time.perf_counter()
    body = {"pooled": model.body}
    f_tr = engine.extract(model, body, train_d, v.eval_batch_size, device, precision)["pooled"]
    f_va = engine.extract(model, body, val_d, v.eval_batch_size, device, precision)["pooled"]
    w, b, train_acc = features.fit_linear_svm(f_tr, train_d.y.cpu().numpy(), v.svm_c, seed)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(w))
        model.head.bias.copy_(torch.from_numpy(b))
    val_acc = float(((f_va @ w.T + b).argmax(1) == val_d.y.cpu().numpy()).mean() * 100)
    seconds = time.perf_counter() - t0
    nan = float("nan")  # a hinge-loss SVM has no cross-entropy curve to show
    row = {"epoch": 1, "train_loss": nan, "train_acc": train_acc, "val_loss": nan, "val_acc": val_acc,
           "lr": nan, "seconds": seconds}
    state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
    return engine.FitResult([row], state, 1, val_acc, seconds, len(train_d))


# ---------------------------------------------------------------------------- evaluate
def _load_model(model_dir: Path, device):
    model, cfg = models.load_checkpoint(model_dir / "model.pt")
    return model.to(device, memory_format=torch.channels_last), cfg


def evaluate(params: Params, name: str, data_dir: Path, model_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    t_start = time.perf_counter()
    v = params.variant(name)
    prep = load_prepared(data_dir)
    device, precision = _setup(params)
    model, cfg = _load_model(model_dir, device)
    val_d = _device_split(prep.val, cfg, device)
    classes = prep.meta["classes"]
    with Run(params, "evaluate", name, resume=model_dir / "run.json", system_metrics=False) as run:
        run.log_datasets(dataset_inputs(prep, {"val": "validation", "test": "test"}))
        t0 = time.perf_counter()
        loss, acc, logits = engine.evaluate(model, val_d, v.eval_batch_size, device, precision)
        infer_s = time.perf_counter() - t0
        y = prep.val["y"]
        pred = logits.argmax(1).numpy()
        k = len(classes)
        cm = confusion_matrix(y, pred, labels=list(range(k)))
        p, r, f1, sup = precision_recall_fscore_support(y, pred, labels=list(range(k)), zero_division=0)
        off = [(int(cm[i, j]), i, j) for i in range(k) for j in range(k) if i != j and cm[i, j] > 0]
        off.sort(key=lambda t: (-t[0], t[1], t[2]))
        top = [{"true": classes[i], "pred": classes[j], "count": c} for c, i, j in off[:5]]
        result = {"split": "val", "n": int(len(y)), "accuracy": acc, "loss": loss,
                  "macro_f1": float(f1.mean() * 100), "top_confusions": top, "precision": precision,
                  "inference_seconds": infer_s, "img_per_s": len(y) / infer_s if infer_s else 0.0}
        if prep.test is not None:
            test = _test_predictions(model, prep, cfg, v, device, precision, out_dir)
            result.update(test_accuracy=test["test_acc"], test_n=test["test_n"])
        io.write_csv(out_dir / "per_class.csv", ["class", "precision", "recall", "f1", "support"],
                     [[classes[i], f"{p[i]:.4f}", f"{r[i]:.4f}", f"{f1[i]:.4f}", int(sup[i])] for i in range(k)])
        io.write_csv(out_dir / "confusion.csv", ["actual", "predicted"],
                     [[classes[a], classes[b]] for a, b in zip(y, pred)])
        io.write_csv(out_dir / "confusion_matrix.csv", ["true\\pred", *classes],
                     [[classes[i], *cm[i].tolist()] for i in range(k)])
        plots.save_figure(plots.confusion(cm, classes, f"{name}: confusion matrix ({len(y)} validation images)"),
                          out_dir / "confusion.png")
        images, captions = [], []
        for c, i, j in off[:2]:
            idx = np.flatnonzero((y == i) & (pred == j))[:8]
            images += [prep.val["x"][t] for t in idx]
            captions += [f"true {classes[i]}\npred {classes[j]}" for _ in idx]
        if images:
            fig = plots.examples(np.stack(images), captions, f"{name}: the two most frequent confusions", ncols=8)
            plots.save_figure(fig, out_dir / "confusions.png")
        result["seconds"] = time.perf_counter() - t_start   # the stage body up to its metrics
        io.write_json(metrics_path, result)
        headline = {"val_accuracy": acc, "val_macro_f1": result["macro_f1"],
                    **({"test_accuracy": result["test_accuracy"]} if "test_accuracy" in result else {})}
        run.log_metrics({**headline, "val_loss": loss})
        run.log_variant_metrics(headline)
        for f in sorted(out_dir.iterdir()):
            if f.suffix in (".png", ".csv") and f.name != "confusion.csv":
                run.log_artifact(f, "evaluate")
    print(f"evaluate {name}: accuracy {acc:.2f}% on {len(y)} validation images; top confusions "
          + ", ".join(f"{t['true']}->{t['pred']} ({t['count']})" for t in top[:2]), flush=True)
    return result


# ---------------------------------------------------------------------------- embed
def embed(params: Params, name: str, data_dir: Path, model_dir: Path, out_dir: Path, metrics_path: Path) -> dict:
    v = params.variant(name)
    prep = load_prepared(data_dir)
    device, precision = _setup(params)
    model, cfg = _load_model(model_dir, device)
    y_all = prep.val["y"]
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.permutation(len(y_all))[: v.tsne_points])
    sub = {"x": prep.val["x"][idx], "y": y_all[idx]}
    data = _device_split(sub, cfg, device)
    modules = {}
    for role in ("intermediate", "final"):
        path, mod = models.resolve_layer(model, getattr(v.layers, role))
        modules[role] = (path, mod)
    t0 = time.perf_counter()
    feats = engine.extract(model, {r: m for r, (_, m) in modules.items()}, data, v.eval_batch_size, device, precision)
    result = {"points": int(len(idx)), "layers": {}}
    rows = []
    with Run(params, "embed", name, resume=model_dir / "run.json", system_metrics=False) as run:
        panels = []
        for role, (path, _) in modules.items():
            f = feats[role]
            t_map, info = time.perf_counter(), {}
            # As many threads as torch's (params `threads`; 0 = every core): one on a shared machine.
            xy, backend = features.tsne_2d(f, params.seed, v.tsne_perplexity, n_jobs=torch.get_num_threads(),
                                           info=info)
            t_map = time.perf_counter() - t_map
            q = features.quality(f, xy, sub["y"], params.seed)
            result["layers"][role] = {"module": path, "dim": int(f.shape[1]), **q, "tsne_seconds": t_map,
                                      **{f"tsne_{k}": val for k, val in info.items()}}
            result["tsne_backend"] = backend
            rows += [[role, f"{a:.4f}", f"{b:.4f}", int(c)] for (a, b), c in zip(xy, sub["y"])]
            panels.append((f"{role}: {path} ({f.shape[1]}-d)", xy, sub["y"]))
            run.log_metrics({f"embed_{role}_{k}": val for k, val in q.items() if k != "seconds"})
        result["seconds"] = time.perf_counter() - t0
        io.write_csv(out_dir / "tsne.csv", ["layer", "x", "y", "label"], rows)
        plots.save_figure(plots.tsne(panels, prep.meta["classes"], f"{name}: t-SNE of {len(idx)} validation images"),
                          out_dir / "tsne.png")
        io.write_json(metrics_path, result)
        run.log_artifact(out_dir / "tsne.png", "embed")
    print(f"embed {name}: {len(idx)} points, " + "; ".join(
        f"{r} {d['dim']}-d silhouette {d.get('silhouette_features', float('nan')):.3f}"
        for r, d in result["layers"].items()) + f" ({result['seconds']:.0f} s, {result['tsne_backend']})", flush=True)
    return result
