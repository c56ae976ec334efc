"""Reading the stage outputs for the report: each file validated by its model in pipelines/outputs.py.

A file that exists but breaks the contract is a ReportError (one line naming the file and the key);
a file that does not exist is None, which the report shows as "not run" (a user may run a subset).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import ValidationError

from pipelines.config import Params
from pipelines.io import read_csv, read_json
from pipelines.outputs import (TEST_PREDICTIONS, EmbedMetrics, EvaluateMetrics, HistoryRow, Meta, Output, ParamsRow,
                               PerClassRow, PredictionRow, Row, SizesRow, TrainMetrics)

FIGURES = {  # figure kind -> where the stage writes it, under results/<variant>/
    "curves": "train/curves.png",
    "confusion": "evaluate/confusion.png",
    "confusions": "evaluate/confusions.png",
    "tsne": "embed/tsne.png",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


from pipelines.errors import ReportError  # noqa: E402


# ---------------------------------------------------------------- reading the stage outputs

def is_kind(value: object, kind: str) -> bool:
    """Whether a value the report prints is an `int`, a `num` (int or float, not bool), a `str`, a
    `list` or a `dict`; `kind?` also takes None."""
    if kind.endswith("?") and value is None:
        return True
    kind = kind.rstrip("?")
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "num":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, {"str": str, "list": list, "dict": dict}[kind])


def _field_name(loc: tuple) -> str:
    """('top_confusions', 0, 'count') -> 'top_confusions[0].count'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def contract_error(where: str, err: ValidationError) -> ReportError:
    """The first thing wrong with a file, in one line naming the file and the field."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    if e["type"] == "missing":
        inside = f": {_field_name(loc[:-1])}" if len(loc) > 1 else ""
        return ReportError(f"{where}{inside}: missing key {loc[-1]!r} (see docs/outputs.md)")
    if e["type"] == "extra_forbidden":
        inside = f": {_field_name(loc[:-1])}" if len(loc) > 1 else ""
        return ReportError(f"{where}{inside}: unknown key {loc[-1]!r} (see docs/outputs.md)")
    return ReportError(f"{where}: {_field_name(loc)} = {e.get('input')!r} ({e['msg'].lower()}; see docs/outputs.md)")


def read_checked_json(path: Path, model: type[Output]) -> Optional[dict]:
    """The JSON object at `path`, validated strictly by `model`, or None if the file does not exist.
    The object is returned as read (the report prints its numbers as the stage wrote them)."""
    if not path.is_file():
        return None
    try:
        obj = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    try:
        model.model_validate(obj, strict=True)
    except ValidationError as err:
        raise contract_error(str(path), err) from None
    return obj


def read_checked_csv(path: Path, model: type[Row]) -> Optional[list[dict]]:
    """Rows of the CSV at `path`, each validated by `model` from its text (an empty cell of a number
    that may be empty is NaN): the model's required columns, converted."""
    if not path.is_file():
        return None
    try:
        rows = read_csv(path)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ReportError(f"{path}: not a readable CSV ({err})") from None
    header = set(rows[0]) if rows else set()
    required = model.required_columns()
    if rows and not set(required) <= header:
        raise ReportError(f"{path}: columns {sorted(set(required) - header)} missing (see docs/outputs.md)")
    out = []
    for line, row in enumerate(rows, start=2):
        cells = {col: (raw or "").strip() for col, raw in row.items() if col is not None}
        try:
            parsed = model.model_validate(cells).model_dump(by_alias=True)
        except ValidationError as err:
            e = err.errors()[0]
            col = _field_name(tuple(e["loc"]))
            if e["type"] in ("int_parsing", "float_parsing", "int_from_float"):
                raise ReportError(f"{path} line {line}: {col} = {cells.get(col)!r} is not a number") from None
            raise contract_error(f"{path} line {line}", err) from None
        out.append({col: parsed[col] for col in required})
    if not out:
        raise ReportError(f"{path}: no rows")
    return out


PREDICTIONS_FILE = TEST_PREDICTIONS   # written by pipelines.runtime.Runtime.write_test_predictions


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
    return Data(read_checked_json(d / "meta.json", Meta), read_checked_csv(d / "sizes.csv", SizesRow))


def load_results(root: Path, variant: str) -> Results:
    res, met = root / "results" / variant, root / "metrics" / variant
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
        history=read_checked_csv(res / "train" / "history.csv", HistoryRow),
        layers=read_checked_csv(res / "train" / "params.csv", ParamsRow),
        eval=read_checked_json(met / "evaluate.json", EvaluateMetrics),
        per_class=read_checked_csv(res / "evaluate" / "per_class.csv", PerClassRow),
        embed=read_checked_json(met / "embed.json", EmbedMetrics), figures=figures,
    )


def read_train_json(path: Path) -> Optional[dict]:
    return read_checked_json(path, TrainMetrics)


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
    paths = {params.seed: next((p for p in (own / "evaluate" / PREDICTIONS_FILE, own / "train" / PREDICTIONS_FILE)
                                if p.is_file()), None)}
    r = params.replicates
    if r is not None and variant in r.variants:
        paths.update({s: root / "results" / "replicates" / f"{variant}-{s}" / PREDICTIONS_FILE for s in r.seeds})
    out = {}
    for seed, path in paths.items():
        rows = read_checked_csv(path, PredictionRow) if path is not None else None
        if rows is None:
            continue
        index = np.array([row["index"] for row in rows])
        if not np.array_equal(index, np.arange(len(rows))):
            raise ReportError(f"{path}: index column is not 0..{len(rows) - 1} in order")
        out[seed] = (path, np.array([row["label"] for row in rows]), np.array([row["pred"] for row in rows]))
    return out
