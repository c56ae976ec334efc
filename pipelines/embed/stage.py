"""embed@<variant>: t-SNE maps of an intermediate and the final layer of the trained variant on a
seeded subsample of its validation split, with measured map quality; docs/outputs.md lists the files.

Called by stages/embed.py with the validated params and the exact paths dvc.yaml names; it writes
only those paths, each file atomically.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from pipelines import inference, io, models, plots
from pipelines.clock import StageClock
from pipelines.config import Params
from pipelines.embed.tsne import check_finite, quality, tsne_2d
from pipelines.outputs import EmbedMetrics, TsneRow
from pipelines.runtime import Runtime, StagePaths
from pipelines.tracking import Run


def embed(params: Params, name: str, paths: StagePaths) -> dict:
    clock = StageClock()
    rt = Runtime.open(params, name, paths)
    v, prep = rt.variant, rt.prep
    model, cfg = rt.load_model()
    y_all = prep.val["y"]
    rng = np.random.default_rng(params.seed)
    idx = np.sort(rng.permutation(len(y_all))[: v.tsne_points])
    sub = {"x": prep.val["x"][idx], "y": y_all[idx]}
    data = rt.on_device(sub, cfg)
    modules = {role: models.resolve_layer(model, getattr(v.layers, role)) for role in ("intermediate", "final")}
    t0 = time.perf_counter()
    feats = inference.extract(model, {r: m for r, (_, m) in modules.items()}, data, v.eval_batch_size, rt.device,
                              rt.precision)
    for role, (path, _) in modules.items():
        check_finite(feats[role], f"embed@{name}", role, path)
    result = {"points": int(len(idx)), "layers": {}}
    rows = []
    with Run(params, "embed", name, resume=paths.model / "run.json", system_metrics=False) as run:
        panels = []
        for role, (path, _) in modules.items():
            f = feats[role]
            t_map, info = time.perf_counter(), {}
            # As many threads as torch's: params `threads`, or this process's share of the cores.
            xy, backend = tsne_2d(f, params.seed, v.tsne_perplexity, n_jobs=torch.get_num_threads(), info=info)
            t_map = time.perf_counter() - t_map
            q = quality(f, xy, sub["y"], params.seed)
            result["layers"][role] = {"module": path, "dim": int(f.shape[1]), **q, "tsne_seconds": t_map,
                                      **{f"tsne_{k}": val for k, val in info.items()}}
            result["tsne_backend"] = backend
            rows += [TsneRow(layer=role, x=a, y=b, label=int(c)).cells() for (a, b), c in zip(xy, sub["y"])]
            panels.append((f"{role}: {path} ({f.shape[1]}-d)", xy, sub["y"]))
            run.log_metrics({f"embed_{role}_{k}": val for k, val in q.items() if k != "seconds"})
        result["seconds"] = time.perf_counter() - t0
        result["clock"] = clock.record()
        io.write_csv(paths.out / "tsne.csv", ["layer", "x", "y", "label"], rows)
        plots.save_figure(plots.tsne(panels, prep.meta["classes"], f"{name}: t-SNE of {len(idx)} validation images"),
                          paths.out / "tsne.png")
        result = EmbedMetrics.model_validate(result).dump()
        io.write_json(paths.metrics, result)
        run.log_artifact(paths.out / "tsne.png", "embed")
    print(f"embed {name}: {len(idx)} points, " + "; ".join(
        f"{r} {d['dim']}-d silhouette {d.get('silhouette_features', float('nan')):.3f}"
        for r, d in result["layers"].items()) + f" ({result['seconds']:.0f} s, {result['tsne_backend']})", flush=True)
    return result
