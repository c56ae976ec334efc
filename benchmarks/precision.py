"""fp32 against bf16 autocast over seeds: what bf16 costs in accuracy, with the lab's own recipes.

    python -m benchmarks.precision [--variants mnist_cnn cifar_alexnet] [--seeds 1 2 3]
                                   [--data data/prepared] [--json OUT]

Each variant (params.yaml: model, recipe, epochs) is trained from each seed twice, once in fp32 and
once in bf16 autocast, with the pipeline's own loop on the prepared arrays (`dvc repro
preprocess@<dataset>` makes them). Per run: best validation accuracy, its epoch, training seconds.

The test, per variant: Welch's two-sided t-test of the per-seed best accuracies. bf16 "costs no
accuracy" when the difference of the means is within the noise: p > 0.05, the seeds' spread
explains it. With 3 seeds a difference must be large to show, so the table also gives the
difference and the seeds' standard deviations. On a CPU without AVX-512 BF16 or AMX bf16 is
emulated (and `precision: auto` picks fp32 there): this then measures accuracy only, slowly.

Writes benchmarks/results-<date>-precision.json and a Markdown table beside it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from pipelines import compute, config, hardware, io, models, stats
from pipelines.errors import LabError, one_line
from pipelines.train import engine
from pipelines.runtime import Prepared, load_prepared, model_config, on_device

PRECISIONS = ("fp32", "bf16")


def train_once(params: config.Params, name: str, prep: Prepared, seed: int, precision: str,
               epochs: Optional[int] = None) -> dict:
    """One training run of variant `name` as its train stage does it, in `precision`, from `seed`."""
    v = params.variant(name)
    compute.seed_everything(seed, params.threads)
    device = torch.device("cpu")
    cfg = model_config(params, name, v, prep.meta)
    model = models.build(cfg).to(device, memory_format=torch.channels_last)
    r = engine.recipe_for(v, **({"epochs": epochs} if epochs else {}))
    res = engine.fit(model, on_device(prep.train, cfg, device), on_device(prep.val, cfg, device), r,
                     device, precision, seed, desc=f"{name} {precision} seed {seed}")
    return {"seed": seed, "precision": precision, "best_val_acc": res.best_val_acc, "best_epoch": res.best_epoch,
            "epochs": r.epochs, "train_seconds": res.train_seconds,
            "train_img_per_s": res.train_images / res.train_seconds if res.train_seconds else None}


def verdict(fp32: Sequence[float], bf16: Sequence[float]) -> dict:
    """Welch's test of bf16's best accuracies against fp32's, and what it says."""
    (m32, s32), (m16, s16) = stats.mean_std(fp32), stats.mean_std(bf16)
    p = stats.welch_p(fp32, bf16) if len(fp32) > 1 and len(bf16) > 1 else None
    if p is None:
        says = "one seed per precision: no noise to compare with"
    elif p > stats.ALPHA:
        says = f"within the seeds' noise (Welch p = {p:.2f} > {stats.ALPHA})"
    else:
        says = f"bf16 {'lower' if m16 < m32 else 'higher'} beyond the noise (Welch p = {p:.3f})"
    return {"fp32_mean": m32, "fp32_std": s32, "bf16_mean": m16, "bf16_std": s16, "bf16_minus_fp32_pp": m16 - m32,
            "welch_p": p, "verdict": says}


def run(params: config.Params, data: dict[str, Prepared], variants: Sequence[str], seeds: Sequence[int],
        epochs: Optional[int] = None, log: Callable[[str], None] = print) -> dict:
    cpu = hardware.cpu()
    out = {"date": dt.date.today().isoformat(), "cpu": cpu.model, "native_bf16": cpu.native_bf16,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "seeds": list(seeds), "variants": {}}
    for name in variants:
        runs = []
        for seed in seeds:
            for precision in PRECISIONS:
                runs.append(train_once(params, name, data[params.variant(name).dataset], seed, precision, epochs))
                log(f"{name} seed {seed} {precision}: best {runs[-1]['best_val_acc']:.2f} % at epoch "
                    f"{runs[-1]['best_epoch']}, {runs[-1]['train_seconds']:.0f} s")
        acc = {p: [r["best_val_acc"] for r in runs if r["precision"] == p] for p in PRECISIONS}
        secs = {p: sum(r["train_seconds"] for r in runs if r["precision"] == p) for p in PRECISIONS}
        out["variants"][name] = {"runs": runs, **verdict(acc["fp32"], acc["bf16"]),
                                 "bf16_speedup": secs["fp32"] / secs["bf16"] if secs["bf16"] else None}
    return out


def render_markdown(res: dict) -> str:
    lines = [f"# fp32 vs bf16 autocast over seeds ({res['date']})", "",
             f"CPU: {res['cpu']} (native bf16: {'yes' if res['native_bf16'] else 'no, emulated'}), "
             f"torch {res['torch']}, {res['threads']} threads; seeds {', '.join(map(str, res['seeds']))}.", "",
             "| variant | epochs | fp32 best val. acc. (mean ± std) | bf16 (mean ± std) | bf16 − fp32 | "
             "Welch p | bf16 training speed-up | verdict |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, v in res["variants"].items():
        sd = lambda s: "—" if s is None else f"{s:.2f}"  # noqa: E731
        p = "—" if v["welch_p"] is None else f"{v['welch_p']:.2f}"
        lines.append(f"| `{name}` | {v['runs'][0]['epochs']} | {v['fp32_mean']:.2f} ± {sd(v['fp32_std'])} % | "
                     f"{v['bf16_mean']:.2f} ± {sd(v['bf16_std'])} % | {v['bf16_minus_fp32_pp']:+.2f} pp | {p} | "
                     f"{v['bf16_speedup']:.2f}x | {v['verdict']} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["mnist_cnn", "cifar_alexnet"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=0, help="override the variants' epochs (0: params.yaml's)")
    ap.add_argument("--data", type=Path, default=Path("data/prepared"), help="folder of the prepared datasets")
    ap.add_argument("--params", type=Path, default=config.PARAMS_FILE)
    ap.add_argument("--json", type=Path, default=None,
                    help="output file (default benchmarks/results-<date>-precision.json); a .md goes beside it")
    a = ap.parse_args(argv)
    try:
        params = config.load(a.params)
        data = {params.variant(n).dataset: load_prepared(a.data / params.variant(n).dataset) for n in a.variants}
    except LabError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    res = run(params, data, a.variants, a.seeds, a.epochs or None, log=lambda s: print(s, file=sys.stderr, flush=True))
    out = a.json or Path(f"benchmarks/results-{res['date']}-precision.json")
    io.write_json(out, res)
    io.write_text(out.with_suffix(".md"), render_markdown(res))
    sys.stdout.write(render_markdown(res))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
