"""The embed stage's t-SNE maps against their floor, and its neighbour search, on a run's real features.

    python -m benchmarks.tsne [--variants mnist_cnn,cifar_alexnet] [--rounds 2]   (after `make run`)

For each variant with a trained model (models/<v>/model.pt), the embed stage's own subsample of the
validation split and both of its layers' features (extracted as embed@<v> extracts them). For each
layer, in every round and in turn: the map as the stage makes it (`tsne_2d`, neighbours "auto") and
with Annoy's approximate neighbours instead ("annoy"), each timed and its quality measured
(`quality`: 5-NN accuracy on the map, trustworthiness) against the same features; then the map's
floor, the gradient arithmetic no schedule of this kind can skip: openTSNE's gradient for the
fewest iterations the stage's stopping rule allows (250 exaggerated + two blocks of 50 plain ones:
it compares two KL values), on the same affinities and threads, timed alone. Prints a table, writes
benchmarks/results-<date>-tsne.json and .md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from pipelines import config, hardware, inference, models
from pipelines.embed import tsne
from pipelines.runtime import load_prepared, on_device

OUT = Path(__file__).resolve().parent
KEEP = ("knn_acc_tsne", "trustworthiness")


def features(params: config.Params, name: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{role: features} of embed@name's subsample, and its labels."""
    v = params.variant(name)
    prep = load_prepared(Path("data/prepared") / v.dataset)
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.permutation(len(prep.val["y"]))[: v.tsne_points])
    model, cfg = models.load_checkpoint(Path("models") / name / "model.pt")
    model = model.to(memory_format=torch.channels_last)
    data = on_device({"x": prep.val["x"][idx], "y": prep.val["y"][idx]}, cfg, torch.device("cpu"))
    mods = {role: models.resolve_layer(model, getattr(v.layers, role))[1] for role in ("intermediate", "final")}
    precision = "bf16" if hardware.native_bf16() else "fp32"
    return inference.extract(model, mods, data, v.eval_batch_size, torch.device("cpu"), precision), prep.val["y"][idx]


def floor_seconds(x: np.ndarray, seed: int, perplexity: float) -> float:
    """The gradient time of the shortest schedule the stage can stop after, on exact neighbours."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    perplexity = min(perplexity, max(2.0, (len(x) - 1) / 3))
    x = x.astype(np.float32)
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=1, random_state=seed,
                                     **tsne.neighbour_search(len(x), "exact"))
    jobs = torch.get_num_threads() if len(x) >= tsne.TSNE_THREADS_FROM else 1
    emb = TSNEEmbedding(initialization.pca(x, random_state=seed), aff, n_jobs=jobs, random_state=seed)
    t0 = time.perf_counter()
    emb = emb.optimize(tsne.TSNE_EXAGGERATION_ITER, exaggeration=12, momentum=0.8)
    emb.optimize(2 * tsne.TSNE_CHECK_EVERY, momentum=0.8)
    return time.perf_counter() - t0


def one_map(f: np.ndarray, y: np.ndarray, seed: int, perplexity: float, neighbours: str) -> dict:
    info: dict = {}
    t0 = time.perf_counter()
    xy, _ = tsne.tsne_2d(f, seed, perplexity, n_jobs=torch.get_num_threads(), info=info, neighbours=neighbours)
    secs = time.perf_counter() - t0
    q = tsne.quality(f, xy, y, seed)
    return {"seconds": secs, "iterations": info.get("iterations"), **{k: q.get(k) for k in KEEP}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tsne", description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="", help="comma-separated; default every variant with a trained model "
                                                  "and at least 1,000 t-SNE points")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    params = config.load()
    names = [n for n in args.variants.split(",") if n] or [
        n for n in params.variants if (Path("models") / n / "model.pt").is_file()
        and params.variant(n).tsne_points >= 1000]
    rows = []
    for name in names:
        v = params.variant(name)
        feats, y = features(params, name)
        for role, f in feats.items():
            runs: dict[str, list[dict]] = {"auto": [], "annoy": []}
            floors = []
            for _ in range(args.rounds):
                for m in ("auto", "annoy"):
                    runs[m].append(one_map(f, y, params.seed, v.tsne_perplexity, m))
                floors.append(floor_seconds(f, params.seed, v.tsne_perplexity))
            row = {"variant": name, "layer": role, "points": int(len(f)), "dim": int(f.shape[1]),
                   "floor_seconds": statistics.median(floors)}
            for m, rs in runs.items():
                row[m] = {"seconds": statistics.median(r["seconds"] for r in rs), **{k: rs[0][k] for k in
                                                                                      ("iterations", *KEEP)}}
            row["auto_over_floor"] = row["auto"]["seconds"] / row["floor_seconds"]
            rows.append(row)
            print(f"{name} {role} ({len(f)} x {f.shape[1]}): stage {row['auto']['seconds']:.1f} s "
                  f"(5-NN {row['auto']['knn_acc_tsne']:.2f} %, trust {row['auto']['trustworthiness']:.4f}), "
                  f"with Annoy {row['annoy']['seconds']:.1f} s (5-NN {row['annoy']['knn_acc_tsne']:.2f} %, "
                  f"trust {row['annoy']['trustworthiness']:.4f}), floor {row['floor_seconds']:.1f} s: "
                  f"{row['auto_over_floor']:.2f}x", flush=True)
    cpu = hardware.cpu()
    result = {"date": date.today().isoformat(), "cpu": cpu.model,
              "flags": sorted(f for f in cpu.flags if f.startswith(("avx", "amx", "fma"))),
              "load_at_start": load_at_start, "load_at_end": [round(x, 2) for x in os.getloadavg()],
              "threads": torch.get_num_threads(), "rounds": args.rounds, "maps": rows}
    stem = OUT / f"results-{result['date']}-tsne"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [f"# t-SNE maps against their floor ({result['date']}, {result['cpu']}, flags {', '.join(result['flags'])}, "
             f"{result['threads']} threads, load average {result['load_at_start'][0]} at the start and "
             f"{result['load_at_end'][0]} at the end, median of {args.rounds} rounds)", "",
             "| variant | layer | points x dim | stage s | 5-NN % | trust. | Annoy s | 5-NN % | trust. | floor s | stage / floor |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        a, b = r["auto"], r["annoy"]
        lines.append(f"| `{r['variant']}` | {r['layer']} | {r['points']:,} x {r['dim']} | {a['seconds']:.1f} | "
                     f"{a['knn_acc_tsne']:.2f} | {a['trustworthiness']:.4f} | {b['seconds']:.1f} | {b['knn_acc_tsne']:.2f} | "
                     f"{b['trustworthiness']:.4f} | {r['floor_seconds']:.1f} | {r['auto_over_floor']:.2f}x |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
