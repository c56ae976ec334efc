"""Reading the stage outputs for the report: each file checked against docs/outputs.md.

A file that exists but breaks the contract is a ReportError (one line naming the file and the key);
a file that does not exist is None, which the report shows as "not run" (a user may run a subset).
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pipelines import io
from pipelines.config import Params
from pipelines.io import read_csv, read_json

FIGURES = {  # figure kind -> where the stage writes it, under results/<variant>/
    "curves": "train/curves.png",
    "confusion": "eval/confusion.png",
    "confusions": "eval/confusions.png",
    "tsne": "embed/tsne.png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


from pipelines.errors import ReportError  # noqa: E402


# ---------------------------------------------------------------- reading the stage outputs

def is_kind(value: object, kind: str) -> bool:
    if kind.endswith("?") and value is None:
        return True
    kind = kind.rstrip("?")
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "list": list, "dict": dict}[kind])


def check(obj: dict, schema: dict[str, str], where: str, optional: Optional[dict[str, str]] = None) -> dict:
    """`schema` keys must be present; `optional` keys are checked only where present (older outputs lack them)."""
    for key, kind in {**schema, **{k: v for k, v in (optional or {}).items() if k in obj}}.items():
        if key not in obj:
            raise ReportError(f"{where}: missing key {key!r} (see docs/outputs.md)")
        if not is_kind(obj[key], kind):
            raise ReportError(f"{where}: {key} = {obj[key]!r} is not of type {kind.rstrip('?')}")
    return obj


def read_checked_json(path: Path, schema: dict[str, str], optional: Optional[dict[str, str]] = None) -> Optional[dict]:
    """The JSON object at `path` checked against `schema`, or None if the file does not exist."""
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return check(obj, schema, str(path), optional)


def read_checked_csv(path: Path, columns: dict[str, str]) -> Optional[list[dict]]:
    """Rows of the CSV at `path` with `columns` converted (int, num, num? = may be empty, str)."""
    if not path.is_file():
        return None
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: not a readable CSV ({err})") from None
    header = set(rows[0]) if rows else set()
    if rows and not set(columns) <= header:
        raise ReportError(f"{path}: columns {sorted(set(columns) - header)} missing (see docs/outputs.md)")
    out = []
    for line, row in enumerate(rows, start=2):
        conv = {}
        for col, kind in columns.items():
            raw = (row.get(col) or "").strip()
            try:
                if kind == "str":
                    conv[col] = raw
                elif kind == "int":
                    conv[col] = int(raw)
                elif kind == "num?" and raw == "":
                    conv[col] = math.nan
                else:
                    conv[col] = float(raw)
            except ValueError:
                raise ReportError(f"{path} line {line}: {col} = {raw!r} is not a number") from None
        out.append(conv)
    if not out:
        raise ReportError(f"{path}: no rows")
    return out


META = {"source": "str", "source_title": "str", "protocol": "str", "classes": "list"}
SIZES = {"split": "str", "height": "int", "width": "int", "channels": "int", "samples": "int"}
TRAIN = {"params_total": "int", "best_val_acc": "num", "best_epoch": "int"}
TRAIN_OPTIONAL = {"seed": "int", "flops_per_image": "int", "val_n": "int", "test_acc": "num", "test_n": "int",
                  "seconds": "num", "train_seconds": "num", "train_seconds_here": "num", "epochs_reused": "int",
                  "train_img_per_s": "num", "epochs": "int", "diagnosis": "dict", "mlflow_run_id": "str",
                  "model_log_seconds": "num"}
HISTORY = {"epoch": "int", "train_loss": "num?", "train_acc": "num?", "val_loss": "num?", "val_acc": "num?"}
PARAM_ROWS = {"layer": "str", "shape": "str", "params": "int"}
EVAL = {"n": "int", "accuracy": "num", "macro_f1": "num", "top_confusions": "list"}
EVAL_OPTIONAL = {"test_accuracy": "num", "test_n": "int", "seconds": "num", "img_per_s": "num"}
PREDICTIONS = {"index": "int", "label": "int", "pred": "int"}
PREDICTIONS_FILE = "test_predictions.csv"   # written by pipelines/experiment.py (TEST_PREDICTIONS)
PER_CLASS = {"class": "str", "precision": "num", "recall": "num", "f1": "num", "support": "int"}
EMBED = {"points": "int", "layers": "dict"}


@dataclass(frozen=True)
class Data:
    """A prepared dataset's description, or Nones when it was not prepared."""
    meta: Optional[dict]
    sizes: Optional[list[dict]]


@dataclass(frozen=True)
class Results:
    """Everything a variant's stages wrote; a None is a stage that has not run."""
    train: Optional[dict]
    history: Optional[list[dict]]
    layers: Optional[list[dict]]
    eval: Optional[dict]
    per_class: Optional[list[dict]]
    embed: Optional[dict]
    figures: dict[str, Path]   # kind -> existing PNG

    @property
    def ran(self) -> bool:
        return any(x is not None for x in (self.train, self.eval, self.embed))


def load_data(root: Path, name: str) -> Data:
    d = root / "data" / "prepared" / name
    return Data(read_checked_json(d / "meta.json", META), read_checked_csv(d / "sizes.csv", SIZES))


def load_results(root: Path, variant: str) -> Results:
    res, met = root / "results" / variant, root / "metrics" / variant
    evl = read_checked_json(met / "eval.json", EVAL, EVAL_OPTIONAL)
    if evl is not None:
        for i, c in enumerate(evl["top_confusions"]):
            if not isinstance(c, dict):
                raise ReportError(f"{met / 'eval.json'}: top_confusions[{i}] is not an object")
            check(c, {"true": "str", "pred": "str", "count": "int"}, f"{met / 'eval.json'}: top_confusions[{i}]")
    emb = read_checked_json(met / "embed.json", EMBED)
    if emb is not None:
        for layer, info in emb["layers"].items():
            if not isinstance(info, dict):
                raise ReportError(f"{met / 'embed.json'}: layers.{layer} is not an object")
            check(info, {"module": "str", "dim": "int"}, f"{met / 'embed.json'}: layers.{layer}")
    figures = {}
    for kind, rel in FIGURES.items():
        p = res / rel
        if p.is_file():
            with open(p, "rb") as f:
                if f.read(8) != PNG_SIGNATURE:
                    raise ReportError(f"{p}: not a PNG image")
            figures[kind] = p
    return Results(
        train=read_train_json(met / "train.json"),
        history=read_checked_csv(res / "train" / "history.csv", HISTORY),
        layers=read_checked_csv(res / "train" / "params.csv", PARAM_ROWS),
        eval=evl, per_class=read_checked_csv(res / "eval" / "per_class.csv", PER_CLASS), embed=emb, figures=figures,
    )


def read_train_json(path: Path) -> Optional[dict]:
    t = read_checked_json(path, TRAIN, TRAIN_OPTIONAL)
    if t is not None and "diagnosis" in t:
        check(t["diagnosis"], {"verdict": "str"}, f"{path}: diagnosis")
    return t


def load_replicates(root: Path, params: Params, variant: str) -> tuple[list[dict], int]:
    """(train.json of each replicate run present, how many params.yaml asks for)."""
    r = params.replicates
    if r is None or variant not in r.variants:
        return [], 0
    found = []
    for seed in r.seeds:
        path = root / "metrics" / "replicates" / f"{variant}-{seed}.json"
        t = read_train_json(path)
        if t is None:
            continue
        if t.get("seed", seed) != seed or t.get("variant", variant) != variant:
            raise ReportError(f"{path}: holds variant {t.get('variant')!r} seed {t.get('seed')!r}, "
                              f"not {variant!r} seed {seed} as its name says")
        found.append(t)
    return found, len(r.seeds)


def load_test_predictions(root: Path, params: Params, variant: str) -> dict[int, tuple[Path, np.ndarray, np.ndarray]]:
    """{seed: (file, labels, predictions)} of every run of `variant` whose per-image test predictions exist:
    its own run (the evaluate stage's file, else the train stage's) and its replicates."""
    own = root / "results" / variant
    paths = {params.seed: next((p for p in (own / "eval" / PREDICTIONS_FILE, own / "train" / PREDICTIONS_FILE)
                                if p.is_file()), None)}
    r = params.replicates
    if r is not None and variant in r.variants:
        paths.update({s: root / "results" / "replicates" / f"{variant}-{s}" / PREDICTIONS_FILE for s in r.seeds})
    out = {}
    for seed, path in paths.items():
        rows = read_checked_csv(path, PREDICTIONS) if path is not None else None
        if rows is None:
            continue
        index = np.array([row["index"] for row in rows])
        if not np.array_equal(index, np.arange(len(rows))):
            raise ReportError(f"{path}: index column is not 0..{len(rows) - 1} in order")
        out[seed] = (path, np.array([row["label"] for row in rows]), np.array([row["pred"] for row in rows]))
    return out


def git_commit(root: Path) -> Optional[str]:
    return io.git_commit(root, short=True)
