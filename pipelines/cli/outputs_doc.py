"""docs/outputs.md, generated from the output contract's models (pipelines/outputs.py).

    python -m pipelines.cli.outputs_doc > docs/outputs.md     (make outputs-doc)

tests/test_outputs.py checks that the committed file is this output.
"""
from __future__ import annotations

import sys
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from pipelines.outputs import FILES, Row

STAGES = """\
| stage | writes |
|---|---|
| `download@<dataset>` | `data/raw/<dataset>/`: the raw files as published (none for your own folder: it is read where it is), `weights/` (transfer only: the backbone's ImageNet weights file), `SOURCE.json` |
| `preprocess@<dataset>` | `data/prepared/<dataset>/`: `train.npz`, `val.npz`, `test.npz` (with a `test_limit`), `meta.json`, `sizes.csv`, `backbone.pt` (transfer only) |
| `train@<variant>` | `models/<variant>/` (`model.pt`, `run.json`, `state.pt` where `save_state: true`), `results/<variant>/train/` (`history.csv`, `params.csv`, `curves.png`, `test_predictions.csv` with a test split), `metrics/<variant>/train.json` |
| `replicate@<variant>-<seed>` | as `train`, under `models/replicates/<variant>-<seed>/`, `results/replicates/<variant>-<seed>/`, `metrics/replicates/<variant>-<seed>.json` (params `replicates`: Part 1.3 noise) |
| `evaluate@<variant>` | `results/<variant>/evaluate/` (`per_class.csv`, `confusion.csv`, `confusion_matrix.csv`, `confusion.png`, `confusions.png`, `test_predictions.csv` with a test split), `metrics/<variant>/evaluate.json` |
| `embed@<variant>` | `results/<variant>/embed/` (`tsne.csv`, `tsne.png`), `metrics/<variant>/embed.json` |
| `report` | `reports/` (`report.md`, `report.html`, `figures/`); on its MLflow run, the table artifact `tables/transfer_comparison.json` (the report's paired verdicts) |
"""

# Files without a model here: what they hold, in words (the report does not read them).
OTHER_FILES = """\
- `data/raw/<dataset>/SOURCE.json`: `{"dataset", "source", "protocol", "files": {"<name>": {"sha256", "origin":
  "system:/usr/share/...|mirror:/path|url:https://...|present", "verified": "md5 from torchvision|sha256 recorded|sha256
  trust-on-first-use"}}}`; with your own folder (params `datasets.<name>.folder`) the source is `image_folder` and the
  record also holds `"folder": {"path", "layout": "classes|splits", "classes", "files": [{"path", "sha256", "bytes"}, ...],
  "digest": sha256 over the sorted "path\\0sha256\\n" lines, "ignored": {"hidden", "not_image"}, "skipped": [{"path",
  "reason"}], "empty_folders": [relative folder, ...], "skipped_classes": [class, ...] (both empty unless
  `skip_empty_classes` left them out), "splits": {"train|val|test": [[relative path, class index], ...]}}`.
- `data/prepared/<dataset>/{train,val,test}.npz`: `x` uint8 `(N, H, W, C)`, `y` int64 `(N,)`; read with
  `allow_pickle=False`. `test.npz` is held out from the official test/validation pool (or your folder's `test/`),
  disjoint from `val`, never used to choose an epoch.
- `data/prepared/<dataset>/backbone.pt` (transfer only): a plain state dict (tensors only, loads with
  `weights_only=True`) that loads with `strict=True` into `torchvision.models.resnet18()` or
  `timm.create_model("efficientnet_lite0")` (1000 classes).
- `models/<v>/model.pt`: `{"state_dict", "config"}` of the best epoch.
- `models/<v>/state.pt` (variants with `save_state: true`): `{"fingerprint": {variant params, seed, data digests,
  world}, "state": {...}}`, the training state after the last epoch, from which a variant whose `start` names it continues.
- `*.png`: the figures the report inlines.
"""



def _type_name(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Union:
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return {int: "int", float: "number", str: "string", Any: "any"}.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _table(model: type[BaseModel]) -> list[str]:
    csv = issubclass(model, Row)
    lines = [f"| {'column' if csv else 'key'} | type | | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        need = "required" if field.is_required() else "optional"
        lines.append(f"| `{field.alias or name}` | {_type_name(field.annotation)} | {need} | {field.description or ''} |")
    return lines


def markdown() -> str:
    """docs/outputs.md, generated from the models above."""
    out = ["# What each stage writes (the on-disk contract between stages)", "",
           "Generated from `pipelines/outputs.py` by `python -m pipelines.cli.outputs_doc > docs/outputs.md`: edit the",
           "models there, not this file. Every path below is named in `dvc.yaml` and passed to the stage on its",
           "command line; the file names inside a stage's output folder are fixed here. Accuracies are percentages.",
           "Every file is written atomically (`pipelines/io.py`). The report reads the files with a model below and",
           "stops with one line naming the file and the field when one breaks it; an optional field may be absent.",
           "", STAGES, "## Files the report reads", ""]
    nested: list[type[BaseModel]] = []
    for path, model in FILES:
        out += [f"### `{path}`", "", " ".join((model.__doc__ or "").split()), "", *_table(model), ""]
        for field in model.model_fields.values():
            for arg in (field.annotation, *get_args(field.annotation), *[a for t in get_args(field.annotation)
                                                                         for a in get_args(t)]):
                if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in nested:
                    nested.append(arg)
    out += ["## Objects inside them", ""]
    for model in nested:
        doc = " ".join((model.__doc__ or "").split())
        out += [f"### {model.__name__}", "", *([doc, ""] if doc and not doc.startswith("One file") else []),
                *_table(model), ""]
    out += ["## Other files", "", OTHER_FILES]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(markdown())
