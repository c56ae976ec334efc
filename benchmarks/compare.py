"""Our training loop against the usual notebook recipe, in one process, on the same arrays.

    python -m benchmarks.compare [--train-limit N] [--epochs 1] [--json OUT]

For the Simple CNN (prepared `mnist` arrays, 28x28x1) and the AlexNet (prepared `cifar10`
arrays, 32x32x3), each trained from the same seeded initialisation with the lab variants' recipe
from params.yaml:
  ours   engine.fit + inference.evaluate: uint8 NHWC tensors, batched augmentation, channels-last,
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
import os
import sys
from pathlib import Path
from typing import Optional

from benchmarks.paths import FIT_VAL_SLICE, MODELS, Arrays, compare_model, load_arrays, machine_info, ru_maxrss_mib
from benchmarks.studies import compare_compile, compare_forms, compare_precision, compare_roofline, compare_tsne
from pipelines import compute, inference, io
from pipelines.errors import LabError, one_line
from pipelines.train import engine


# ---------------------------------------------------------------------------- run & report
def run(datasets: dict[str, Arrays], recipes: dict[str, engine.Recipe], *, seed: int = 42,
        precision_batches: int = 200, compile_timeout_s: float = 60.0, device_name: str = "auto",
        log=print, progress=lambda result: None, quick: bool = False, tsne: bool = True) -> dict:
    """Every measurement; datasets and recipes are keyed by the MODELS' benchmark key. progress(result)
    is called after each section, so a long run stopped part-way still leaves its figures."""
    compute.seed_everything(seed)
    device = compute.pick_device(device_name)
    precision = compute.pick_precision("auto", device)
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
    result["processru_maxrss_mib"] = ru_maxrss_mib()
    result["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["notes"] = [
        "usual path: DataLoader(batch_size as the recipe, shuffle=True, num_workers=0); PIL image per sample, "
        "ToTensor + Normalize (+ RandomCrop with padding size//8 and RandomHorizontalFlip for crop_flip); fp32, NCHW",
        f"ours: engine.fit + inference.evaluate, precision auto -> {precision}, channels-last; fit's own per-epoch "
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
        # Layers without arithmetic (dropout, pooling) too: they can hold a path back as much as any.
        top = rf[key][:5]
        lines += ["", f"{key[7:]}, forward time per layer of a training step (torch.profiler), heaviest first: "
                  + "; ".join(f"{r['layer']} ({r['type']}) {r['forward_ms']:.2f} ms, {r['share_pct']:.0f} %, "
                              + (f"{r['gflop_per_s']:.0f} GFLOP/s" if r["gflop_per_s"] else "no arithmetic")
                              for r in top) + "."]
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


def recipes_from_params(epochs: int) -> dict[str, engine.Recipe]:
    from pipelines import config

    params = config.load()
    out = {}
    for key, variant, _ds, _m in MODELS:
        out[key] = engine.recipe_for(params.variant(variant), epochs=epochs)
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
    except LabError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    device = compute.pick_device(a.device)
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
