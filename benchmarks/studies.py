"""The benchmark's studies beyond the two paths: the embed stage's t-SNE, fp32 against bf16
autocast, the numerical forms of a training step, the roofline of every path, and torch.compile
for evaluation in a time-limited child process."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.paths import FIT_VAL_SLICE, MODELS, Arrays, build_model, device_data
from pipelines import compute, hardware, inference, models
from pipelines.embed import tsne as features
from pipelines.train import engine


# ---------------------------------------------------------------------------- t-SNE
def compare_tsne(model: torch.nn.Module, data: Arrays, seed: int, device, precision, perplexity: float = 30.0) -> dict:
    """The embed stage's t-SNE (features.tsne_2d: every core, stopped when converged) against openTSNE
    as the stage ran it before (one thread, its default 250 + 500 iterations), on the same features:
    seconds, and the map's quality (5-NN accuracy on the map, trustworthiness, silhouette)."""
    from openTSNE import TSNE

    val_d = device_data(data.val_x, data.val_y, data, device)
    feats = inference.extract(model, {"fc1": model.fc1}, val_d, 1000, device, precision)["fc1"]
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
    sub = device_data(data.train_x[:n], data.train_y[:n], data, device)
    tiny_val = device_data(data.val_x[:FIT_VAL_SLICE], data.val_y[:FIT_VAL_SLICE], data, device)
    out = {"model": model_name, "batches": -(-n // r.batch_size), "batch_size": r.batch_size, "images": n,
           "auto_picks": compute.pick_precision("auto", device), "native_bf16": hardware.native_bf16()}
    for prec in ("fp32", "bf16"):
        m = build_model(model_name, data, seed).to(device, memory_format=torch.channels_last)
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
    d = device_data(data.train_x[:n], data.train_y[:n], data, torch.device("cpu"))
    xb, yb = d.normalise(d.x), d.y
    ev = device_data(data.val_x[: r.eval_batch_size], data.val_y[: r.eval_batch_size], data, torch.device("cpu"))
    xe = ev.normalise(ev.x)
    nets = {}
    for name, (prec, cl) in forms.items():
        m = build_model(model_name, data, seed)
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
                with compute.autocast(dev, prec):
                    loss = F.cross_entropy(models.logits_of(m(x)).float(), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            best[name]["train"] = max(best[name]["train"], steps * len(yb) / (time.perf_counter() - t0))
            losses[name] = float(loss.detach())
            m.eval()
            with torch.no_grad(), compute.autocast(dev, prec):
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
        m = build_model(model_name, data, seed)
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
        d = device_data(data.train_x[:n], data.train_y[:n], data, torch.device("cpu"))
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
        d = compute.DeviceData.from_arrays(x, y, mean, std, device)
        # Every batch shape the timed evaluation will meet (a full batch and the remainder), so
        # the warm-up compiles them all and the timed pass compiles nothing.
        n_warm = min(len(y), batch + (len(y) % batch if len(y) > batch else 0))
        warm = compute.DeviceData(d.x[:n_warm], d.y[:n_warm], d.mean, d.std)

        def timed(m, data):
            t0 = time.perf_counter()
            _, acc, logits = inference.evaluate(m, data, batch, device, precision)
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

